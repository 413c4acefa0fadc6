"""The rules of :mod:`~medi2i.evaluation.diagnose.rules` in words, for the cases whose sentence
is assembled from parts: divergence, misaligned pairs with R off, unstable training, an
ineffective D and D's gradient clipping."""

from __future__ import annotations

from typing import Any

from medi2i.evaluation.diagnose.report import Decision, _fmt
from medi2i.evaluation.diagnose.thresholds import ACC_BAND


def _diverged(d: Decision, ev: dict[str, Any]) -> str:
    parts = []
    if ev["skipped_steps"]:
        steps = d.detail["steps"]
        of = f" of {int(steps)}" if steps else ""
        parts.append(
            f"{int(ev['skipped_steps'])}{of} training steps had a non-finite loss or gradient"
        )
    if ev["non_finite_val_epochs"]:
        epochs = ", ".join(map(str, ev["non_finite_val_epochs"]))
        parts.append(f"validation was not finite at epoch(s) {epochs}")
    return (
        "Training diverged: "
        + " and ".join(parts)
        + ". The other findings describe a broken run until this is fixed: lower the learning "
        "rates (optim.G.lr, optim.D.lr), keep gradient clipping on, train with amp: off, and "
        "check the data for NaN or infinite values."
    )


def _misaligned(d: Decision, ev: dict[str, Any]) -> str:
    return (
        f"Pairs are misaligned ({ev['reason']}) and R is off: for each input G is pulled "
        "towards targets that are shifted differently, and the output that minimises L1 is their "
        "pixelwise median - a blurred image - whatever the loss weights. Turn R on "
        f"({ev['commands'][0]}) or train on aligned targets (data.train_target=aligned, "
        "when the dataset has them) before judging D or the loss weights; no loss-weight change "
        "is recommended until then."
    )


def _unstable(d: Decision, ev: dict[str, Any]) -> str:
    arms = d.detail["arms"]
    if d.case == "not_logged":
        return f"Not evaluated: {arms[0]['source']}."
    if d.case == "stable":
        unknown = [a["name"] for a in arms if "jumps" not in a]
        return "No loss jump or validation collapse found" + (
            f" (not logged for {', '.join(unknown)})." if unknown else "."
        )
    texts = []
    for arm in (a for a in arms if a.get("jumps")):
        messages = "; ".join(str(j.get("message", j)) for j in arm["jumps"])
        text = f"The {arm['role']} {arm['name']} trained unstably ({arm['source']}): {messages}."
        best, first = arm["best_epoch"], arm["first_jump_epoch"]
        if arm["best_before_jump"]:
            text += (
                f" Its best checkpoint (epoch {best}) predates the jump at epoch {first}: every "
                "later epoch was lost, and its results are those of a run that then broke."
            )
        elif best is not None:
            text += (
                f" Its best checkpoint (epoch {best}) comes after the jump at epoch {first}: it "
                "recovered, but the jump cost epochs."
            )
        if arm["has_D"] and not arm["val_dropped"]:
            text += (
                " Only the training loss jumped, which in a run with D can also mean that D "
                "got stronger (G's adversarial loss rises); validation did not collapse."
            )
        texts.append(text)
    texts.append(
        "An ablation with an unstable arm is not trustworthy: rerun that arm (another seed, "
        "a lower learning rate or gan_weight, R1) before comparing."
    )
    return " ".join(texts)


def _d_ineffective(d: Decision, ev: dict[str, Any]) -> str:
    gap, acc = _fmt(d.detail["gap"]), d.detail["acc"]
    threshold, mode = ev["gap_threshold"], ev["gan_mode"]
    if ev["ablation"] is not None:
        ablation_text = f"The ablation (see ablation): {ev['ablation']}."
    else:
        ablation_text = (
            "No ablation without D: the verdict about D is provisional (see ablation for the "
            "command)."
        )
    acc_text = f", D_acc {acc:.3f}" if acc is not None else ""
    if d.case == "at_chance":
        return (
            f"D_real ~ D_fake over the last epochs (|D_real - D_fake| = {gap} < {threshold} "
            f"for {mode}{acc_text}, within 0.5 +/- {ACC_BAND}): D does not tell real from fake, "
            "so its GAN term passes G little useful gradient. This alone does not prove D "
            "useless: feature matching through a weak D can still act like a random-feature "
            "perceptual loss. Ablations weigh more. " + ablation_text
        )
    why = f">= {threshold}" if d.case == "separates" else f"< {threshold}, but D_acc is off chance"
    return (
        f"D separates real from fake (|D_real - D_fake| = {gap} {why}{acc_text}). " + ablation_text
    )


_CLIP_BASES = {
    "step_norm_p90": "the 90th percentile of D's recent step gradient norms",
    "mean_norm_x1.5": "1.5x D's recent mean gradient norm",
}


def _d_clipping(d: Decision, ev: dict[str, Any]) -> str:
    rate, cut, norm = d.detail["rate"], d.detail["cut_when_fired"], d.detail["norm"]
    cut_text = (
        f", removing {cut:.0%} of the gradient's norm when it fires" if cut is not None else ""
    )
    norm_text = (
        f" (mean norm {norm:.3g} vs limit {_fmt(ev['grad_clip_D'])})" if norm is not None else ""
    )
    r1, r1_next = ev["r1_weight"], d.detail["suggested_r1_weight"]
    r1_text = (
        f"Raise the R1 penalty (loss.r1_weight {r1:g} -> {r1_next:g})"
        if r1_next is not None
        else "Add an R1 penalty (loss.r1_weight, e.g. 1.0, applied lazily every "
        "loss.r1_interval steps)"
    )
    suggested = ev["suggested_grad_clip_D"]
    clip_text = (
        f"raise optim.D.grad_clip to ~{suggested:g} "
        f"({_CLIP_BASES[d.detail['suggestion_basis']]}, so it fires on ~10% of steps)"
        if suggested is not None
        else "raise optim.D.grad_clip"
    )
    text = (
        f"D's gradient clipping fires on {rate:.0%} of steps{cut_text}{norm_text}: D's updates "
        f"are rescaled almost always, which slows and distorts its training. {r1_text} to keep "
        f"D's gradients tame, or {clip_text}."
    )
    if d.detail["clip_rate_G_too"]:
        text += f" G's clipping fires on {d.detail['rate_G']:.0%} of steps too."
    return text
