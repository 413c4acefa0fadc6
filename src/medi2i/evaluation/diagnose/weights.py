"""The ``blurry_loss_weights`` rule: D on but outputs still blurry -> loss weights from the
gradient shares (how hard each weighted G-loss term pushes G's output), solved for the weights
that bring the GAN term's share to :data:`~medi2i.evaluation.diagnose.thresholds.GAN_SHARE_AIM`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from medi2i.evaluation.diagnose.evidence import _mean_last, _mean_last_steps, _metric, _round
from medi2i.evaluation.diagnose.report import Finding
from medi2i.evaluation.diagnose.thresholds import (
    GAN_SHARE_AIM,
    GAN_SHARE_TARGET,
    RULE_BLURRY,
    SHARPNESS_BLUR,
)
from medi2i.evaluation.runs import RunRecord, finite_or_none
from medi2i.losses import PART_NAMES


def _nice(value: float) -> float:
    """Round to 2 significant digits (a config value a person would type)."""
    return float(f"{value:.2g}")


def _gradient_shares(run: RunRecord, n: int) -> dict[str, Any] | None:
    """Mean gradient shares (percent) and norms of the weighted G-loss terms, or None.

    From the epoch log (``train_gshare_*``, ``train_gnorm_*``), else the step log's measured
    steps (``gshare_*``, ``gnorm_*``) of the last ``n`` epochs.
    """
    for source, prefix, mean in (
        ("epoch log", "train_", _mean_last),
        ("step log", "", _mean_last_steps),
    ):
        shares = {p: mean(run, f"{prefix}gshare_{p}", n) for p in PART_NAMES}
        if all(v is None for v in shares.values()):
            continue
        norms = {p: mean(run, f"{prefix}gnorm_{p}", n) for p in PART_NAMES}
        return {"source": source, "share": shares, "norm": norms}
    return None


def _share_text(shares: dict[str, float | None], lead: str) -> str:
    """``"GAN term's gradient share is 4%; FM 13%, recon 83%"`` (parts that are logged)."""
    names = {"recon": "recon", "gan": "GAN", "fm": "FM", "smooth": "smooth"}
    gan = shares.get("gan") or 0.0
    rest = [
        f"{names[p]} {shares[p]:.0f}%"
        for p in ("fm", "recon", "smooth")
        if shares.get(p) is not None and (p != "smooth" or shares[p] > 0)
    ]
    return f"{lead} {gan:.0f}%" + (f"; {', '.join(rest)}" if rest else "")


def _share_at(
    pull: dict[str, float], gan_unit: float, fm_unit: float, gw: float, fw: float
) -> float:
    """GAN gradient share (percent) with weights ``gw``/``fw``, the unit-weight norms fixed."""
    gan, fm = gw * gan_unit, fw * fm_unit
    total = pull["recon"] + pull["smooth"] + gan + fm
    return 100.0 * gan / total if total > 0 else math.nan


def _weight_recommendations(run: RunRecord, n: int) -> tuple[str, dict[str, Any]]:
    """The GAN term's gradient share and weights that would bring it to :data:`GAN_SHARE_AIM`.

    Each weighted term's gradient norm on G's output is its weight times the norm of the
    unweighted term's gradient, so with the unweighted norms held fixed a target share is
    reached by solving for one weight.
    """
    gw = finite_or_none(run.cfg("loss.gan_weight"))
    fw = finite_or_none(run.cfg("loss.feat_match_weight"))
    value_shares = {p: _round(_mean_last(run, f"train_share_{p}", n), 3) for p in PART_NAMES}
    evidence: dict[str, Any] = {
        "target_pct": GAN_SHARE_TARGET,
        "gan_weight": gw,
        "feat_match_weight": fw,
        "value_share_pct (secondary)": value_shares,
    }
    value_text = ""
    if value_shares.get("gan") is not None:
        value_text = (
            " (Shares of the loss value, which do not measure the push on G: "
            + _share_text(value_shares, "GAN")
            + ".)"
        )
    grads = _gradient_shares(run, n)
    if grads is None:
        return (
            "The gradient shares (train_gshare_*) are not logged - this run predates them - so "
            "no loss weight is recommended: the value shares cannot tell how hard each term "
            "pushes G." + value_text,
            evidence,
        )
    shares = {p: (v if v is not None else 0.0) for p, v in grads["share"].items()}
    norms = grads["norm"]
    evidence.update(
        source=grads["source"],
        gshare_pct={p: _round(v, 3) for p, v in shares.items()},
        gnorm={p: _round(v) for p, v in norms.items()},
    )
    share = shares["gan"]
    head = _share_text(shares, "GAN term's gradient share is") + (
        f" (target > {GAN_SHARE_TARGET:.0f}%)"
    )
    if share >= GAN_SHARE_TARGET:
        return head + ", already above target." + value_text, evidence
    if gw is None or fw is None:
        return (
            head + "; loss.gan_weight / loss.feat_match_weight not in the config." + value_text,
            evidence,
        )
    # the norms when all three main ones are logged, else the shares (proportional to them)
    use_norms = all(norms.get(p) is not None for p in ("recon", "gan", "fm"))
    pull = {p: ((norms[p] if use_norms else shares[p]) or 0.0) for p in PART_NAMES}
    evidence["solved_from"] = "gradient norms" if use_norms else "gradient shares"
    if gw <= 0 or pull["gan"] <= 0:
        return (
            head
            + "; the GAN term passes G no gradient at all, so no weight can raise its share."
            + value_text,
            evidence,
        )
    gan_unit = pull["gan"] / gw
    fm_unit = pull["fm"] / fw if fw > 0 else 0.0
    aim = GAN_SHARE_AIM / 100.0
    others = pull["recon"] + pull["smooth"] + pull["fm"]
    # gw' * g / (others + gw' * g) = aim  ->  gw' = aim * others / ((1 - aim) * g)
    gw_needed = _nice(aim * others / ((1.0 - aim) * gan_unit))
    evidence["gan_weight_for_aim"] = gw_needed
    recs = []
    fw_user = None
    if fw > 0 and fm_unit > 0:
        # g / (recon + smooth + fw' * f + g) = aim  ->  fw' = (g / aim - recon - smooth - g) / f
        value = (pull["gan"] / aim - pull["recon"] - pull["smooth"] - pull["gan"]) / fm_unit
        fw_needed = _nice(value) if value > 0 else None
        fw_user = 2.0 if fw > 2.0 else _nice(fw / 2.0)
        share_fw_user = _share_at(pull, gan_unit, fm_unit, gw, fw_user)
        share_fm0 = _share_at(pull, gan_unit, fm_unit, gw, 0.0)
        evidence.update(
            feat_match_weight_for_aim=fw_needed,
            gshare_at_feat_match={
                f"{fw_user:g}": _round(share_fw_user, 3),
                "0": _round(share_fm0, 3),
            },
        )
        text = (
            f"lower loss.feat_match_weight {fw:g} -> {fw_user:g} "
            f"(GAN gradient share ~{share_fw_user:.0f}%"
        )
        if fw_needed is not None and abs(fw_needed - fw_user) > 0.05 * fw:
            text += f"; {fw_needed:g} for ~{GAN_SHARE_AIM:.0f}%)"
        elif fw_needed is None:
            text += f"; even 0 gives only ~{share_fm0:.0f}%)"
        else:
            text += ")"
        recs.append(text)
    verb = "raise" if gw_needed > gw else "set"
    gan_text = f"{verb} loss.gan_weight {gw:g} -> {gw_needed:g} (~{GAN_SHARE_AIM:.0f}%)"
    if gw_needed > 5.0 and fw_user is not None:
        others_user = pull["recon"] + pull["smooth"] + fw_user * fm_unit
        both = _nice(aim * others_user / ((1.0 - aim) * gan_unit))
        evidence["gan_weight_for_aim_at_lower_fm"] = both
        gan_text += (
            f", beyond the usual 2-5 range, so rather combine feat_match_weight {fw_user:g} "
            f"with gan_weight {both:g}"
        )
    recs.append(gan_text + ", watching stability")
    text = (
        head
        + " -> the GAN term, the one that sharpens, barely moves G: "
        + "; or ".join(recs)
        + ". Estimates assume each term's gradient scales with its weight and the unweighted "
        "gradients stay as they are." + value_text
    )
    return text, evidence


def _rule_blurry(
    run: RunRecord,
    n: int,
    d_finding: Finding,
    misaligned: Finding,
    ablation: Finding,
    bases: Sequence[RunRecord],
) -> Finding:
    if not run.has_D:
        return Finding(
            RULE_BLURRY,
            False,
            f"Not applicable: this run has no discriminator ({run.mode}), so its loss has no "
            "GAN or FM term to re-weight.",
            applicable=False,
        )
    metrics, source = run.decision_metrics()
    sharp = _metric(metrics, "sharpness_mask")
    evidence: dict[str, Any] = {
        "source": source,
        "sharpness_mask": _round(sharp),
        "sharpness_threshold": SHARPNESS_BLUR,
    }
    weights_text, weights_evidence = _weight_recommendations(run, n)
    evidence["weights"] = weights_evidence
    if misaligned.triggered:
        return Finding(
            RULE_BLURRY,
            False,
            "Not judged: misaligned pairs reach G's loss with R off (see misaligned_without_r), "
            "which blurs the output whatever the loss weights; no loss-weight change is "
            "recommended before that is fixed.",
            evidence,
            applicable=False,
        )
    reasons, clear, undecided = [], [], []
    if sharp is not None and sharp < SHARPNESS_BLUR:
        reasons.append(f"validation lung sharpness ratio {sharp:.3f} < {SHARPNESS_BLUR}")
    elif sharp is not None:
        clear.append(
            f"validation lung sharpness ratio {sharp:.3f} >= {SHARPNESS_BLUR} (which artefacts "
            "can fool)"
        )
    if ablation.evidence.get("arm") in ("D", "R and D") and "metrics" in ablation.evidence:
        comps = {k: ablation.evidence["metrics"].get(k) for k in ("hfen_mask", "gmsd_mask")}
        comps = {k: v for k, v in comps.items() if v is not None}
        evidence["baseline"] = {
            "names": [b.name for b in bases],
            "source": ablation.evidence.get("source"),
            **{k: v["verdict"] for k, v in comps.items()},
        }
        if comps:
            verdicts = [v["verdict"] for v in comps.values()]
            shown = ", ".join(f"{k.split('_')[0].upper()} {v['verdict']}" for k, v in comps.items())
            if "better" in verdicts:
                evidence["no_sharper_than_baseline"] = False
                clear.append(f"lung HFEN/GMSD better than without D ({shown})")
            elif all(v == "no CI" for v in verdicts):
                evidence["no_sharper_than_baseline"] = None
                undecided.append(
                    "lung HFEN/GMSD against the run without D cannot be judged without a "
                    "confidence interval"
                )
            else:
                evidence["no_sharper_than_baseline"] = True
                reasons.append(f"lung HFEN/GMSD no better than without D ({shown}, 95% CI)")
    if not reasons:
        evidence["blurry"] = False
        if not clear:
            why = "; ".join(undecided) or (
                "no baseline without D given" if not bases else "no lung HFEN/GMSD to compare"
            )
            return Finding(
                RULE_BLURRY,
                False,
                f"Not evaluated: no validation lung sharpness ratio, and {why}.",
                evidence,
                applicable=False,
            )
        note = (
            ""
            if "baseline" in evidence
            else " Give a baseline without D to compare HFEN/GMSD with intervals."
        )
        extra = (" " + "; ".join(undecided) + ".") if undecided else ""
        return Finding(
            RULE_BLURRY,
            False,
            "No sign of blur: " + "; ".join(clear) + "." + extra + note,
            evidence,
        )
    evidence["blurry"] = True
    gshare = (weights_evidence.get("gshare_pct") or {}).get("gan")
    if d_finding.triggered:
        d_text = (
            "D barely separates real from fake (see d_ineffective), so whatever weight the GAN "
            "term gets, it passes G little signal."
        )
    else:
        d_text = "D separates real from fake, so the loss weights are the lever."
    verdict = f"Outputs are still blurry ({'; '.join(reasons)}). {weights_text} {d_text}"
    if gshare is not None and gshare >= GAN_SHARE_TARGET:
        verdict += (
            " With the GAN gradient share already above target, re-weighting is not what holds "
            "sharpness back: "
            + (
                "make D useful first (capacity, learning rate, R1) and confirm with ablations"
                if d_finding.triggered
                else "the next levers are a perceptual loss, R1 and longer training"
            )
            + "."
        )
    return Finding(RULE_BLURRY, True, verdict, evidence)
