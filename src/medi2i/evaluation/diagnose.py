"""Apply the user's decision rules to a run: "adding D did not make results sharper - why?"

Every verdict rests on evidence that cannot mislead in the usual ways:

* **Validation, never test.** Quality numbers come from the validation split - the metrics of
  the best epoch (:meth:`RunRecord.decision_metrics`) or a fresh per-image evaluation of the
  best EMA generator on it; test metrics are shown for reference only.
* **Confidence intervals, not margins.** A run is "better" or "worse" than its baseline only
  when the 95% interval of the difference excludes zero, otherwise "within noise": a paired
  bootstrap over the validation images both runs' best EMA generators were evaluated on (one
  run per side), or a Welch t-interval over per-seed means (several runs per side). Without an
  evaluation (``evaluate=False``) single runs are compared by their logged validation means and
  the verdict says it has no interval.
* **Gradient shares, not loss-value shares.** How hard a loss term pushes G is the norm of its
  gradient on G's output (``gshare_*`` / ``gnorm_*`` in the logs); a term can hold a large,
  nearly constant value while pulling little (LSGAN with D at chance: ``(D_fake - 1)^2 ~ 0.25``).
* **Ablations above D's outputs**, and the exact command for a missing one.

The rules, in :data:`RULES` order, each a pure function returning a :class:`Finding`:

1. ``misaligned_without_r`` - misaligned pairs reach G's loss with R off: G's L1-optimal output is
   blurred whatever the loss weights; fix that before judging D or the weights.
2. ``conditional_d_misaligned`` - D is conditioned on the input while the pairs are misaligned:
   D can reward misalignment.
3. ``unstable_training`` - a loss jump or validation collapse (the run's own ``instabilities``,
   else :func:`medi2i.training.stability.find_instabilities` on its epoch log), in the run or
   its baseline: an ablation with such an arm is not trustworthy.
4. ``ablation`` - what D (and R) add against the baseline, with intervals; the command for a
   missing ablation, and the verdict about D marked provisional without one.
5. ``d_ineffective`` - ``D_real ~ D_fake`` with ``D_acc`` at chance; weighed below the ablation.
6. ``blurry_loss_weights`` - D on, outputs still blurry -> loss weights from the gradient shares.
7. ``d_clipping`` - D's gradient clipping fires on most steps -> R1 or a higher limit.
8. ``still_improving`` - a heuristic on the validation trend: train longer.

Each threshold, and how it was chosen, is documented where it is defined below.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shlex
import tempfile
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medi2i.evaluation.runs import RunRecord, finite_or_none, load_run, resolve_data_paths
from medi2i.training.stability import find_instabilities

log = logging.getLogger(__name__)

__all__ = [
    "ACC_BAND",
    "BOOTSTRAP_RESAMPLES",
    "CLIP_RATE_LIMIT",
    "CONFIDENCE",
    "DECISION_METRICS",
    "D_GAP_THRESHOLDS",
    "GAN_SHARE_AIM",
    "GAN_SHARE_TARGET",
    "RULES",
    "SHARPNESS_BLUR",
    "SLOPE_DB_PER_EPOCH",
    "AblationPlan",
    "Diagnosis",
    "Finding",
    "MetricComparison",
    "PerImageMetrics",
    "ablation_plans",
    "ci_verdict",
    "diagnose_run",
    "evaluate_val_per_image",
    "format_diagnosis",
    "welch_interval",
]

RULE_MISALIGNED = "misaligned_without_r"
RULE_CONDITIONAL_D = "conditional_d_misaligned"
RULE_UNSTABLE = "unstable_training"
RULE_ABLATION = "ablation"
RULE_D_INEFFECTIVE = "d_ineffective"
RULE_BLURRY = "blurry_loss_weights"
RULE_D_CLIPPING = "d_clipping"
RULE_STILL_IMPROVING = "still_improving"
RULES: dict[str, str] = {
    RULE_MISALIGNED: "misaligned pairs with R off -> blur whatever the loss weights",
    RULE_CONDITIONAL_D: "conditional D with misaligned pairs -> D can reward misalignment",
    RULE_UNSTABLE: "unstable training (loss jump / validation collapse)",
    RULE_ABLATION: "ablations: what D (and R) add, with 95% intervals",
    RULE_D_INEFFECTIVE: "D ineffective (D_real ~ D_fake)",
    RULE_BLURRY: "D on but outputs still blurry -> loss weights (gradient shares)",
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
HFEN/GMSD against the run without D, with confidence intervals, are the primary test when such
a baseline is given. 0.9 leaves a 10% margin for the ratio's spread between validation images."""

GAN_SHARE_TARGET = 30.0
"""The user's target for the GAN term's share, in percent - applied to the *gradient* share.

The user stated it for the share of the loss value, but the value says nothing about how hard a
term pushes G (an LSGAN term at chance holds ~0.25 while its gradient vanishes); the gradient
share (each weighted term's gradient norm on G's output over the sum of those norms) measures
exactly that push, so the target is applied to it."""

GAN_SHARE_AIM = 35.0
"""The gradient share the recommended weights aim at: a little above the target, so that the
drift of the unweighted gradient norms during training does not drop it straight back below
30%."""

CLIP_RATE_LIMIT = 0.5
"""D's clipping firing on more than half the steps means the limit is below D's typical gradient
norm, i.e. clipping rescales D's steps almost always (the user saw norms 27-40 against 5.0)."""

SLOPE_DB_PER_EPOCH = 0.1
"""A heuristic, not a significance test: validation lung PSNR rising faster than 0.1 dB/epoch
(least squares over the last epochs) means a run is still improving - at that rate 20 more
epochs would add ~2 dB, more than the differences between the user's variants, so stopping
there compares unfinished runs. It only suggests training longer; it decides no comparison."""

CONFIDENCE = 0.95
"""Coverage of every interval the verdicts rest on."""

BOOTSTRAP_RESAMPLES = 2000
"""Bootstrap resamples for the paired per-image interval: enough for stable 2.5/97.5 percentiles
(their Monte-Carlo error is a few percent of the interval's width)."""

DECISION_METRICS: tuple[tuple[str, bool, str, str], ...] = (
    ("psnr_mask", True, "lung PSNR", " dB"),
    ("hfen_mask", False, "lung HFEN", ""),
    ("gmsd_mask", False, "lung GMSD", ""),
)
"""``(metric, higher_is_better, name, unit)`` of the metrics run-vs-baseline verdicts use:
PSNR for fidelity, HFEN and GMSD for detail (DESIGN.md: a gradient sharpness ratio is fooled by
artefacts; these compare structure)."""

_PARTS = ("recon", "gan", "fm", "smooth")
_EVAL_DIR = ("diagnose", "val")
_CACHE_FILE = "cache.json"


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
class MetricComparison:
    """Run minus baseline for one metric, with its interval and verdict.

    Attributes:
        metric: the metric key (e.g. ``psnr_mask``).
        higher_is_better: the metric's direction.
        run: the run side's mean (over images, or over seeds).
        baseline: the baseline side's mean.
        delta: ``run - baseline`` (the mean paired difference for a paired comparison).
        ci_low: lower end of the :data:`CONFIDENCE` interval of ``delta`` (None: no interval).
        ci_high: upper end.
        n: images (paired) or seeds per side (``[run, baseline]``) the interval rests on.
        method: how the interval was computed, in words.
        verdict: ``better`` / ``worse`` (the interval excludes zero), ``within noise``, or
            ``no CI`` (no interval could be computed).
    """

    metric: str
    higher_is_better: bool
    run: float | None
    baseline: float | None
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    n: int | list[int]
    method: str
    verdict: str


@dataclass
class PerImageMetrics:
    """One run's best EMA generator evaluated per image on the validation split.

    Attributes:
        run: the run directory.
        checkpoint: the checkpoint evaluated.
        epoch: its epoch (None if unknown).
        reference: what the outputs were compared with (``aligned_target`` or ``target``).
        units: the value range the metrics were computed in.
        names: image names, one per row of ``values``.
        values: metric -> per-image values (NaN where undefined).
        cached: True when read back from ``RUN/diagnose/val`` instead of evaluated now.
    """

    run: str
    checkpoint: str
    epoch: int | None
    reference: str
    units: str
    names: list[str]
    values: dict[str, np.ndarray]
    cached: bool = False

    def column(self, metric: str) -> np.ndarray:
        """Per-image values of ``metric`` (``*_mask`` falls back to the whole image when the
        masked column is absent or all NaN)."""
        col = self.values.get(metric)
        if (col is None or not np.isfinite(col).any()) and metric.endswith("_mask"):
            col = self.values.get(metric[: -len("_mask")])
        return col if col is not None else np.full(len(self.names), np.nan)


@dataclass(frozen=True)
class AblationPlan:
    """A same-seed, same-budget ablation of a run, as a command to run.

    Attributes:
        arm: what is removed (``D`` or ``R``).
        run: the run directory it ablates.
        config: the run's ``config.yaml``.
        overrides: config overrides that remove the arm.
        out: where the ablation is written.
        command: the shell command (``medi2i train ...``).
    """

    arm: str
    run: str
    config: str
    overrides: tuple[str, ...]
    out: str
    command: str


@dataclass
class Diagnosis:
    """The verdicts of every rule for one run (or one group of seeds).

    Attributes:
        run: the run directory (the first one when several seeds are given).
        label: what was trained (e.g. ``"G+D fm=10.0 gan=1.0"``).
        mode: ``G``, ``G+R``, ``G+D`` or ``G+R+D``.
        baseline: the (first) baseline run, or None.
        epochs_used: the epochs the "last epochs" means cover.
        findings: one :class:`Finding` per rule, in :data:`RULES` order.
        notes: caveats that apply to the whole diagnosis.
        runs: every run of the judged side (seeds).
        baselines: every baseline run.
        setup: pairs, R and D conditioning as the diagnosis understood them.
        decision_source: where the run's quality numbers come from (always validation).
        test_report: the run's test metrics, for reference only (never used by a rule).
    """

    run: str
    label: str
    mode: str
    baseline: str | None
    epochs_used: list[int]
    findings: list[Finding]
    notes: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    baselines: list[str] = field(default_factory=list)
    setup: dict[str, Any] = field(default_factory=dict)
    decision_source: str = ""
    test_report: dict[str, float] | None = None

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


def _mean_last_steps(run: RunRecord, key: str, n: int) -> float | None:
    """Mean of ``key`` over the step rows of the last ``n`` epochs (all rows when the steps
    per epoch are unknown), None if none."""
    x, y = run.series(key, source="steps")
    ok = np.isfinite(y)
    if run.steps_per_epoch and x.size:
        ok &= x > run.epochs_done - n
    return float(y[ok].mean()) if ok.any() else None


def _metric(metrics: dict, name: str) -> float | None:
    """``name`` from a metrics dict, falling back to the whole-image value for ``*_mask``."""
    value = finite_or_none(metrics.get(name))
    if value is None and name.endswith("_mask"):
        value = finite_or_none(metrics.get(name[: -len("_mask")]))
    return value


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


def _signed(value: float, digits: int = 3, unit: str = "") -> str:
    """``+1.234`` style; tiny values in two significant digits instead of ``+0.000``."""
    if value != 0 and abs(value) < 10**-digits:
        return f"{value:+.2g}{unit}"
    return f"{value:+.{digits}f}{unit}"


#: Config keys that may differ between a run and an ablation of one arm without spoiling it.
_COMMON_FREE = (
    "train.out_dir",
    "train.device",
    "train.progress",
    "logging.",
    "data.num_workers",
    "data.pin_memory",
    "data.root",
    "data.manifest",
)
_ARM_FREE = {
    "D": ("model.D.", "loss.gan_", "loss.feat_match_weight", "loss.r1_", "optim.D."),
    "R": ("model.R.", "loss.smooth", "optim.R."),
}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return out


def _config_differences(
    run: RunRecord, base: RunRecord, free: Sequence[str] = (), limit: int = 8
) -> dict[str, list]:
    """Config keys present in both (other than ``free`` prefixes) whose values differ."""
    a, b = _flatten(run.config), _flatten(base.config)
    skip = (*_COMMON_FREE, *free)
    diffs: dict[str, list] = {}
    for key in sorted(set(a) & set(b)):  # a key missing on one side: an older/partial config
        if key.startswith(skip):
            continue
        if a.get(key) != b.get(key):
            diffs[key] = [a.get(key), b.get(key)]
        if len(diffs) >= limit:
            break
    return diffs


def _names(runs: Sequence[RunRecord]) -> str:
    return ", ".join(r.name for r in runs)


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------


def ci_verdict(low: float | None, high: float | None, higher_is_better: bool) -> str:
    """``better`` / ``worse`` when the interval of ``run - baseline`` excludes zero, else
    ``within noise``; ``no CI`` when there is no interval.

    Args:
        low: lower end of the interval (None: no interval).
        high: upper end.
        higher_is_better: the metric's direction.

    Returns:
        The verdict word(s).
    """
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "no CI"
    if low > 0:
        return "better" if higher_is_better else "worse"
    if high < 0:
        return "worse" if higher_is_better else "better"
    return "within noise"


def welch_interval(
    a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float | None, float | None, str]:
    """t-interval of ``mean(a) - mean(b)`` from per-seed values (Welch, unequal variances).

    With two or more values on each side this is Welch's interval (Welch-Satterthwaite degrees
    of freedom). With a single value on one side its seed-to-seed spread is unknown, so the
    other side's spread stands for both (the only estimate there is; df = that side's n - 1).

    Args:
        a: per-seed values of the run side.
        b: per-seed values of the baseline side.
        confidence: the interval's coverage.

    Returns:
        ``(delta, low, high, method)``; ``low``/``high`` are None when neither side has two
        values (no spread to estimate).

    Raises:
        ValueError: an empty side.
    """
    from scipy import stats

    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.size == 0 or xb.size == 0:
        raise ValueError("welch_interval needs at least one value per side")
    delta = float(xa.mean() - xb.mean())
    na, nb = xa.size, xb.size
    if na < 2 and nb < 2:
        return delta, None, None, "one run per side: no seed-to-seed spread, no interval"
    if na >= 2 and nb >= 2:
        va, vb = xa.var(ddof=1) / na, xb.var(ddof=1) / nb
        se = math.sqrt(va + vb)
        denom = (va**2 / (na - 1) if va else 0.0) + (vb**2 / (nb - 1) if vb else 0.0)
        df = (va + vb) ** 2 / denom if denom > 0 else float(na + nb - 2)
        method = f"Welch t-interval over seeds ({na} vs {nb})"
    else:
        multi = xa if na >= 2 else xb
        s2 = multi.var(ddof=1)
        se = math.sqrt(s2 / na + s2 / nb)
        df = float(multi.size - 1)
        method = (
            f"t-interval over seeds ({na} vs {nb}; the single run's spread taken from the "
            f"{multi.size} others)"
        )
    if se == 0:
        return delta, delta, delta, method + ", zero spread"
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df)) * se
    return delta, delta - half, delta + half, method


# --------------------------------------------------------------------------------------------
# per-image validation evaluation (cached in the run directory)
# --------------------------------------------------------------------------------------------


def _cache_key(checkpoint: Path, data_root: str | Path | None) -> dict[str, Any]:
    from medi2i import __version__

    stat = checkpoint.stat()
    return {
        "checkpoint": checkpoint.name,
        "mtime_ns": stat.st_mtime_ns,
        "size": stat.st_size,
        "weights": "ema",
        "split": "val",
        "data_root": None if data_root is None else str(data_root),
        "medi2i_version": __version__,
    }


def _read_eval(folder: Path, run_dir: Path, cached: bool) -> PerImageMetrics:
    """Model rows of ``metrics.csv`` and the provenance in ``summary.json`` of an evaluation."""
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    names: list[str] = []
    columns: dict[str, list[float]] = {}
    with (folder / "metrics.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row.get("method") != "model":
                continue
            names.append(row["name"])
            for key, text in row.items():
                if key in ("name", "method"):
                    continue
                try:
                    value = float(text) if text not in ("", None) else math.nan
                except ValueError:
                    value = math.nan
                columns.setdefault(key, []).append(value)
    epoch = summary.get("epoch")
    return PerImageMetrics(
        run=str(run_dir),
        checkpoint=str(summary.get("checkpoint", "")),
        epoch=int(epoch) if finite_or_none(epoch) is not None else None,
        reference=str(summary.get("reference", "")),
        units=str(summary.get("units", "")),
        names=names,
        values={k: np.asarray(v, dtype=np.float64) for k, v in columns.items()},
        cached=cached,
    )


def evaluate_val_per_image(
    run_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    device: str = "cpu",
    refresh: bool = False,
) -> PerImageMetrics:
    """Per-image validation metrics of a run's best EMA generator, cached in the run directory.

    Evaluates with :func:`medi2i.evaluation.evaluate.evaluate_split` (against the aligned target
    when the dataset has one) into ``RUN/diagnose/val/`` (``metrics.csv``, ``summary.json``) and
    records in ``cache.json`` which checkpoint (name, modification time, size) and data root the
    numbers belong to; a later call with the same key reads them back instead of evaluating.
    A run directory that cannot be written to is evaluated into a temporary folder.

    Args:
        run_dir: the run (its ``best.pt``, else ``last.pt``).
        data_root: where the dataset is now (default: the run's ``data.root``, relative paths
            looked up from here and from the run's folders).
        device: where G runs.
        refresh: evaluate even when the cache matches.

    Returns:
        The per-image metrics.

    Raises:
        FileNotFoundError: the run has no checkpoint.
        ValueError: unreadable checkpoint.
        medi2i.data.dataset.DatasetError: the validation split cannot be read.
    """
    from medi2i.evaluation.evaluate import evaluate_split
    from medi2i.inference.loading import load_generator, resolve_checkpoint

    run_dir = Path(run_dir)
    checkpoint = resolve_checkpoint(run_dir)
    key = _cache_key(checkpoint, data_root)
    folder = run_dir.joinpath(*_EVAL_DIR)
    cache = folder / _CACHE_FILE
    if not refresh and cache.is_file():
        try:
            if json.loads(cache.read_text(encoding="utf-8")) == key:
                result = _read_eval(folder, run_dir, cached=True)
                log.info("%s: validation metrics read from %s", run_dir.name, folder)
                return result
        except (OSError, ValueError, KeyError) as exc:
            log.warning("%s: unreadable cache (%s); evaluating again", folder, exc)
    gen = load_generator(checkpoint, weights="ema", device=device)
    cfg = resolve_data_paths(gen.config, run_dir, data_root)

    def run_eval(out: Path) -> PerImageMetrics:
        evaluate_split(
            gen, out_dir=out, split="val", config=cfg, bootstrap=200, worst_k=0, progress=False
        )
        return _read_eval(out, run_dir, cached=False)

    try:
        folder.mkdir(parents=True, exist_ok=True)
        result = run_eval(folder)
        cache.write_text(json.dumps(key, indent=2) + "\n", encoding="utf-8")
    except PermissionError as exc:
        log.warning("%s: cannot write (%s); evaluating without a cache", folder, exc)
        with tempfile.TemporaryDirectory() as tmp:
            result = run_eval(Path(tmp))
    log.info("%s: evaluated %d validation images", run_dir.name, len(result.names))
    return result


# --------------------------------------------------------------------------------------------
# comparisons: run side vs baseline side
# --------------------------------------------------------------------------------------------


def _paired(
    run: PerImageMetrics, base: PerImageMetrics, names: Sequence[str], resamples: int
) -> dict[str, MetricComparison]:
    """Paired bootstrap of the per-image differences over ``names``."""
    from medi2i.evaluation.evaluate import bootstrap_ci

    rpos = {n: i for i, n in enumerate(run.names)}
    bpos = {n: i for i, n in enumerate(base.names)}
    out: dict[str, MetricComparison] = {}
    for metric, higher, _, _ in DECISION_METRICS:
        r = np.asarray([run.column(metric)[rpos[n]] for n in names])
        b = np.asarray([base.column(metric)[bpos[n]] for n in names])
        ok = np.isfinite(r) & np.isfinite(b)
        diff = r[ok] - b[ok]
        count = int(ok.sum())
        if count == 0:
            continue
        if count >= 2:
            low, high = bootstrap_ci(diff, resamples=resamples, rng=np.random.default_rng(0))
            method = f"paired bootstrap over {count} validation images"
        else:
            low = high = None
            method = "one validation image: no interval"
        out[metric] = MetricComparison(
            metric,
            higher,
            float(r[ok].mean()),
            float(b[ok].mean()),
            float(diff.mean()),
            low,
            high,
            count,
            method,
            ci_verdict(low, high, higher),
        )
    return out


def _by_seeds(
    run_values: list[dict[str, float]], base_values: list[dict[str, float]], source: str
) -> dict[str, MetricComparison]:
    """Welch intervals over per-seed values (one metrics dict per run)."""
    out: dict[str, MetricComparison] = {}
    for metric, higher, _, _ in DECISION_METRICS:
        a = [v for m in run_values if (v := _metric(m, metric)) is not None]
        b = [v for m in base_values if (v := _metric(m, metric)) is not None]
        if not a or not b:
            continue
        delta, low, high, method = welch_interval(a, b)
        out[metric] = MetricComparison(
            metric,
            higher,
            float(np.mean(a)),
            float(np.mean(b)),
            delta,
            low,
            high,
            [len(a), len(b)],
            f"{method}, {source}",
            ci_verdict(low, high, higher),
        )
    return out


def _compare_sides(
    runs: Sequence[RunRecord],
    bases: Sequence[RunRecord],
    *,
    evaluate: bool,
    data_root: str | Path | None,
    device: str,
    refresh: bool,
    resamples: int,
) -> dict[str, Any]:
    """Run side vs baseline side on the validation split, with intervals where possible.

    Returns:
        ``{"source", "metrics" (metric -> MetricComparison), "caveats", "evaluated"}``.
    """
    caveats: list[str] = []
    per_image: dict[str, PerImageMetrics] = {}
    why_no_eval = "evaluation switched off (--no-eval)"
    if evaluate:
        for r in (*runs, *bases):
            try:
                per_image[str(r.path)] = evaluate_val_per_image(
                    r.path, data_root=data_root, device=device, refresh=refresh
                )
            except Exception as exc:  # the diagnosis falls back to the logged means
                log.warning("cannot evaluate %s on the validation split: %s", r.name, exc)
                why_no_eval = f"{r.name} could not be evaluated ({type(exc).__name__}: {exc})"
                per_image = {}
                break
    if per_image:
        evals = list(per_image.values())
        common = set(evals[0].names)
        for e in evals[1:]:
            common &= set(e.names)
        names = [n for n in evals[0].names if n in common]
        if len({len(e.names) for e in evals}) > 1 or len(names) < len(evals[0].names):
            caveats.append(
                f"the runs' validation sets differ; {len(names)} images common to all are compared"
            )
        if len({e.reference for e in evals}) > 1:
            caveats.append(
                "the runs were measured against different references ("
                + ", ".join(sorted({e.reference for e in evals}))
                + "), so their numbers are not comparable"
            )
        if len({e.units for e in evals}) > 1:
            caveats.append(
                "the runs normalise intensities differently; PSNR/HFEN/GMSD differ in scale"
            )
        if names:
            cached = sum(e.cached for e in evals)
            source = "best EMA generators evaluated per image on the validation split" + (
                f" ({cached} of {len(evals)} read from RUN/diagnose/val)" if cached else ""
            )
            if len(runs) == 1 and len(bases) == 1:
                metrics = _paired(
                    per_image[str(runs[0].path)], per_image[str(bases[0].path)], names, resamples
                )
            else:

                def means(r: RunRecord) -> dict[str, float]:
                    e = per_image[str(r.path)]
                    pos = [e.names.index(n) for n in names]
                    out = {}
                    for metric, *_ in DECISION_METRICS:
                        col = e.column(metric)[pos]
                        col = col[np.isfinite(col)]
                        if col.size:
                            out[metric] = float(col.mean())
                    return out

                metrics = _by_seeds(
                    [means(r) for r in runs],
                    [means(r) for r in bases],
                    f"per-seed means over {len(names)} validation images",
                )
            return {"source": source, "metrics": metrics, "caveats": caveats, "evaluated": True}
        why_no_eval = "the runs share no validation image"
    logged = [r.decision_metrics() for r in runs], [r.decision_metrics() for r in bases]
    sources = sorted({src for _, src in (*logged[0], *logged[1])})
    if len(runs) > 1 or len(bases) > 1:
        metrics = _by_seeds(
            [m for m, _ in logged[0]], [m for m, _ in logged[1]], "logged validation means"
        )
        source = f"logged validation means ({'; '.join(sources)}); {why_no_eval}"
        return {"source": source, "metrics": metrics, "caveats": caveats, "evaluated": False}
    metrics = {}
    run_m, base_m = logged[0][0][0], logged[1][0][0]
    for metric, higher, _, _ in DECISION_METRICS:
        r, b = _metric(run_m, metric), _metric(base_m, metric)
        if r is None or b is None:
            continue
        metrics[metric] = MetricComparison(
            metric, higher, r, b, r - b, None, None, 1, "logged validation means", "no CI"
        )
    source = (
        f"logged validation means ({'; '.join(sources)}), NO confidence interval: {why_no_eval}; "
        "one run per side cannot tell a difference from noise"
    )
    return {"source": source, "metrics": metrics, "caveats": caveats, "evaluated": False}


def _comparison_text(metrics: dict[str, MetricComparison]) -> str:
    parts = []
    for metric, _, name, unit in DECISION_METRICS:
        c = metrics.get(metric)
        if c is None or c.delta is None:
            continue
        digits = 2 if unit else 4  # dB to 0.01; HFEN/GMSD are fractions
        text = f"{name} {_signed(c.delta, digits, unit)}"
        if c.ci_low is not None and c.ci_high is not None:
            text += f" [{_signed(c.ci_low, digits)}, {_signed(c.ci_high, digits)}]"
        text += f" ({c.verdict})"
        parts.append(text)
    return ", ".join(parts)


def _outcome(metrics: dict[str, MetricComparison], arm: str) -> str:
    verdicts = [c.verdict for c in metrics.values()]
    if not verdicts:
        return "no comparable validation metrics"
    if all(v == "no CI" for v in verdicts):
        return f"undecided: no confidence interval, so no verdict about {arm}"
    better, worse = verdicts.count("better"), verdicts.count("worse")
    if better and not worse:
        return f"{arm} adds measurable quality"
    if better and worse:
        return f"mixed: {arm} trades one measure for another"
    if worse:
        return f"{arm} made the result worse"
    return f"no measurable difference from {arm} (within noise)"


# --------------------------------------------------------------------------------------------
# ablations
# --------------------------------------------------------------------------------------------


def ablation_plans(run: RunRecord, arms: Sequence[str] | None = None) -> list[AblationPlan]:
    """Same-seed, same-budget ablations of a run, built from its own ``config.yaml``.

    Args:
        run: the run to ablate.
        arms: ``D`` and/or ``R`` (default: every network the run trained besides G).

    Returns:
        One plan per arm the run has: ``medi2i train --config RUN/config.yaml
        model.D.enabled=false --out RUN-noD`` (and ``model.R.enabled=false`` / ``RUN-noR``).
    """
    wanted = [
        a for a in (arms or ("D", "R")) if (a == "D" and run.has_D) or (a == "R" and run.has_R)
    ]
    plans = []
    for arm in wanted:
        overrides = (f"model.{arm}.enabled=false",)
        out = f"{run.path}-no{arm}"
        command = " ".join(
            [
                "medi2i train --config",
                shlex.quote(str(run.config_path)),
                *overrides,
                "--out",
                shlex.quote(out),
            ]
        )
        plans.append(
            AblationPlan(arm, str(run.path), str(run.config_path), overrides, out, command)
        )
    return plans


def _arm(run: RunRecord, base: RunRecord) -> str:
    """What a baseline ablates: ``D``, ``R``, ``R and D``, or ``setup`` (same networks)."""
    d = run.has_D and not base.has_D
    r = run.has_R and not base.has_R
    if run.has_D == base.has_D and run.has_R == base.has_R:
        return "setup"
    if d and r:
        return "R and D"
    if d and run.has_R == base.has_R:
        return "D"
    if r and run.has_D == base.has_D:
        return "R"
    return "mixed"


def _instabilities(run: RunRecord) -> tuple[list[dict[str, Any]] | None, str]:
    """The run's loss jumps: its own record (summary.json), else found in its epoch log."""
    recorded = run.instabilities
    if recorded is not None:
        return recorded, "summary.json"
    keys = ("train_w_recon", "train_loss_G", "val_psnr_mask", "val_psnr")
    if not any(run.has_key(k) for k in keys):
        return None, "not logged (no instabilities in summary.json, no loss or PSNR in the log)"
    return [j.to_dict() for j in find_instabilities(run.epochs)], "epoch log"


def _rule_ablation(
    runs: Sequence[RunRecord],
    bases: Sequence[RunRecord],
    comparison: dict[str, Any] | None,
    unstable: Sequence[str],
) -> Finding:
    run = runs[0]
    if not run.has_D and not run.has_R and not bases:
        return Finding(
            RULE_ABLATION,
            False,
            f"Not applicable: this run trains G alone ({run.mode}) and no baseline was given.",
            applicable=False,
        )
    evidence: dict[str, Any] = {"baselines": [b.name for b in bases]}
    texts: list[str] = []
    triggered = False
    arm = _arm(run, bases[0]) if bases else None
    covered = {"D": arm in ("D", "R and D"), "R": arm in ("R", "R and D")}
    if bases and comparison is not None:
        metrics = comparison["metrics"]
        who = "D" if arm == "D" else "R" if arm == "R" else "R and D" if arm == "R and D" else None
        outcome = _outcome(metrics, who or "this run's setup")
        evidence.update(
            arm=arm,
            source=comparison["source"],
            outcome=outcome,
            metrics={k: asdict(v) for k, v in metrics.items()},
        )
        texts.append(
            f"Against {_names(bases)} ({bases[0].mode}; run - baseline, {comparison['source']}): "
            f"{_comparison_text(metrics) or 'no comparable lung metrics'} -> {outcome}."
        )
        if who is not None and "D" in who and "adds measurable quality" not in outcome:
            triggered = True
        caveats = list(comparison["caveats"])
        if arm == "mixed":
            caveats.append(
                f"the baseline ({bases[0].mode}) is not the run ({run.mode}) with networks "
                "removed, so it ablates nothing cleanly"
            )
        if any(b.mode != bases[0].mode for b in bases):
            caveats.append("the baselines do not all train the same networks")
        free = [p for a, on in covered.items() if on for p in _ARM_FREE[a]]
        diffs = _config_differences(run, bases[0], free)
        if len(runs) > 1 or len(bases) > 1:
            diffs.pop("seed", None)
        if diffs:
            evidence["config_differences"] = diffs
            shown = ", ".join(
                f"{k} ({_fmt(a)} vs {_fmt(b)})" for k, (a, b) in list(diffs.items())[:4]
            )
            caveats.append(f"not a clean ablation, it also differs in {shown}")
        run_steps = finite_or_none(run.summary.get("steps"))
        base_steps = finite_or_none(bases[0].summary.get("steps"))
        if run_steps and base_steps and run_steps != base_steps:
            caveats.append(f"budgets differ ({run_steps:.0f} vs {base_steps:.0f} steps)")
        evidence["steps"] = [run_steps, base_steps]
        if unstable:
            caveats.append(
                f"not trustworthy: {', '.join(unstable)} trained unstably (see unstable_training)"
                " - an ablation is only as honest as its weakest arm"
            )
            triggered = True
        if caveats:
            evidence["caveats"] = caveats
            texts.append("Caveat: " + "; ".join(caveats) + ".")
    missing = [p for r in runs for p in ablation_plans(r) if not covered[p.arm]]
    if missing:
        arms = sorted({p.arm for p in missing})
        # a missing ablation of D is always worth acting on (D is the user's question); one of R
        # only when R is the run's sole addition to G
        triggered = triggered or "D" in arms or not run.has_D
        evidence["commands"] = [p.command for p in missing]
        if "D" in arms:
            texts.append(
                "No baseline without D was given, so the verdict about D is provisional: D's "
                "outputs alone cannot prove D useful or useless. Run the same-seed, same-budget "
                "ablation and pass it as --baseline:"
            )
        else:
            texts.append("No baseline without R was given; the ablation that shows what R adds:")
        texts.append("; ".join(p.command for p in missing) + ".")
        if "D" in arms and "R" in arms:
            texts.append("(The run without R shows what registration adds.)")
    if not texts:
        texts.append("Nothing to compare.")
    return Finding(RULE_ABLATION, triggered, " ".join(texts), evidence)


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
        shares = {p: mean(run, f"{prefix}gshare_{p}", n) for p in _PARTS}
        if all(v is None for v in shares.values()):
            continue
        norms = {p: mean(run, f"{prefix}gnorm_{p}", n) for p in _PARTS}
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
    value_shares = {p: _round(_mean_last(run, f"train_share_{p}", n), 3) for p in _PARTS}
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
        f" (user's target > {GAN_SHARE_TARGET:.0f}%)"
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
    pull = {p: ((norms[p] if use_norms else shares[p]) or 0.0) for p in _PARTS}
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
            f", beyond the user's 2-5 range, so rather combine feat_match_weight {fw_user:g} "
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


# --------------------------------------------------------------------------------------------
# still improving (a heuristic)
# --------------------------------------------------------------------------------------------


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
        "slope_threshold (heuristic)": SLOPE_DB_PER_EPOCH,
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
            "Not evaluated: validation PSNR not logged in the epoch log.",
            evidence,
            applicable=False,
        )
    base_p = None
    if base is not None and not base.has_D:
        base_p = _progress(base, n)
        evidence["baseline"] = {"name": base.name, **base_p}
    texts = []
    heuristic = f"(a heuristic: slope > {SLOPE_DB_PER_EPOCH} dB/epoch or best epoch = last)"
    if mine["improving"]:
        if run.has_D:
            texts.append(
                f"This run looks still improving at the end ({_progress_text(mine)}) {heuristic}: "
                "train longer before judging D, and compare runs at equal budgets."
            )
        else:
            texts.append(
                f"G-only looks still improving at the end ({_progress_text(mine)}) {heuristic}: "
                "train it longer - the user's exp4 (G-only, 100+ epochs) - since it is the "
                "baseline D must beat."
            )
    if base_p is not None and base_p["improving"]:
        texts.append(
            f"The G-only baseline {base.name} itself looks still improving "
            f"({_progress_text(base_p)}): the comparison with it is premature; train it longer "
            "(the user's exp4, 100+ epochs)."
        )
    triggered = bool(texts)
    if not triggered:
        texts.append(f"Converged for its budget ({_progress_text(mine)}).")
    return Finding(RULE_STILL_IMPROVING, triggered, " ".join(texts), evidence)


# --------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------


def _as_paths(value: str | Path | Sequence[str | Path] | None) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [Path(value)]
    return [Path(v) for v in value]


def _setup(run: RunRecord) -> dict[str, Any]:
    pairs = run.pairs
    conditional, source = run.d_conditional
    return {
        "pairs_misaligned": pairs["misaligned"],
        "pairs_reason": pairs["reason"],
        "train_target": pairs["train_target"],
        "R": run.has_R,
        "D": run.has_D,
        "D_conditional": conditional,
        "D_conditional_source": source,
    }


def _setup_text(setup: dict[str, Any]) -> str:
    misaligned = setup["pairs_misaligned"]
    pairs = (
        f"pairs: alignment {setup['pairs_reason']}"
        if misaligned is None
        else f"pairs {'misaligned' if misaligned else 'aligned'} ({setup['pairs_reason']})"
    )
    if misaligned and setup["train_target"] == "aligned":
        pairs += ", G trained on the aligned targets"
    parts = [pairs, f"R {'on' if setup['R'] else 'off'}"]
    if setup["D"]:
        cond = setup["D_conditional"]
        state = "conditional" if cond else "unconditional" if cond is not None else "conditioning"
        parts.append(f"D {state} ({setup['D_conditional_source']})")
    else:
        parts.append("no D")
    return "; ".join(parts)


def diagnose_run(
    run_dir: str | Path | Sequence[str | Path],
    *,
    baseline: str | Path | Sequence[str | Path] | None = None,
    last_epochs: int = 3,
    evaluate: bool = True,
    data_root: str | Path | None = None,
    device: str = "cpu",
    refresh: bool = False,
    bootstrap: int = BOOTSTRAP_RESAMPLES,
) -> Diagnosis:
    """Apply the user's decision rules to a run (or several seeds of one setup).

    Args:
        run_dir: the run directory to judge, or several (seeds of the same setup); the log
            rules read the first one's logs, comparisons use all of them.
        baseline: the run(s) to weigh it against - without D (same seed and budget, ideally)
            for the verdict about D; several seeds are compared by per-seed means.
        last_epochs: how many final epochs the log means cover (fewer when the run is shorter).
        evaluate: evaluate the best EMA generators of the runs and baselines per image on the
            validation split (cached in ``RUN/diagnose/val``) for confidence intervals; False
            uses the logged validation means (single runs per side then get no interval).
        data_root: where the dataset is now, when it moved since training.
        device: where the generators run for the evaluation.
        refresh: evaluate again even when the cached evaluation matches the checkpoint.
        bootstrap: resamples of the paired bootstrap.

    Returns:
        One finding per rule (see :data:`RULES`), with notes on caveats.

    Raises:
        ValueError: a path is not a run directory, a run is also a baseline, or
            ``last_epochs < 1``.
    """
    if last_epochs < 1:
        raise ValueError(f"last_epochs must be >= 1, got {last_epochs}")
    run_paths, base_paths = _as_paths(run_dir), _as_paths(baseline)
    if not run_paths:
        raise ValueError("diagnose_run needs at least one run directory")
    overlap = {p.resolve() for p in run_paths} & {p.resolve() for p in base_paths}
    if overlap:
        raise ValueError(f"a run cannot be its own baseline: {', '.join(map(str, overlap))}")
    runs = [load_run(p) for p in run_paths]
    bases = [load_run(p) for p in base_paths]
    run = runs[0]
    notes: list[str] = []
    rows = _last_rows(run, last_epochs)
    epochs_used = [int(r.get("epoch", 0)) for r in rows]
    if not run.epochs:
        notes.append("The run has no epoch log (metrics/epochs.jsonl): most rules cannot be read.")
    elif len(rows) < last_epochs:
        notes.append(f"Only {len(rows)} epoch(s) logged; means cover all of them.")
    for group, role in ((runs, "runs"), (bases, "baselines")):
        if len(group) > 1:
            seeds = [g.cfg("seed") for g in group]
            if len(set(map(str, seeds))) < len(seeds):
                notes.append(
                    f"The {role} {_names(group)} share a seed ({', '.join(map(str, seeds))}): they "
                    "are not independent replicates, so the interval over them is too narrow."
                )
            for other in group[1:]:
                diffs = _config_differences(group[0], other)
                diffs.pop("seed", None)
                if diffs:
                    notes.append(
                        f"{other.name} differs from {group[0].name} in more than the seed: "
                        + ", ".join(diffs)
                    )
    if len(runs) > 1:
        notes.append(f"Log rules read {run.name}'s logs; comparisons use all {len(runs)} runs.")
    for r in (*runs, *bases):
        for problem in r.problems:
            notes.append(f"{r.name}: skipped while reading: {problem}")

    comparison = None
    if bases:
        comparison = _compare_sides(
            runs,
            bases,
            evaluate=evaluate,
            data_root=data_root,
            device=device,
            refresh=refresh,
            resamples=bootstrap,
        )
    misaligned = _rule_misaligned(run)
    conditional = _rule_conditional_d(run)
    unstable = _rule_unstable(runs, bases)
    unstable_names = [
        name for name, ev in unstable.evidence.items() if isinstance(ev, dict) and ev.get("jumps")
    ]
    ablation = _rule_ablation(runs, bases, comparison, unstable_names)
    d_finding = _rule_d_ineffective(run, last_epochs, ablation)
    findings = [
        misaligned,
        conditional,
        unstable,
        ablation,
        d_finding,
        _rule_blurry(run, last_epochs, d_finding, misaligned, ablation, bases),
        _rule_d_clipping(run, last_epochs),
        _rule_still_improving(run, bases[0] if bases else None, last_epochs),
    ]
    if misaligned.triggered and run.has_D:
        notes.append(
            "Misaligned pairs reach G's loss with R off: fix that (see misaligned_without_r) "
            "before drawing conclusions about D or the loss weights."
        )
    _, source = run.decision_metrics()
    test, test_source = run.final_metrics()
    diagnosis = Diagnosis(
        run=str(run.path),
        label=run.label,
        mode=run.mode,
        baseline=str(bases[0].path) if bases else None,
        epochs_used=epochs_used,
        findings=findings,
        notes=notes,
        runs=[str(r.path) for r in runs],
        baselines=[str(b.path) for b in bases],
        setup=_setup(run),
        decision_source=source,
        test_report=test if test_source == "test" else None,
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
    flat = [
        f"{k}={_fmt_any(v)}"
        for k, v in evidence.items()
        if not isinstance(v, dict) and k != "commands"
    ]
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
    if len(diagnosis.runs) > 1:
        lines.append("Seeds: " + ", ".join(Path(r).name for r in diagnosis.runs))
    lines.append(
        "Baseline: " + ", ".join(Path(b).name for b in diagnosis.baselines)
        if diagnosis.baselines
        else "Baseline: none (no ablation)"
    )
    if diagnosis.setup:
        lines.extend(
            textwrap.wrap("Setup: " + _setup_text(diagnosis.setup), width, subsequent_indent="  ")
        )
    lines.append(f"Decisions use validation metrics ({diagnosis.decision_source}), never test.")
    if diagnosis.test_report:
        shown = ", ".join(
            f"{label} {_fmt(v)}"
            for key, label in (
                ("psnr_mask", "lung PSNR"),
                ("hfen_mask", "lung HFEN"),
                ("gmsd_mask", "lung GMSD"),
            )
            if (v := finite_or_none(diagnosis.test_report.get(key))) is not None
        )
        if shown:
            lines.append(f"Test metrics, for reference only: {shown}.")
    for note in diagnosis.notes:
        lines.extend(textwrap.wrap(f"Note: {note}", width, subsequent_indent="      "))
    for f in diagnosis.findings:
        mark = "[!]" if f.triggered else "[ok]" if f.applicable else "[n/a]"
        lines.append("")
        lines.append(f"{mark} {f.title} ({f.rule})")
        lines.extend(
            textwrap.wrap(
                f.verdict,
                width,
                initial_indent="    ",
                subsequent_indent="    ",
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
        # commands unwrapped, so that they can be copied whole
        lines.extend(f"    $ {command}" for command in f.evidence.get("commands", []))
        if evidence and f.evidence:
            lines.extend(_evidence_lines(f.evidence, "      ", width))
    triggered = diagnosis.triggered
    lines.append("")
    lines.append(
        "Triggered: " + ", ".join(f.rule for f in triggered) if triggered else "Triggered: none"
    )
    return "\n".join(lines)
