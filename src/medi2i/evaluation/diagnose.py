"""Apply the user's decision rules to a run's logs: "adding D did not make results sharper - why?"

Four rules, each a :class:`Finding` with the evidence it read (means over the last
``last_epochs`` epochs of ``metrics/epochs.jsonl``, final metrics from ``test_metrics.json`` or
the last validation):

1. ``d_ineffective`` - ``D_real`` ~ ``D_fake``: D does not tell real from fake. Triggered when the
   mean ``|D_real - D_fake|`` is below :data:`D_GAP_THRESHOLDS` (5% of the mode's decision
   scale) **and** ``D_acc`` is within ``0.5 +/- 0.05``. This alone does **not** prove D useless
   (feature matching through a weak D still acts like a random-feature perceptual loss; a small
   test on this kind of data gained ~1.6 dB lung PSNR that way): ablations weigh more, so the
   verdict quotes the G-only ``baseline`` when given and says plainly when no ablation exists.
2. ``blurry_loss_weights`` - D is on, yet outputs are still blurry (lung HFEN/GMSD no better than
   the G-only baseline's, or lung sharpness ratio < 0.9) -> the loss weights: the GAN share of G's
   loss (the user's target: above 30%) and concrete ``feat_match_weight`` / ``gan_weight`` values.
3. ``d_clipping`` - D's gradient clipping fires on most steps (``clip_rate_D`` > 0.5) -> R1
   (``loss.r1_weight``) or a higher ``optim.D.grad_clip``.
4. ``still_improving`` - validation lung PSNR still rising at the end (slope > 0.1 dB/epoch over
   the last epochs, or the best epoch is the last) -> train longer (the user's exp4: G-only,
   100+ epochs); checked for the run and for the G-only baseline.

Each threshold, and how it was chosen, is documented where it is defined below.
"""

from __future__ import annotations

import logging
import math
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medi2i.evaluation.runs import RunRecord, finite_or_none, load_run

log = logging.getLogger(__name__)

__all__ = [
    "ACC_BAND",
    "CLIP_RATE_LIMIT",
    "D_GAP_THRESHOLDS",
    "GAN_SHARE_AIM",
    "GAN_SHARE_TARGET",
    "HFEN_GMSD_REL_TOL",
    "PSNR_TOL_DB",
    "RULES",
    "SHARPNESS_BLUR",
    "SLOPE_DB_PER_EPOCH",
    "Diagnosis",
    "Finding",
    "diagnose_run",
    "format_diagnosis",
]

RULE_D_INEFFECTIVE = "d_ineffective"
RULE_BLURRY = "blurry_loss_weights"
RULE_D_CLIPPING = "d_clipping"
RULE_STILL_IMPROVING = "still_improving"
RULES: dict[str, str] = {
    RULE_D_INEFFECTIVE: "D ineffective (D_real ~ D_fake)",
    RULE_BLURRY: "D on but outputs still blurry -> loss weights",
    RULE_D_CLIPPING: "D's gradient clipping fires on most steps",
    RULE_STILL_IMPROVING: "still improving at the end -> train longer",
}
"""Rule id -> one-line title."""

D_GAP_THRESHOLDS: dict[str, float] = {"lsgan": 0.05, "hinge": 0.10, "bce": 0.20}
"""Mean ``|D_real - D_fake|`` (raw logits) below which D is said not to separate real from fake.

Chosen as 5% of each mode's decision scale, so the rule means the same in every mode: LSGAN
trains D towards 1 on real and 0 on fake (scale 1 -> 0.05); hinge towards the margins +1 / -1
(scale 2 -> 0.10); BCE has no target logits, so its threshold is the logit gap whose sigmoid
probabilities differ by 0.05 (``sigmoid(x) - sigmoid(-x) = tanh(x/2) = 0.05`` gives x ~ 0.1, a gap
of 0.2). For scale: in the demo G+R+D run (LSGAN) the gap stayed at 0.0002-0.002 for all
8 epochs with ``D_acc`` 0.50, two orders of magnitude below a D that has learnt anything.
"""

ACC_BAND = 0.05
"""``D_acc`` within ``0.5 +/- ACC_BAND`` counts as chance: the same 5% of the decision scale,
applied to D's per-patch accuracy (0.5 = guessing)."""

SHARPNESS_BLUR = 0.9
"""Lung sharpness ratio (output/reference gradient magnitude) below which outputs are blurry.

One-sided on purpose: a value clearly below 1 means lost edges, but a value near 1 does not
prove sharpness (DESIGN.md: it read 0.98 on a visibly blurred, checkered output), which is why
HFEN/GMSD against the G-only baseline are the primary test when a baseline is given. 0.9 leaves
a 10% margin for the ratio's spread between validation images."""

HFEN_GMSD_REL_TOL = 0.02
"""HFEN/GMSD must improve on the baseline's by more than 2% (relative) to count as sharper.

A working margin, not a measured one: differences below it are reported as "no clear difference"
(repeat seeds to resolve them)."""

PSNR_TOL_DB = 0.2
"""Lung PSNR differences within +/- 0.2 dB of the baseline are reported as "no clear difference"
(a working margin like :data:`HFEN_GMSD_REL_TOL`)."""

GAN_SHARE_TARGET = 30.0
"""The user's target for the GAN term's share of G's loss, in percent."""

GAN_SHARE_AIM = 35.0
"""The share the recommended weights aim at: a little above the target, so that the drift of the
raw loss parts during training does not drop it straight back below 30%."""

CLIP_RATE_LIMIT = 0.5
"""D's clipping firing on more than half the steps means the limit is below D's typical gradient
norm, i.e. clipping rescales D's steps almost always (the user saw norms 27-40 against 5.0)."""

SLOPE_DB_PER_EPOCH = 0.1
"""Validation lung PSNR slope (least squares over the last epochs) above which a run is still
improving: at that rate 20 more epochs would still add ~2 dB, far more than the differences
between the user's variants, so stopping there compares unfinished runs."""


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


@dataclass
class Finding:
    """One rule applied to a run.

    Attributes:
        rule: the rule's id (a key of :data:`RULES`).
        triggered: whether the rule's condition holds.
        verdict: what it means and what to do, in plain words.
        evidence: the numbers the verdict rests on (thresholds included).
        applicable: False when the run cannot be judged by this rule (e.g. no D, nothing logged).
    """

    rule: str
    triggered: bool
    verdict: str
    evidence: dict[str, Any] = field(default_factory=dict)
    applicable: bool = True

    @property
    def title(self) -> str:
        """The rule's one-line title."""
        return RULES.get(self.rule, self.rule)


@dataclass
class Diagnosis:
    """The verdicts of every rule for one run.

    Attributes:
        run: the run directory.
        label: what was trained (e.g. ``"G+D fm=10.0 gan=1.0"``).
        mode: ``G``, ``G+R``, ``G+D`` or ``G+R+D``.
        baseline: the G-only run it was compared with, or None.
        epochs_used: the epochs the "last epochs" means cover.
        findings: one :class:`Finding` per rule, in :data:`RULES` order.
        notes: caveats that apply to the whole diagnosis.
    """

    run: str
    label: str
    mode: str
    baseline: str | None
    epochs_used: list[int]
    findings: list[Finding]
    notes: list[str] = field(default_factory=list)

    def finding(self, rule: str) -> Finding:
        """The finding of one rule.

        Raises:
            KeyError: unknown rule id.
        """
        for f in self.findings:
            if f.rule == rule:
                return f
        raise KeyError(f"no finding for rule {rule!r}; rules: {', '.join(RULES)}")

    @property
    def triggered(self) -> list[Finding]:
        """The findings whose condition holds."""
        return [f for f in self.findings if f.triggered]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN kept as float NaN)."""
        return asdict(self)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    if value == 0:
        return 0.0
    return float(f"{value:.{digits}g}")


def _last_rows(run: RunRecord, n: int) -> list[dict]:
    """The last ``n`` epoch rows (fewer when the run is shorter)."""
    rows = sorted(run.epochs, key=lambda r: r.get("epoch", 0))
    return rows[-n:] if n > 0 else rows


def _mean_last(run: RunRecord, key: str, n: int) -> float | None:
    """Mean of the finite values of ``key`` over the last ``n`` epochs, None if none."""
    values = [finite_or_none(r.get(key)) for r in _last_rows(run, n)]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _comparable(run: RunRecord, base: RunRecord) -> tuple[dict, dict, str]:
    """Final metrics of a run and its baseline from the same source (test if both have it)."""
    run_m, run_src = run.final_metrics()
    base_m, base_src = base.final_metrics()
    if run_src == "test" and base_src == "test":
        return run_m, base_m, "test split"
    return run.val_metrics(), base.val_metrics(), "last validation"


def _metric(metrics: dict, name: str) -> float | None:
    """``name`` from a metrics dict, falling back to the whole-image value for ``*_mask``."""
    value = finite_or_none(metrics.get(name))
    if value is None and name.endswith("_mask"):
        value = finite_or_none(metrics.get(name[: -len("_mask")]))
    return value


#: Config keys that may differ between a run and its G-only ablation without spoiling it.
_ABLATION_FREE_PREFIXES = (
    "model.D.",
    "loss.gan_",
    "loss.feat_match_weight",
    "loss.r1_",
    "optim.D.",
    "train.out_dir",
    "train.device",
    "train.progress",
    "logging.",
    "data.num_workers",
    "data.pin_memory",
    "data.root",
    "data.manifest",
)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return out


def _config_differences(run: RunRecord, base: RunRecord, limit: int = 8) -> dict[str, list]:
    """Config keys present in both (other than D's own settings) whose values differ."""
    a, b = _flatten(run.config), _flatten(base.config)
    diffs: dict[str, list] = {}
    for key in sorted(set(a) & set(b)):  # a key missing on one side: an older/partial config
        if key.startswith(_ABLATION_FREE_PREFIXES):
            continue
        if a.get(key) != b.get(key):
            diffs[key] = [a.get(key), b.get(key)]
        if len(diffs) >= limit:
            break
    return diffs


def _fmt(value: Any) -> str:
    """Compact number formatting for verdicts and evidence."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4g}"
    return str(value)


# --------------------------------------------------------------------------------------------
# the ablation: what D added over the G-only baseline
# --------------------------------------------------------------------------------------------


def _ablation(run: RunRecord, base: RunRecord | None) -> tuple[str, dict[str, Any]]:
    """A sentence on what D added against the baseline (or on the missing ablation)."""
    if base is None:
        return (
            "No ablation given: train the same seed and budget without D (G-only), with FM only "
            "(loss.gan_weight=0) and with the GAN term only (loss.feat_match_weight=0), and pass "
            "the G-only run as the baseline; those comparisons weigh more than D's outputs.",
            {"baseline": None},
        )
    run_m, base_m, source = _comparable(run, base)
    evidence: dict[str, Any] = {"baseline": base.name, "baseline_mode": base.mode, "source": source}
    parts, better, worse = [], 0, 0
    for name in ("psnr_mask", "hfen_mask", "gmsd_mask"):
        r, b = _metric(run_m, name), _metric(base_m, name)
        if r is None or b is None:
            continue
        delta = r - b
        if name == "psnr_mask":
            change = (
                "better" if delta > PSNR_TOL_DB else "worse" if delta < -PSNR_TOL_DB else "same"
            )
            text = f"lung PSNR {delta:+.2f} dB"
        else:
            rel = delta / b if b else math.nan
            change = (
                "better"
                if rel < -HFEN_GMSD_REL_TOL
                else "worse"
                if rel > HFEN_GMSD_REL_TOL
                else "same"
            )
            text = f"lung {name.split('_')[0].upper()} {rel * 100:+.1f}%"
        better += change == "better"
        worse += change == "worse"
        parts.append(f"{text} ({'no clear difference' if change == 'same' else change})")
        evidence[name] = {"run": _round(r), "baseline": _round(b), "delta": _round(delta)}
    if not parts:
        evidence["added"] = None
        return (
            f"The baseline {base.name} has no comparable lung metrics ({source}); "
            "no ablation can be read from it.",
            evidence,
        )
    if better and not worse:
        outcome = "D adds measurable quality"
    elif worse and not better:
        outcome = "D made the result worse"
    elif better and worse:
        outcome = "mixed: D trades one measure for another"
    else:
        outcome = "no clear gain from D"
    evidence["added"] = outcome
    text = (
        f"Against the baseline {base.name} ({base.label}, {source}): {', '.join(parts)} "
        f"-> {outcome}."
    )
    caveats = []
    if base.has_D:
        caveats.append(
            f"the baseline has a discriminator too ({base.mode}), so it is no G-only run"
        )
    diffs = _config_differences(run, base)
    if diffs:
        evidence["config_differences"] = diffs
        shown = ", ".join(f"{k} ({_fmt(a)} vs {_fmt(b)})" for k, (a, b) in list(diffs.items())[:4])
        caveats.append(f"not a clean ablation, it also differs in {shown}")
    run_steps = finite_or_none(run.summary.get("steps"))
    base_steps = finite_or_none(base.summary.get("steps"))
    if run_steps and base_steps and run_steps != base_steps:
        caveats.append(f"budgets differ ({run_steps:.0f} vs {base_steps:.0f} steps)")
    evidence["steps"] = [run_steps, base_steps]
    if caveats:
        text += " Caveat: " + "; ".join(caveats) + "."
    return text, evidence


# --------------------------------------------------------------------------------------------
# rules
# --------------------------------------------------------------------------------------------


def _rule_d_ineffective(run: RunRecord, base: RunRecord | None, n: int) -> Finding:
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
            "Not evaluated: no train_D_real / train_D_fake in the epoch log.",
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
    ablation_text, ablation_evidence = _ablation(run, base)
    evidence["ablation"] = ablation_evidence
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


def _nice(value: float) -> float:
    """Round to 2 significant digits (a config value a person would type)."""
    return float(f"{value:.2g}")


def _share_at(
    parts: dict[str, float], raw_gan: float, raw_fm: float, gw: float, fw: float
) -> float:
    """GAN share (percent) of G's loss with weights ``gw``/``fw`` and the raw parts unchanged."""
    rest = parts["w_recon"] + parts["w_smooth"]
    gan, fm = gw * raw_gan, fw * raw_fm
    total = rest + gan + fm
    return 100.0 * gan / total if total > 0 else math.nan


def _weight_recommendations(run: RunRecord, n: int) -> tuple[str, dict[str, Any]]:
    """The GAN share of G's loss and weights that would bring it to :data:`GAN_SHARE_AIM`."""
    parts = {k: _mean_last(run, f"train_{k}", n) for k in ("w_recon", "w_gan", "w_fm", "w_smooth")}
    share = _mean_last(run, "train_share_gan", n)
    gw = finite_or_none(run.cfg("loss.gan_weight"))
    fw = finite_or_none(run.cfg("loss.feat_match_weight"))
    evidence: dict[str, Any] = {
        "share_gan_pct": _round(share),
        "share_fm_pct": _round(_mean_last(run, "train_share_fm", n)),
        "share_recon_pct": _round(_mean_last(run, "train_share_recon", n)),
        "target_pct": GAN_SHARE_TARGET,
        "gan_weight": gw,
        "feat_match_weight": fw,
        **{k: _round(v) for k, v in parts.items()},
    }
    if share is None or parts["w_recon"] is None or parts["w_gan"] is None:
        return "The GAN share of G's loss was not logged.", evidence
    p = {k: (v or 0.0) for k, v in parts.items()}
    # raw (unweighted) parts: weighted part / weight, or the logged raw value when weight is 0
    raw_gan = p["w_gan"] / gw if gw else (_mean_last(run, "train_gan", n) or 0.0)
    raw_fm = p["w_fm"] / fw if fw else (_mean_last(run, "train_fm", n) or 0.0)
    evidence.update(raw_gan=_round(raw_gan), raw_fm=_round(raw_fm))
    head = f"GAN share of G's loss: {share:.0f}% (user's target > {GAN_SHARE_TARGET:.0f}%)"
    if share >= GAN_SHARE_TARGET:
        return head + ", already above target.", evidence
    if gw is None or fw is None:
        return head + "; loss.gan_weight / loss.feat_match_weight not in the config.", evidence
    if raw_gan <= 0:
        return head + "; the raw GAN term is zero, so no weight can raise its share.", evidence
    aim = GAN_SHARE_AIM / 100.0
    others = p["w_recon"] + p["w_smooth"] + fw * raw_fm
    # gw' * g / (others + gw' * g) = aim  ->  gw' = aim * others / ((1 - aim) * g)
    gw_needed = _nice(aim * others / ((1.0 - aim) * raw_gan))
    evidence["gan_weight_for_aim"] = gw_needed
    recs = []
    fw_user = None
    if fw > 0 and raw_fm > 0:
        # gw * g / (recon + smooth + fw' * f + gw * g) = aim  ->  fw' = (gw*g/aim - rest) / f
        value = (gw * raw_gan / aim - p["w_recon"] - p["w_smooth"] - gw * raw_gan) / raw_fm
        fw_needed = _nice(value) if value > 0 else None
        fw_user = 2.0 if fw > 2.0 else _nice(fw / 2.0)
        share_fw_user = _share_at(p, raw_gan, raw_fm, gw, fw_user)
        share_fm0 = _share_at(p, raw_gan, raw_fm, gw, 0.0)
        evidence.update(
            feat_match_weight_for_aim=fw_needed,
            share_at_feat_match={
                f"{fw_user:g}": _round(share_fw_user, 3),
                "0": _round(share_fm0, 3),
            },
        )
        text = (
            f"lower loss.feat_match_weight {fw:g} -> {fw_user:g} (GAN share ~{share_fw_user:.0f}%"
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
        others_user = p["w_recon"] + p["w_smooth"] + fw_user * raw_fm
        both = _nice(aim * others_user / ((1.0 - aim) * raw_gan))
        evidence["gan_weight_for_aim_at_lower_fm"] = both
        gan_text += (
            f", beyond the user's 2-5 range, so rather combine feat_match_weight {fw_user:g} "
            f"with gan_weight {both:g}"
        )
    recs.append(gan_text + ", watching stability")
    text = (
        head
        + " -> the GAN term, the one that sharpens, is drowned: "
        + "; or ".join(recs)
        + ". Estimates assume the raw loss parts stay as they are."
    )
    return text, evidence


def _rule_blurry(run: RunRecord, base: RunRecord | None, n: int, d_finding: Finding) -> Finding:
    if not run.has_D:
        return Finding(
            RULE_BLURRY,
            False,
            f"Not applicable: this run has no discriminator ({run.mode}), so its loss has no "
            "GAN or FM term to re-weight.",
            applicable=False,
        )
    final, source = run.final_metrics()
    sharp = _metric(final, "sharpness_mask")
    evidence: dict[str, Any] = {
        "source": source,
        "sharpness_mask": _round(sharp),
        "sharpness_threshold": SHARPNESS_BLUR,
    }
    reasons, clear = [], []
    if sharp is not None and sharp < SHARPNESS_BLUR:
        reasons.append(f"lung sharpness ratio {sharp:.3f} < {SHARPNESS_BLUR}")
    elif sharp is not None:
        clear.append(
            f"lung sharpness ratio {sharp:.3f} >= {SHARPNESS_BLUR} (which artefacts can fool)"
        )
    if base is not None:
        run_m, base_m, bsrc = _comparable(run, base)
        vals = {
            name: (_metric(run_m, name), _metric(base_m, name))
            for name in ("hfen_mask", "gmsd_mask")
        }
        evidence["baseline"] = {"name": base.name, "source": bsrc}
        if all(r is not None and b is not None for r, b in vals.values()):
            no_better = all(r >= b * (1.0 - HFEN_GMSD_REL_TOL) for r, b in vals.values())
            shown = ", ".join(
                f"{k.split('_')[0].upper()} {r:.4g} vs {b:.4g}" for k, (r, b) in vals.items()
            )
            evidence["baseline"].update({k: [_round(r), _round(b)] for k, (r, b) in vals.items()})
            evidence["no_sharper_than_baseline"] = no_better
            if no_better:
                reasons.append(f"lung HFEN/GMSD no better than G-only {base.name}'s ({shown})")
            else:
                clear.append(f"lung HFEN/GMSD better than G-only {base.name}'s ({shown})")
    if not reasons:
        evidence["blurry"] = False
        if not clear:
            why = "no baseline given" if base is None else "no lung HFEN/GMSD to compare"
            return Finding(
                RULE_BLURRY,
                False,
                f"Not evaluated: no lung sharpness ratio in the final metrics and {why}.",
                evidence,
                applicable=False,
            )
        note = "" if base is not None else " Give a G-only baseline to compare HFEN/GMSD."
        return Finding(
            RULE_BLURRY, False, "No sign of blur: " + "; ".join(clear) + "." + note, evidence
        )
    evidence["blurry"] = True
    weights_text, weights_evidence = _weight_recommendations(run, n)
    evidence["weights"] = weights_evidence
    share = weights_evidence.get("share_gan_pct")
    if d_finding.triggered:
        d_text = (
            "D barely separates real from fake (see d_ineffective), so whatever weight the GAN "
            "term gets, it passes G little signal: a large share of the loss *value* is not a "
            "large share of the *gradient* (LSGAN with D at chance: (D_fake-1)^2 ~ 0.25, "
            "nearly constant)."
        )
    else:
        d_text = "D separates real from fake, so the loss weights are the lever."
    verdict = f"Outputs are still blurry ({'; '.join(reasons)}). {weights_text} {d_text}"
    if share is not None and share >= GAN_SHARE_TARGET:
        verdict += (
            " With the GAN share already above target, re-weighting is not what holds sharpness "
            "back: "
            + (
                "make D useful first (capacity, learning rate, R1) and confirm with ablations"
                if d_finding.triggered
                else "next levers from the user's list are a perceptual loss, R1 and longer "
                "training"
            )
            + "."
        )
    return Finding(RULE_BLURRY, True, verdict, evidence)


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
            "Not evaluated: no train_clip_rate_D in the epoch log"
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


def _progress(run: RunRecord, n: int) -> dict[str, Any]:
    """Slope of validation lung PSNR over the last ``n`` epochs and whether best == last."""
    key = "val_psnr_mask" if run.has_key("val_psnr_mask") else "val_psnr"
    x, y = run.series(key)
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    x, y = x[-n:], y[-n:]
    slope = float(np.polyfit(x, y, 1)[0]) if x.size >= 2 and np.ptp(x) > 0 else None
    last = run.epochs_done
    best_epoch = run.best.get("epoch")
    best_epoch = int(best_epoch) if finite_or_none(best_epoch) is not None else None
    return {
        "metric": key,
        "slope_db_per_epoch": _round(slope),
        "slope_threshold": SLOPE_DB_PER_EPOCH,
        "epochs": [int(v) for v in x],
        "values": [_round(v) for v in y],
        "best_epoch": best_epoch,
        "last_epoch": last,
        "improving": bool(
            (slope is not None and slope > SLOPE_DB_PER_EPOCH)
            or (best_epoch is not None and best_epoch == last and last > 0)
        ),
    }


def _progress_text(p: dict[str, Any]) -> str:
    parts = []
    if p["slope_db_per_epoch"] is not None:
        parts.append(
            f"{p['metric']} {p['slope_db_per_epoch']:+.2f} dB/epoch over epochs "
            f"{p['epochs'][0]}-{p['epochs'][-1]}"
        )
    else:
        parts.append(f"only {len(p['epochs'])} validated epoch(s), no trend")
    if p["best_epoch"] is not None:
        rel = "=" if p["best_epoch"] == p["last_epoch"] else "<"
        parts.append(f"best epoch {p['best_epoch']} {rel} last {p['last_epoch']}")
    return ", ".join(parts)


def _rule_still_improving(run: RunRecord, base: RunRecord | None, n: int) -> Finding:
    mine = _progress(run, n)
    evidence: dict[str, Any] = {"run": mine}
    if not mine["epochs"]:
        return Finding(
            RULE_STILL_IMPROVING,
            False,
            "Not evaluated: no validation PSNR in the epoch log.",
            evidence,
            applicable=False,
        )
    base_p = None
    if base is not None and not base.has_D:
        base_p = _progress(base, n)
        evidence["baseline"] = {"name": base.name, **base_p}
    texts = []
    if mine["improving"]:
        if run.has_D:
            texts.append(
                f"This run is still improving at the end ({_progress_text(mine)}): train longer "
                "before judging D, and compare runs at equal budgets."
            )
        else:
            texts.append(
                f"G-only is still improving at the end ({_progress_text(mine)}): train it longer "
                "- the user's exp4 (G-only, 100+ epochs) - since it is the baseline D must beat."
            )
    if base_p is not None and base_p["improving"]:
        texts.append(
            f"The G-only baseline {base.name} is itself still improving ({_progress_text(base_p)})"
            ": the comparison with it is premature; train it longer (the user's exp4, 100+ "
            "epochs)."
        )
    triggered = bool(texts)
    if not triggered:
        texts.append(f"Converged for its budget ({_progress_text(mine)}).")
    return Finding(RULE_STILL_IMPROVING, triggered, " ".join(texts), evidence)


# --------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------


def diagnose_run(
    run_dir: str | Path, *, baseline: str | Path | None = None, last_epochs: int = 3
) -> Diagnosis:
    """Apply the user's decision rules to a run's logs.

    Args:
        run_dir: the run directory to judge.
        baseline: a G-only run (same seed and budget, ideally) to weigh what D added; its
            test metrics are compared when both runs were tested, else the last validation.
        last_epochs: how many final epochs the log means cover (fewer when the run is shorter).

    Returns:
        One finding per rule (see :data:`RULES`), with notes on caveats.

    Raises:
        ValueError: ``run_dir`` or ``baseline`` is not a run directory, or ``last_epochs < 1``.
    """
    if last_epochs < 1:
        raise ValueError(f"last_epochs must be >= 1, got {last_epochs}")
    run = load_run(run_dir)
    base = load_run(baseline) if baseline is not None else None
    notes: list[str] = []
    rows = _last_rows(run, last_epochs)
    epochs_used = [int(r.get("epoch", 0)) for r in rows]
    if not run.epochs:
        notes.append("The run has no epoch log (metrics/epochs.jsonl): most rules cannot be read.")
    elif len(rows) < last_epochs:
        notes.append(f"Only {len(rows)} epoch(s) logged; means cover all of them.")
    if base is not None and base.has_D:
        notes.append(
            f"The baseline {base.name} has a discriminator ({base.mode}); a G-only run is "
            "what tells what D adds."
        )
    if base is None and run.has_D:
        notes.append(
            "No ablation given: D's outputs alone cannot prove D useless or useful; the same "
            "seed and budget without D, with FM only and with the GAN term only weigh more."
        )
    for problem in run.problems:
        notes.append(f"skipped while reading: {problem}")
    d_finding = _rule_d_ineffective(run, base, last_epochs)
    findings = [
        d_finding,
        _rule_blurry(run, base, last_epochs, d_finding),
        _rule_d_clipping(run, last_epochs),
        _rule_still_improving(run, base, last_epochs),
    ]
    diagnosis = Diagnosis(
        run=str(run.path),
        label=run.label,
        mode=run.mode,
        baseline=str(base.path) if base is not None else None,
        epochs_used=epochs_used,
        findings=findings,
        notes=notes,
    )
    log.info(
        "diagnosed %s: %s",
        run.name,
        ", ".join(f.rule for f in diagnosis.triggered) or "no rule triggered",
    )
    return diagnosis


def _fmt_any(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt_any(v) for v in value) + "]"
    return _fmt(value)


def _evidence_lines(evidence: dict[str, Any], indent: str, width: int) -> list[str]:
    """``key=value`` lines, nested dicts as indented sub-blocks, wrapped at ``width``."""
    flat = [f"{k}={_fmt_any(v)}" for k, v in evidence.items() if not isinstance(v, dict)]
    lines = textwrap.wrap(
        ", ".join(flat), width, initial_indent=indent, subsequent_indent=indent + "  "
    )
    for key, value in evidence.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines.extend(_evidence_lines(value, indent + "  ", width))
    return lines


def format_diagnosis(diagnosis: Diagnosis, *, evidence: bool = True, width: int = 100) -> str:
    """Human-readable verdicts, one block per rule: ``[!]`` triggered, ``[ok]``, ``[n/a]``.

    Args:
        diagnosis: what :func:`diagnose_run` returned.
        evidence: include the evidence lines under each verdict.
        width: wrap verdicts at this many columns.

    Returns:
        Multi-line text (no trailing newline).
    """
    name = Path(diagnosis.run).name
    span = (
        f"epochs {diagnosis.epochs_used[0]}-{diagnosis.epochs_used[-1]}"
        if diagnosis.epochs_used
        else "no epochs"
    )
    lines = [f"Diagnosis of {name} ({diagnosis.label}); log means over {span}"]
    lines.append(
        f"Baseline: {Path(diagnosis.baseline).name}"
        if diagnosis.baseline
        else "Baseline: none (no ablation)"
    )
    for note in diagnosis.notes:
        lines.append(f"Note: {note}")
    for f in diagnosis.findings:
        mark = "[!]" if f.triggered else "[ok]" if f.applicable else "[n/a]"
        lines.append("")
        lines.append(f"{mark} {f.title} ({f.rule})")
        lines.extend(
            textwrap.wrap(f.verdict, width, initial_indent="    ", subsequent_indent="    ")
        )
        if evidence and f.evidence:
            lines.extend(_evidence_lines(f.evidence, "      ", width))
    triggered = diagnosis.triggered
    lines.append("")
    lines.append(
        "Triggered: " + ", ".join(f.rule for f in triggered) if triggered else "Triggered: none"
    )
    return "\n".join(lines)
