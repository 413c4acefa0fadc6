"""The rules that read one run's setup and logs: divergence, misaligned pairs with R off, a
conditional D on misaligned pairs, unstable training, an ineffective D and D's gradient
clipping.

Each rule is a pure function of the run records that returns a
:class:`~medi2i.evaluation.diagnose.report.Decision`: a status, the case that decided it and the
evidence, with no sentences; :mod:`~medi2i.evaluation.diagnose.wording` words it. Logged keys
come from :mod:`medi2i.run.scalars`; a key the run must have logged (D's outputs in a run with
D, D's clip rate when D was clipped) is read with
:meth:`~medi2i.evaluation.runs.RunRecord.require_series`, so that a log without it is an error
naming the key, not a finding "not logged". The other
rules live with what they need: ``ablation`` in :mod:`~medi2i.evaluation.diagnose.ablation`,
``blurry_loss_weights`` in :mod:`~medi2i.evaluation.diagnose.weights`, ``still_improving`` in
:mod:`~medi2i.evaluation.diagnose.progress`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medi2i.evaluation.diagnose.evidence import (
    _instabilities,
    _last_rows,
    _mean_last,
    _round,
    _train_argv,
    _without_d,
)
from medi2i.evaluation.diagnose.report import (
    NOT_EVALUATED,
    NOT_TRIGGERED,
    TRIGGERED,
    Decision,
)
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
from medi2i.run.scalars import (
    D_ACC,
    D_FAKE,
    D_REAL,
    EPOCH,
    SKIPPED_STEPS,
    VAL_PREFIX,
    clip_cut_key,
    clip_rate_key,
    grad_norm_key,
    scale_indices,
    scale_key,
    train_key,
)

# --------------------------------------------------------------------------------------------
# divergence: read first, because every other rule describes a working run
# --------------------------------------------------------------------------------------------


def _rule_diverged(run: RunRecord) -> Decision:
    skipped = finite_or_none(run.summary.get("skipped_steps"))
    if skipped is None and run.epochs:
        skipped = finite_or_none(run.epochs[-1].get(SKIPPED_STEPS))
    bad_val = [
        int(row.get(EPOCH, i + 1))
        for i, row in enumerate(run.epochs)
        if any(
            key.startswith(VAL_PREFIX) and isinstance(value, float) and not np.isfinite(value)
            for key, value in row.items()
        )
    ]
    evidence: dict[str, Any] = {"skipped_steps": skipped, "non_finite_val_epochs": bad_val}
    if skipped is None and not run.epochs:
        return Decision(RULE_DIVERGED, NOT_EVALUATED, "not_logged", evidence)
    if not skipped and not bad_val:
        return Decision(RULE_DIVERGED, NOT_TRIGGERED, "finite", evidence)
    steps = finite_or_none(run.summary.get("steps"))
    return Decision(RULE_DIVERGED, TRIGGERED, "non_finite", evidence, {"steps": steps})


# --------------------------------------------------------------------------------------------
# rules about the setup
# --------------------------------------------------------------------------------------------


def _rule_misaligned(run: RunRecord) -> Decision:
    pairs = run.pairs
    evidence = {**pairs, "R": run.has_R}
    if pairs["misaligned"] is None:
        return Decision(RULE_MISALIGNED, NOT_EVALUATED, "unknown", evidence)
    if not pairs["misaligned"]:
        return Decision(RULE_MISALIGNED, NOT_TRIGGERED, "aligned", evidence)
    if run.has_R:
        return Decision(RULE_MISALIGNED, NOT_TRIGGERED, "r_on", evidence)
    if not pairs["loss_misaligned"]:
        return Decision(RULE_MISALIGNED, NOT_TRIGGERED, "aligned_targets", evidence)
    evidence["commands"] = [
        _train_argv(str(run.config_path), ["model.R.enabled=true"], f"{run.path}-R")
    ]
    return Decision(RULE_MISALIGNED, TRIGGERED, "r_off", evidence)


def _rule_conditional_d(run: RunRecord) -> Decision:
    if (no_d := _without_d(RULE_CONDITIONAL_D, run)) is not None:
        return no_d
    conditional, source = run.d_conditional
    pairs = run.pairs
    evidence = {
        "D_conditional": conditional,
        "D_conditional_source": source,
        "misaligned": pairs["misaligned"],
        "loss_misaligned": pairs["loss_misaligned"],
    }
    detail = {"pairs_reason": pairs["reason"]}
    if conditional is None:
        status, case = NOT_EVALUATED, "unknown"
    elif not conditional:
        status, case = NOT_TRIGGERED, "unconditional"
    elif run.has_R and run.cfg("model.D.frame") == "target":
        status, case = NOT_TRIGGERED, "target_frame"
    elif pairs["loss_misaligned"] is None:
        status, case = NOT_EVALUATED, "pairs_unknown"
    elif not pairs["loss_misaligned"]:
        status, case = NOT_TRIGGERED, "aligned"
    else:
        status, case = TRIGGERED, "misaligned"
    return Decision(RULE_CONDITIONAL_D, status, case, evidence, detail)


def _rule_unstable(runs: Sequence[RunRecord], bases: Sequence[RunRecord]) -> Decision:
    evidence: dict[str, Any] = {}
    arms: list[dict[str, Any]] = []  # every run and baseline in order (names may repeat)
    for role, group in (("run", runs), ("baseline", bases)):
        for r in group:
            jumps, source = _instabilities(r)
            arm: dict[str, Any] = {"role": role, "source": source}
            if jumps is not None:
                best = finite_or_none(r.best.get("epoch"))
                arm.update(jumps=jumps, best_epoch=None if best is None else int(best))
            evidence[r.name] = arm
            facts: dict[str, Any] = {"name": r.name, "has_D": r.has_D}
            if jumps:
                first = min(int(j["epoch"]) for j in jumps)
                best = arm["best_epoch"]
                facts.update(
                    first_jump_epoch=first,
                    best_before_jump=None if best is None else best < first,
                    val_dropped=any(str(j.get("key", "")).startswith(VAL_PREFIX) for j in jumps),
                )
            arms.append({**facts, **arm})
    detail = {"arms": arms}
    if any(arm.get("jumps") for arm in arms):
        return Decision(RULE_UNSTABLE, TRIGGERED, "unstable", evidence, detail)
    if all("jumps" not in arm for arm in arms):
        return Decision(RULE_UNSTABLE, NOT_EVALUATED, "not_logged", evidence, detail)
    return Decision(RULE_UNSTABLE, NOT_TRIGGERED, "stable", evidence, detail)


# --------------------------------------------------------------------------------------------
# rules about D
# --------------------------------------------------------------------------------------------


def _rule_d_ineffective(run: RunRecord, n: int, ablation: Decision) -> Decision:
    if (no_d := _without_d(RULE_D_INEFFECTIVE, run)) is not None:
        return no_d
    real_key, fake_key = train_key(D_REAL), train_key(D_FAKE)
    if run.epochs:  # a run with D logs both in every epoch
        run.require_series(real_key)
        run.require_series(fake_key)
    real, fake = _mean_last(run, real_key, n), _mean_last(run, fake_key, n)
    if real is None or fake is None:
        return Decision(RULE_D_INEFFECTIVE, NOT_EVALUATED, "not_logged")
    gaps = [
        abs(r - f)
        for row in _last_rows(run, n)
        if (r := finite_or_none(row.get(real_key))) is not None
        and (f := finite_or_none(row.get(fake_key))) is not None
    ]
    gap = float(np.mean(gaps))
    acc = _mean_last(run, train_key(D_ACC), n)
    mode = run.gan_mode
    threshold = D_GAP_THRESHOLDS.get(mode, D_GAP_THRESHOLDS["lsgan"])
    at_chance = acc is None or abs(acc - 0.5) <= ACC_BAND
    evidence: dict[str, Any] = {
        "D_real": _round(real),
        "D_fake": _round(fake),
        "gap": _round(gap),
        "gap_threshold": threshold,
        "gan_mode": mode,
        "D_acc": _round(acc),
        "acc_band": [0.5 - ACC_BAND, 0.5 + ACC_BAND],
    }
    per_scale = {}
    for s in scale_indices((k for row in run.epochs for k in row), real_key):
        r = _mean_last(run, scale_key(real_key, s), n)
        f = _mean_last(run, scale_key(fake_key, s), n)
        if r is not None and f is not None:
            per_scale[f"s{s}"] = _round(abs(r - f))
    if per_scale:
        evidence["gap_per_scale"] = per_scale
    ablated = ablation.evidence.get("arm") in ("D", "R and D")
    evidence["ablation"] = ablation.evidence.get("outcome") if ablated else None
    if gap >= threshold:
        status, case = NOT_TRIGGERED, "separates"
    elif not at_chance:
        status, case = NOT_TRIGGERED, "acc_off_chance"
    else:
        status, case = TRIGGERED, "at_chance"
    return Decision(RULE_D_INEFFECTIVE, status, case, evidence, {"gap": gap, "acc": acc})


def _rule_d_clipping(run: RunRecord, n: int) -> Decision:
    if (no_d := _without_d(RULE_D_CLIPPING, run)) is not None:
        return no_d
    limit = finite_or_none(run.cfg("optim.D.grad_clip"))
    limit = limit or finite_or_none(run.cfg("optim.grad_clip"))
    rate_key = train_key(clip_rate_key("D"))
    if run.epochs and run.config and limit is not None:  # D was clipped: every epoch says so
        run.require_series(rate_key)
    rate = _mean_last(run, rate_key, n)
    if rate is None:
        case = "clipping_off" if run.config and limit is None else "not_logged"
        return Decision(RULE_D_CLIPPING, NOT_EVALUATED, case, {"grad_clip_D": limit})
    cut = _mean_last(run, train_key(clip_cut_key("D")), n)
    norm = _mean_last(run, train_key(grad_norm_key("D")), n)
    cut_when_fired = cut / rate if cut is not None and rate > 0 else None
    rate_g = _mean_last(run, train_key(clip_rate_key("G")), n)
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
    detail: dict[str, Any] = {
        "rate": rate,
        "cut_when_fired": cut_when_fired,
        "norm": norm,
        "rate_G": rate_g,
    }
    if rate <= CLIP_RATE_LIMIT:
        return Decision(RULE_D_CLIPPING, NOT_TRIGGERED, "rare", evidence, detail)
    # a limit that would fire on ~10% of steps: D's 90th-percentile gradient norm lately
    x, y = run.series(grad_norm_key("D"), source="steps")
    last = run.epochs_done
    recent = y[(x > last - n) & np.isfinite(y)] if x.size and run.steps_per_epoch else y[:0]
    if recent.size >= 3:
        suggested, basis = float(np.percentile(recent, 90)), "step_norm_p90"
    elif norm is not None:
        suggested, basis = 1.5 * norm, "mean_norm_x1.5"
    else:
        suggested, basis = None, None
    evidence["suggested_grad_clip_D"] = None if suggested is None else float(f"{suggested:.2g}")
    detail.update(
        suggestion_basis=basis,
        suggested_r1_weight=4 * r1 if r1 > 0 else None,
        clip_rate_G_too=rate_g is not None and rate_g > CLIP_RATE_LIMIT,
    )
    return Decision(RULE_D_CLIPPING, TRIGGERED, "frequent", evidence, detail)
