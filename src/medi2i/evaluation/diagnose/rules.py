"""The rules that read one run's setup and logs, each a pure function returning a
:class:`~medi2i.evaluation.diagnose.report.Finding`: divergence, misaligned pairs with R off, a
conditional D on misaligned pairs, unstable training, an ineffective D and D's gradient
clipping.

The other rules live with what they need: ``ablation`` in
:mod:`~medi2i.evaluation.diagnose.ablation`, ``blurry_loss_weights`` in
:mod:`~medi2i.evaluation.diagnose.weights`, ``still_improving`` in
:mod:`~medi2i.evaluation.diagnose.progress`.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

import numpy as np

from medi2i.evaluation.diagnose.evidence import _instabilities, _last_rows, _mean_last, _round
from medi2i.evaluation.diagnose.report import Finding, _fmt
from medi2i.evaluation.diagnose.thresholds import (
    ACC_BAND,
    CLIP_RATE_LIMIT,
    D_GAP_THRESHOLDS,
    RULE_CONDITIONAL_D,
    RULE_D_CLIPPING,
    RULE_D_INEFFECTIVE,
    RULE_DIVERGED,
    RULE_MISALIGNED,
    RULE_UNSTABLE,
)
from medi2i.evaluation.runs import RunRecord, finite_or_none

# --------------------------------------------------------------------------------------------
# divergence: read first, because every other rule describes a working run
# --------------------------------------------------------------------------------------------


def _rule_diverged(run: RunRecord) -> Finding:
    skipped = finite_or_none(run.summary.get("skipped_steps"))
    if skipped is None and run.epochs:
        skipped = finite_or_none(run.epochs[-1].get("skipped_steps"))
    bad_val = [
        int(row.get("epoch", i + 1))
        for i, row in enumerate(run.epochs)
        if any(
            key.startswith("val_") and isinstance(value, float) and not np.isfinite(value)
            for key, value in row.items()
        )
    ]
    evidence: dict[str, Any] = {"skipped_steps": skipped, "non_finite_val_epochs": bad_val}
    if skipped is None and not run.epochs:
        return Finding(
            RULE_DIVERGED,
            False,
            "Not evaluated: neither summary.json nor the epoch log is there.",
            evidence,
            applicable=False,
        )
    if not skipped and not bad_val:
        return Finding(RULE_DIVERGED, False, "No non-finite step or validation value.", evidence)
    parts = []
    if skipped:
        steps = finite_or_none(run.summary.get("steps"))
        of = f" of {int(steps)}" if steps else ""
        parts.append(f"{int(skipped)}{of} training steps had a non-finite loss or gradient")
    if bad_val:
        parts.append(f"validation was not finite at epoch(s) {', '.join(map(str, bad_val))}")
    verdict = (
        "Training diverged: "
        + " and ".join(parts)
        + ". The other findings describe a broken run until this is fixed: lower the learning "
        "rates (optim.G.lr, optim.D.lr), keep gradient clipping on, train with amp: off, and "
        "check the data for NaN or infinite values."
    )
    return Finding(RULE_DIVERGED, True, verdict, evidence)


# --------------------------------------------------------------------------------------------
# rules about the setup
# --------------------------------------------------------------------------------------------


def _rule_misaligned(run: RunRecord) -> Finding:
    pairs = run.pairs
    evidence = {**pairs, "R": run.has_R}
    if pairs["misaligned"] is None:
        return Finding(
            RULE_MISALIGNED,
            False,
            f"Not evaluated: whether the pairs are misaligned is {pairs['reason']}.",
            evidence,
            applicable=False,
        )
    if not pairs["misaligned"]:
        return Finding(RULE_MISALIGNED, False, f"Pairs are aligned ({pairs['reason']}).", evidence)
    if run.has_R:
        return Finding(
            RULE_MISALIGNED,
            False,
            f"Pairs are misaligned ({pairs['reason']}) and R is on: G's output is warped onto "
            "each target before the reconstruction loss.",
            evidence,
        )
    if not pairs["loss_misaligned"]:
        return Finding(
            RULE_MISALIGNED,
            False,
            f"Pairs are misaligned ({pairs['reason']}) and R is off, but G trains against the "
            "aligned targets (data.train_target=aligned), so the misalignment never reaches "
            "its loss.",
            evidence,
        )
    command = (
        f"medi2i train --config {shlex.quote(str(run.config_path))} model.R.enabled=true "
        f"--out {shlex.quote(f'{run.path}-R')}"
    )
    evidence["commands"] = [command]
    verdict = (
        f"Pairs are misaligned ({pairs['reason']}) and R is off: for each input G is pulled "
        "towards targets that are shifted differently, and the output that minimises L1 is their "
        "pixelwise median - a blurred image - whatever the loss weights. Turn R on "
        f"({command}) or train on aligned targets (data.train_target=aligned, "
        "when the dataset has them) before judging D or the loss weights; no loss-weight change "
        "is recommended until then."
    )
    return Finding(RULE_MISALIGNED, True, verdict, evidence)


def _rule_conditional_d(run: RunRecord) -> Finding:
    if not run.has_D:
        return Finding(
            RULE_CONDITIONAL_D,
            False,
            f"Not applicable: this run has no discriminator ({run.mode}).",
            applicable=False,
        )
    conditional, source = run.d_conditional
    pairs = run.pairs
    evidence = {
        "D_conditional": conditional,
        "D_conditional_source": source,
        "misaligned": pairs["misaligned"],
        "loss_misaligned": pairs["loss_misaligned"],
    }
    if conditional is None:
        return Finding(
            RULE_CONDITIONAL_D,
            False,
            f"Not evaluated: whether D is conditioned on the input is {source}.",
            evidence,
            applicable=False,
        )
    if not conditional:
        return Finding(RULE_CONDITIONAL_D, False, f"D is unconditional ({source}).", evidence)
    if run.has_R and run.cfg("model.D.frame") == "target":
        return Finding(
            RULE_CONDITIONAL_D,
            False,
            f"D is conditional ({source}) and judges G's output warped into the target's frame "
            "(model.D.frame: target): its real and fake pairs share the targets' misalignment.",
            evidence,
        )
    if pairs["loss_misaligned"] is None:
        return Finding(
            RULE_CONDITIONAL_D,
            False,
            f"Not evaluated: D is conditional ({source}), but whether the pairs are misaligned "
            f"is {pairs['reason']}.",
            evidence,
            applicable=False,
        )
    if not pairs["loss_misaligned"]:
        return Finding(
            RULE_CONDITIONAL_D,
            False,
            f"D is conditional ({source}) and the pairs it sees are aligned: fine.",
            evidence,
        )
    verdict = (
        f"D is conditioned on the input ({source}) while the pairs are misaligned "
        f"({pairs['reason']}): D sees misaligned real pairs and aligned fake ones, so it can tell "
        "them apart by the misalignment alone and reward G for reproducing it. Make D "
        "unconditional (model.D.conditional=no; the default whenever R is on or the pairs are "
        "misaligned)."
    )
    return Finding(RULE_CONDITIONAL_D, True, verdict, evidence)


def _rule_unstable(runs: Sequence[RunRecord], bases: Sequence[RunRecord]) -> Finding:
    evidence: dict[str, Any] = {}
    texts: list[str] = []
    unknown = []
    for role, group in (("run", runs), ("baseline", bases)):
        for r in group:
            jumps, source = _instabilities(r)
            if jumps is None:
                unknown.append(r.name)
                evidence[r.name] = {"role": role, "source": source}
                continue
            best = finite_or_none(r.best.get("epoch"))
            evidence[r.name] = {
                "role": role,
                "source": source,
                "jumps": jumps,
                "best_epoch": None if best is None else int(best),
            }
            if not jumps:
                continue
            first = min(int(j["epoch"]) for j in jumps)
            messages = "; ".join(str(j.get("message", j)) for j in jumps)
            text = f"The {role} {r.name} trained unstably ({source}): {messages}."
            if best is not None and best < first:
                text += (
                    f" Its best checkpoint (epoch {int(best)}) predates the jump at epoch "
                    f"{first}: every later epoch was lost, and its results are those of a run "
                    "that then broke."
                )
            elif best is not None:
                text += (
                    f" Its best checkpoint (epoch {int(best)}) comes after the jump at epoch "
                    f"{first}: it recovered, but the jump cost epochs."
                )
            val_drop = any(str(j.get("key", "")).startswith("val_") for j in jumps)
            if r.has_D and not val_drop:
                text += (
                    " Only the training loss jumped, which in a run with D can also mean that D "
                    "got stronger (G's adversarial loss rises); validation did not collapse."
                )
            texts.append(text)
    if texts:
        texts.append(
            "An ablation with an unstable arm is not trustworthy: rerun that arm (another seed, "
            "a lower learning rate or gan_weight, R1) before comparing."
        )
        return Finding(RULE_UNSTABLE, True, " ".join(texts), evidence)
    if len(unknown) == len(runs) + len(bases):
        return Finding(
            RULE_UNSTABLE,
            False,
            "Not evaluated: " + str(evidence[unknown[0]]["source"]) + ".",
            evidence,
            applicable=False,
        )
    text = "No loss jump or validation collapse found"
    if unknown:
        text += f" (not logged for {', '.join(unknown)})"
    return Finding(RULE_UNSTABLE, False, text + ".", evidence)


# --------------------------------------------------------------------------------------------
# rules about D
# --------------------------------------------------------------------------------------------


def _rule_d_ineffective(run: RunRecord, n: int, ablation: Finding) -> Finding:
    if not run.has_D:
        return Finding(
            RULE_D_INEFFECTIVE,
            False,
            f"Not applicable: this run has no discriminator ({run.mode}).",
            applicable=False,
        )
    real, fake = _mean_last(run, "train_D_real", n), _mean_last(run, "train_D_fake", n)
    if real is None or fake is None:
        return Finding(
            RULE_D_INEFFECTIVE,
            False,
            "Not evaluated: train_D_real / train_D_fake not logged in the epoch log.",
            applicable=False,
        )
    gaps = [
        abs(r - f)
        for row in _last_rows(run, n)
        if (r := finite_or_none(row.get("train_D_real"))) is not None
        and (f := finite_or_none(row.get("train_D_fake"))) is not None
    ]
    gap = float(np.mean(gaps))
    acc = _mean_last(run, "train_D_acc", n)
    mode = run.gan_mode
    threshold = D_GAP_THRESHOLDS.get(mode, D_GAP_THRESHOLDS["lsgan"])
    at_chance = acc is None or abs(acc - 0.5) <= ACC_BAND
    triggered = gap < threshold and at_chance
    evidence: dict[str, Any] = {
        "D_real": _round(real),
        "D_fake": _round(fake),
        "gap": _round(gap),
        "gap_threshold": threshold,
        "gan_mode": mode,
        "D_acc": _round(acc),
        "acc_band": [0.5 - ACC_BAND, 0.5 + ACC_BAND],
    }
    scale_keys = sorted(
        {
            k[len("train_D_real_s") :]
            for row in run.epochs
            for k in row
            if k.startswith("train_D_real_s")
        }
    )
    per_scale = {}
    for s in scale_keys:
        r, f = _mean_last(run, f"train_D_real_s{s}", n), _mean_last(run, f"train_D_fake_s{s}", n)
        if r is not None and f is not None:
            per_scale[f"s{s}"] = _round(abs(r - f))
    if per_scale:
        evidence["gap_per_scale"] = per_scale
    outcome = (
        ablation.evidence.get("outcome")
        if ablation.evidence.get("arm") in ("D", "R and D")
        else None
    )
    evidence["ablation"] = outcome
    if outcome is not None:
        ablation_text = f"The ablation (see ablation): {outcome}."
    else:
        ablation_text = (
            "No ablation without D: the verdict about D is provisional (see ablation for the "
            "command)."
        )
    acc_text = f", D_acc {acc:.3f}" if acc is not None else ""
    if triggered:
        verdict = (
            f"D_real ~ D_fake over the last epochs (|D_real - D_fake| = {_fmt(gap)} < {threshold} "
            f"for {mode}{acc_text}, within 0.5 +/- {ACC_BAND}): D does not tell real from fake, "
            "so its GAN term passes G little useful gradient. This alone does not prove D "
            "useless: feature matching through a weak D can still act like a random-feature "
            "perceptual loss. Ablations weigh more. " + ablation_text
        )
    else:
        why = f"|D_real - D_fake| = {_fmt(gap)}" + (
            f" >= {threshold}" if gap >= threshold else f" < {threshold}, but D_acc is off chance"
        )
        verdict = f"D separates real from fake ({why}{acc_text}). " + ablation_text
    return Finding(RULE_D_INEFFECTIVE, triggered, verdict, evidence)


def _rule_d_clipping(run: RunRecord, n: int) -> Finding:
    if not run.has_D:
        return Finding(
            RULE_D_CLIPPING,
            False,
            f"Not applicable: this run has no discriminator ({run.mode}).",
            applicable=False,
        )
    limit = finite_or_none(run.cfg("optim.D.grad_clip"))
    limit = limit or finite_or_none(run.cfg("optim.grad_clip"))
    rate = _mean_last(run, "train_clip_rate_D", n)
    if rate is None:
        return Finding(
            RULE_D_CLIPPING,
            False,
            "Not evaluated: train_clip_rate_D not logged in the epoch log"
            + (" (clipping is off)." if run.config and limit is None else "."),
            {"grad_clip_D": limit},
            applicable=False,
        )
    cut = _mean_last(run, "train_clip_cut_D", n)
    norm = _mean_last(run, "train_grad_norm_D", n)
    cut_when_fired = cut / rate if cut is not None and rate > 0 else None
    rate_g = _mean_last(run, "train_clip_rate_G", n)
    r1 = finite_or_none(run.cfg("loss.r1_weight")) or 0.0
    evidence: dict[str, Any] = {
        "clip_rate_D": _round(rate),
        "clip_rate_limit": CLIP_RATE_LIMIT,
        "clip_cut_D_when_fired": _round(cut_when_fired),
        "grad_norm_D": _round(norm),
        "grad_clip_D": limit,
        "r1_weight": r1,
        "clip_rate_G": _round(rate_g),
    }
    if rate <= CLIP_RATE_LIMIT:
        verdict = (
            f"D's clipping fires on {rate:.0%} of steps (limit {CLIP_RATE_LIMIT:.0%}): it only "
            "trims occasional spikes."
        )
        return Finding(RULE_D_CLIPPING, False, verdict, evidence)
    # a limit that would fire on ~10% of steps: D's 90th-percentile gradient norm lately
    x, y = run.series("grad_norm_D", source="steps")
    last = run.epochs_done
    recent = y[(x > last - n) & np.isfinite(y)] if x.size and run.steps_per_epoch else y[:0]
    if recent.size >= 3:
        suggested = float(np.percentile(recent, 90))
        basis = "the 90th percentile of D's recent step gradient norms"
    elif norm is not None:
        suggested = 1.5 * norm
        basis = "1.5x D's recent mean gradient norm"
    else:
        suggested = None
        basis = ""
    if suggested is not None:
        suggested = float(f"{suggested:.2g}")
    evidence["suggested_grad_clip_D"] = suggested
    cut_text = (
        f", removing {cut_when_fired:.0%} of the gradient's norm when it fires"
        if cut_when_fired is not None
        else ""
    )
    norm_text = f" (mean norm {norm:.3g} vs limit {_fmt(limit)})" if norm is not None else ""
    r1_text = (
        f"raise the R1 penalty (loss.r1_weight {r1:g} -> {4 * r1:g})"
        if r1 > 0
        else "add an R1 penalty (loss.r1_weight, e.g. 1.0, applied lazily every "
        "loss.r1_interval steps)"
    )
    clip_text = (
        f"raise optim.D.grad_clip to ~{suggested:g} ({basis}, so it fires on ~10% of steps)"
        if suggested is not None
        else "raise optim.D.grad_clip"
    )
    verdict = (
        f"D's gradient clipping fires on {rate:.0%} of steps{cut_text}{norm_text}: D's updates "
        f"are rescaled almost always, which slows and distorts its training. {r1_text[0].upper()}"
        f"{r1_text[1:]} to keep D's gradients tame, or {clip_text}."
    )
    if rate_g is not None and rate_g > CLIP_RATE_LIMIT:
        verdict += f" G's clipping fires on {rate_g:.0%} of steps too."
    return Finding(RULE_D_CLIPPING, True, verdict, evidence)
