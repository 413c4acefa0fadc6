"""Intervals and verdicts: run minus baseline with its
:data:`~medi2i.evaluation.diagnose.thresholds.CONFIDENCE` interval - a paired bootstrap over
validation images (one run per side) or a Welch t-interval over per-seed means (several runs
per side) - called ``better`` or ``worse`` only when the interval excludes zero."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medi2i.evaluation.diagnose.evidence import _metric
from medi2i.evaluation.diagnose.thresholds import CONFIDENCE, DECISION_METRICS
from medi2i.evaluation.diagnose.valeval import PerImageMetrics


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
