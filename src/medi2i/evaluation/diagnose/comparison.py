"""Run side vs baseline side on the validation split, and the comparison in words.

:func:`_compare_sides` evaluates every run per image (:func:`evaluate_val_per_image`, looked up
here, where a test replaces it) for paired or per-seed intervals, and falls back to the logged
validation means when that is switched off or fails; :func:`_outcome` sums the verdicts up as a
case key for the ``ablation`` rule. Caveats are ``{"case": ...}`` dicts that
:mod:`~medi2i.evaluation.diagnose.wording` words.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medi2i.evaluation.diagnose.evidence import _metric
from medi2i.evaluation.diagnose.stats import MetricComparison, _by_seeds, _paired
from medi2i.evaluation.diagnose.thresholds import DECISION_METRICS
from medi2i.evaluation.diagnose.valeval import PerImageMetrics, evaluate_val_per_image
from medi2i.evaluation.runs import RunRecord

log = logging.getLogger(__package__)  # one logger for the package: medi2i.evaluation.diagnose


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
        ``{"source", "metrics" (metric -> MetricComparison), "caveats" (``{"case": ...}``
        dicts), "evaluated"}``.
    """
    caveats: list[dict[str, Any]] = []
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
            caveats.append({"case": "validation_sets_differ", "common": len(names)})
        if len({e.reference for e in evals}) > 1:
            references = sorted({e.reference for e in evals})
            caveats.append({"case": "references_differ", "references": references})
        if len({e.units for e in evals}) > 1:
            caveats.append({"case": "units_differ"})
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


def _outcome(metrics: dict[str, MetricComparison]) -> str:
    """The comparison's verdicts summed up: ``none`` (no metric), ``no_ci``, ``adds`` (only
    better), ``mixed``, ``worse`` or ``no_difference`` (within noise)."""
    verdicts = [c.verdict for c in metrics.values()]
    if not verdicts:
        return "none"
    if all(v == "no CI" for v in verdicts):
        return "no_ci"
    better, worse = verdicts.count("better"), verdicts.count("worse")
    if better and not worse:
        return "adds"
    if better and worse:
        return "mixed"
    if worse:
        return "worse"
    return "no_difference"
