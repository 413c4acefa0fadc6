"""The ``blurry_loss_weights`` rule: D on but outputs still blurry -> loss weights from the
gradient shares (how hard each weighted G-loss term pushes G's output), solved for the weights
that bring the GAN term's share to :data:`~medi2i.evaluation.diagnose.thresholds.GAN_SHARE_AIM`.

The rule is a pure function returning a :class:`~medi2i.evaluation.diagnose.report.Decision`
(the signs of blur and the weight recommendation as keys and numbers);
:mod:`~medi2i.evaluation.diagnose.wording` words it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from medi2i.evaluation.diagnose.evidence import (
    _mean_last,
    _mean_last_steps,
    _metric,
    _round,
    _without_d,
)
from medi2i.evaluation.diagnose.report import (
    NOT_EVALUATED,
    NOT_TRIGGERED,
    TRIGGERED,
    Decision,
)
from medi2i.evaluation.diagnose.thresholds import (
    GAN_SHARE_AIM,
    GAN_SHARE_TARGET,
    RULE_BLURRY,
    SHARPNESS_BLUR,
)
from medi2i.evaluation.runs import RunRecord, finite_or_none
from medi2i.run.scalars import PART_NAMES, gnorm_key, gshare_key, share_key, train_key


def _nice(value: float) -> float:
    """Round to 2 significant digits (a config value a person would type)."""
    return float(f"{value:.2g}")


def _gradient_shares(run: RunRecord, n: int) -> dict[str, Any] | None:
    """Mean gradient shares (percent) and norms of the weighted G-loss terms, or None.

    From the epoch log (``train_gshare_*``, ``train_gnorm_*``), else the step log's measured
    steps (``gshare_*``, ``gnorm_*``) of the last ``n`` epochs. Their absence is legitimate with
    ``logging.gshare_every: 0`` or without the setting (a run that did not measure them); a run
    that measured them logs them in its first epoch.

    Raises:
        MissingScalarError: the run measured gradient shares but its epoch log has none.
    """
    every = finite_or_none(run.cfg("logging.gshare_every"))
    if run.epochs and every is not None and every > 0:
        run.require_series(train_key(gshare_key("gan")))
    for source, key, mean in (
        ("epoch log", train_key, _mean_last),
        ("step log", lambda name: name, _mean_last_steps),
    ):
        shares = {p: mean(run, key(gshare_key(p)), n) for p in PART_NAMES}
        if all(v is None for v in shares.values()):
            continue
        norms = {p: mean(run, key(gnorm_key(p)), n) for p in PART_NAMES}
        return {"source": source, "share": shares, "norm": norms}
    return None


def _fixed_pull(pull: dict[str, float]) -> float:
    """The pull of the terms the recommendation leaves alone: every part but GAN and FM."""
    return sum(value for part, value in pull.items() if part not in ("gan", "fm"))


def _share_at(
    pull: dict[str, float], gan_unit: float, fm_unit: float, gw: float, fw: float
) -> float:
    """GAN gradient share (percent) with weights ``gw``/``fw``, the unit-weight norms fixed."""
    gan, fm = gw * gan_unit, fw * fm_unit
    total = _fixed_pull(pull) + gan + fm
    return 100.0 * gan / total if total > 0 else math.nan


def _weight_recommendations(run: RunRecord, n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The GAN term's gradient share and weights that would bring it to :data:`GAN_SHARE_AIM`.

    Each weighted term's gradient norm on G's output is its weight times the norm of the
    unweighted term's gradient, so with the unweighted norms held fixed a target share is
    reached by solving for one weight.

    Returns:
        ``(evidence, detail)``; ``detail["case"]`` says how far the recommendation got:
        ``no_gradient_shares``, ``above_target``, ``no_weights`` (not in the config),
        ``no_gan_gradient`` or ``recommend``.
    """
    gw = finite_or_none(run.cfg("loss.gan_weight"))
    fw = finite_or_none(run.cfg("loss.feat_match_weight"))
    value_shares = {p: _round(_mean_last(run, train_key(share_key(p)), n), 3) for p in PART_NAMES}
    evidence: dict[str, Any] = {
        "target_pct": GAN_SHARE_TARGET,
        "gan_weight": gw,
        "feat_match_weight": fw,
        "value_share_pct (secondary)": value_shares,
    }
    grads = _gradient_shares(run, n)
    if grads is None:
        return evidence, {"case": "no_gradient_shares"}
    shares = {p: (v if v is not None else 0.0) for p, v in grads["share"].items()}
    norms = grads["norm"]
    evidence.update(
        source=grads["source"],
        gshare_pct={p: _round(v, 3) for p, v in shares.items()},
        gnorm={p: _round(v) for p, v in norms.items()},
    )
    detail: dict[str, Any] = {"shares": shares}
    if shares["gan"] >= GAN_SHARE_TARGET:
        return evidence, {**detail, "case": "above_target"}
    if gw is None or fw is None:
        return evidence, {**detail, "case": "no_weights"}
    # the norms when all three main ones are logged, else the shares (proportional to them)
    use_norms = all(norms.get(p) is not None for p in ("recon", "gan", "fm"))
    pull = {p: ((norms[p] if use_norms else shares[p]) or 0.0) for p in PART_NAMES}
    evidence["solved_from"] = "gradient norms" if use_norms else "gradient shares"
    if gw <= 0 or pull["gan"] <= 0:
        return evidence, {**detail, "case": "no_gan_gradient"}
    gan_unit = pull["gan"] / gw
    fm_unit = pull["fm"] / fw if fw > 0 else 0.0
    aim = GAN_SHARE_AIM / 100.0
    others = _fixed_pull(pull) + pull["fm"]
    # gw' * g / (others + gw' * g) = aim  ->  gw' = aim * others / ((1 - aim) * g)
    evidence["gan_weight_for_aim"] = _nice(aim * others / ((1.0 - aim) * gan_unit))
    if fw > 0 and fm_unit > 0:
        # g / (fixed + fw' * f + g) = aim  ->  fw' = (g / aim - fixed - g) / f, where fixed is
        # the pull of recon, smooth and perceptual
        value = (pull["gan"] / aim - _fixed_pull(pull) - pull["gan"]) / fm_unit
        fw_user = 2.0 if fw > 2.0 else _nice(fw / 2.0)
        fm = {
            "weight": fw_user,
            "share": _share_at(pull, gan_unit, fm_unit, gw, fw_user),
            "share_at_0": _share_at(pull, gan_unit, fm_unit, gw, 0.0),
        }
        detail["fm"] = fm
        evidence.update(
            feat_match_weight_for_aim=_nice(value) if value > 0 else None,
            gshare_at_feat_match={
                f"{fw_user:g}": _round(fm["share"], 3),
                "0": _round(fm["share_at_0"], 3),
            },
        )
        if evidence["gan_weight_for_aim"] > 5.0:
            others_user = _fixed_pull(pull) + fw_user * fm_unit
            both = _nice(aim * others_user / ((1.0 - aim) * gan_unit))
            evidence["gan_weight_for_aim_at_lower_fm"] = both
    return evidence, {**detail, "case": "recommend"}


def _rule_blurry(
    run: RunRecord,
    n: int,
    d_ineffective: Decision,
    misaligned: Decision,
    ablation: Decision,
    bases: Sequence[RunRecord],
) -> Decision:
    if (no_d := _without_d(RULE_BLURRY, run)) is not None:
        return no_d
    metrics, source = run.decision_metrics()
    sharp = _metric(metrics, "sharpness_mask")
    evidence: dict[str, Any] = {
        "source": source,
        "sharpness_mask": _round(sharp),
        "sharpness_threshold": SHARPNESS_BLUR,
    }
    evidence["weights"], weights = _weight_recommendations(run, n)
    if misaligned.triggered:
        return Decision(RULE_BLURRY, NOT_EVALUATED, "misaligned", evidence)
    # signs of blur, signs of none and comparisons that cannot decide: keys for the wording
    reasons, clear, undecided = [], [], []
    if sharp is not None:
        (reasons if sharp < SHARPNESS_BLUR else clear).append("sharpness")
    comps: dict[str, str] = {}
    if ablation.evidence.get("arm") in ("D", "R and D") and "metrics" in ablation.evidence:
        found = {k: ablation.evidence["metrics"].get(k) for k in ("hfen_mask", "gmsd_mask")}
        comps = {k: v["verdict"] for k, v in found.items() if v is not None}
        evidence["baseline"] = {
            "names": [b.name for b in bases],
            "source": ablation.evidence.get("source"),
            **comps,
        }
        if comps:
            verdicts = list(comps.values())
            if "better" in verdicts:
                evidence["no_sharper_than_baseline"] = False
                clear.append("baseline")
            elif all(v == "no CI" for v in verdicts):
                evidence["no_sharper_than_baseline"] = None
                undecided.append("baseline_no_ci")
            else:
                evidence["no_sharper_than_baseline"] = True
                reasons.append("baseline")
    evidence["blurry"] = bool(reasons)
    detail: dict[str, Any] = {
        "sharpness": sharp,
        "comparisons": comps,
        "blur_signs": reasons,
        "sharp_signs": clear,
        "undecided": undecided,
        "baselines": bool(bases),
        "weights": weights,
    }
    if reasons:
        gshare = (evidence["weights"].get("gshare_pct") or {}).get("gan")
        detail.update(
            d_ineffective=d_ineffective.triggered,
            gan_share_above_target=gshare is not None and gshare >= GAN_SHARE_TARGET,
        )
        return Decision(RULE_BLURRY, TRIGGERED, "blurry", evidence, detail)
    if clear:
        return Decision(RULE_BLURRY, NOT_TRIGGERED, "sharp", evidence, detail)
    return Decision(RULE_BLURRY, NOT_EVALUATED, "no_evidence", evidence, detail)
