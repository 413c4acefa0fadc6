"""Small-sample statistics for the benchmarks' reports (pure functions)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95


def _finite(values) -> np.ndarray:
    data = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return data[np.isfinite(data)]


def t_interval(values, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean and two-sided t confidence interval over the finite values.

    Returns:
        ``n``, ``mean``, ``std`` (ddof 1), ``ci_low``, ``ci_high``; the interval and std are
        ``None`` below two values, everything but ``n`` is ``None`` with none.
    """
    data = _finite(values)
    n = int(data.size)
    out: dict[str, Any] = {"n": n, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    if n == 0:
        return out
    mean = float(data.mean())
    out["mean"] = mean
    if n >= 2:
        std = float(data.std(ddof=1))
        half = float(sps.t.ppf(0.5 + confidence / 2.0, n - 1)) * std / math.sqrt(n)
        out.update(std=std, ci_low=mean - half, ci_high=mean + half)
    return out


def ci_excludes_zero(stat: dict[str, Any]) -> bool:
    """Whether a :func:`t_interval` result has an interval that lies on one side of zero."""
    lo, hi = stat.get("ci_low"), stat.get("ci_high")
    return lo is not None and hi is not None and (lo > 0 or hi < 0)


def relative_pct(a: float | None, b: float | None) -> float | None:
    """``100 * (a - b) / b`` (None when undefined)."""
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or b == 0:
        return None
    return 100.0 * (a - b) / b


def ratio_interval(numerators, denominators, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Ratio of two paired means, ``mean(a) / mean(b)``, with Fieller's confidence interval.

    A share such as "the part of a gap that a method closes" is a ratio of two differences
    measured on the same seeds; the ratio's sampling distribution is skewed and unbounded
    when the denominator may be near zero, so a symmetric interval misleads. Fieller's
    interval is the set of ratios ``r`` for which the paired t-test of ``a - r b`` does not
    reject zero: ``(mean(a) - r mean(b))^2 <= t^2 var(a - r b) / n``, a quadratic inequality
    in ``r``. It is a bounded interval only when ``mean(b)`` itself differs from zero at the
    same confidence; otherwise the data cannot bound the ratio and the interval is reported
    as unbounded (``None`` ends).

    Args:
        numerators, denominators: paired values (pairs with a missing or non-finite member
            are left out).

    Returns:
        ``n``, ``value`` (``None`` when ``mean(b)`` is 0 or no pair is left), ``ci_low``,
        ``ci_high`` and ``bounded``; the interval needs at least two pairs.
    """
    pairs = [
        (float(x), float(y))
        for x, y in zip(numerators, denominators)
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)
    ]
    n = len(pairs)
    out: dict[str, Any] = {"n": n, "value": None, "ci_low": None, "ci_high": None}
    out["bounded"] = False
    if n == 0:
        return out
    a, b = (np.asarray(column) for column in zip(*pairs))
    mean_a, mean_b = float(a.mean()), float(b.mean())
    if mean_b != 0.0:
        out["value"] = mean_a / mean_b
    if n < 2:
        return out
    cov = np.cov(np.stack([a, b]), ddof=1)
    q = float(sps.t.ppf(0.5 + confidence / 2.0, n - 1)) ** 2 / n
    quad = mean_b**2 - q * float(cov[1, 1])
    half = mean_a * mean_b - q * float(cov[0, 1])
    const = mean_a**2 - q * float(cov[0, 0])
    if quad <= 0.0:
        return out
    root = math.sqrt(max(half**2 - quad * const, 0.0))
    out.update(
        ci_low=float((half - root) / quad), ci_high=float((half + root) / quad), bounded=True
    )
    return out
