"""Evaluate a trained generator on a split, always beside the identity baseline.

``medi2i evaluate`` calls :func:`evaluate_split`. The split is read with the run's data config
and normalised with the checkpoint's normaliser, and every image is scored by
:func:`medi2i.inference.scoring.score_split` - the one scoring path of medi2i, also used by the
end-of-run test of training - against the **aligned target** when the dataset has one (the
truth for misaligned pairs), else the target:

* every metric of :func:`medi2i.metrics.compute_metrics` - PSNR, SSIM, MS-SSIM, MAE,
  BSR, the published BSR (``bsr_lit``), HFEN, GMSD and the sharpness ratio - on the whole image
  and inside the mask (``<name>_mask``; MS-SSIM and ``bsr_lit`` whole image only), in the
  normalised range (``data_range`` = the width of ``output_range``);
* the no-reference ``blur_effect`` of the prediction (0 sharp .. 1 blurred),

for the **model** (G through :meth:`Predictor.predict_normalised`, so TTA and tiling apply)
and for the **identity** baseline (the input taken as the prediction), so no number is read
without its floor. Outputs in ``out_dir``:

* ``metrics.csv``: one row per image and method;
* ``summary.json``: per method and metric the mean, std, median and a 95% percentile-bootstrap
  confidence interval of the mean, plus the paired model - identity difference with its own
  interval; the reference used, checkpoint, weights, TTA/tiling settings, data source;
* ``worst_cases.png``: the ``worst_k`` images with the lowest model PSNR inside the mask (lung
  PSNR), one row each: input | prediction | reference | |error| (one error scale for all rows).

:func:`format_table` renders a summary as a text table.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medi2i.config import Config
from medi2i.data.builders import build_dataset
from medi2i.inference.loading import LoadedGenerator
from medi2i.inference.predictor import Predictor
from medi2i.inference.scoring import METHODS, METRIC_COLUMNS, WORST_BY, score_split
from medi2i.utils.atomic import atomic_path, atomic_write_text
from medi2i.utils.formatting import significant
from medi2i.utils.jsonsafe import json_safe
from medi2i.viz import make_grid, save_rgb_png

log = logging.getLogger(__name__)

__all__ = [
    "HIGHER_IS_BETTER",
    "bootstrap_ci",
    "evaluate_split",
    "format_table",
]

HIGHER_IS_BETTER = {
    "psnr": True,
    "ssim": True,
    "ms_ssim": True,
    "mae": False,
    "bsr": True,
    "bsr_lit": True,
    "hfen": False,
    "gmsd": False,
    "sharpness": None,  # best near 1
    "blur_effect": False,
}
"""Direction of each metric (``None``: best close to 1); ``_mask`` variants alike."""

CONFIDENCE = 0.95


def _direction(metric: str) -> str:
    better = HIGHER_IS_BETTER.get(metric.removesuffix("_mask"))
    return {True: "higher", False: "lower", None: "~1"}[better]


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------


def bootstrap_ci(
    values: np.ndarray,
    *,
    resamples: int = 1000,
    confidence: float = CONFIDENCE,
    rng: np.random.Generator | None = None,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean.

    Written with numpy rather than :func:`scipy.stats.bootstrap` so that the result does not
    depend on the scipy version (its random-state argument and default method changed) and a
    sample of identical values gives a zero-width interval instead of a warning.

    Args:
        values: finite per-image values (1D).
        resamples: number of bootstrap resamples.
        confidence: the interval's coverage.
        rng: random generator (seeded by the caller for reproducibility).

    Returns:
        ``(low, high)``; both equal the mean for one value. The interval always contains the
        sample mean (a float rounding of the resampled means could otherwise put it a hair
        outside).

    Raises:
        ValueError: for an empty sample or ``resamples < 1``.
    """
    data = np.asarray(values, dtype=np.float64).ravel()
    if data.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = rng if rng is not None else np.random.default_rng(0)
    mean = float(data.mean())
    means = np.empty(resamples, dtype=np.float64)
    chunk = max(1, 2_000_000 // data.size)  # bound the (chunk, n) index matrix
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, data.size, size=(stop - start, data.size))
        means[start:stop] = data[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return min(float(low), mean), max(float(high), mean)


def _describe(values: list[float], resamples: int, rng: np.random.Generator) -> dict[str, Any]:
    """Mean, std, median and bootstrap CI over the finite values (count of the others too)."""
    data = np.asarray(values, dtype=np.float64)
    finite = data[np.isfinite(data)]
    stats: dict[str, Any] = {"n": int(finite.size), "n_not_finite": int(data.size - finite.size)}
    if finite.size == 0:
        stats.update(mean=None, std=None, median=None, ci_low=None, ci_high=None)
        return stats
    low, high = bootstrap_ci(finite, resamples=resamples, rng=rng)
    stats.update(
        mean=float(finite.mean()),
        std=float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
        median=float(np.median(finite)),
        ci_low=low,
        ci_high=high,
    )
    return stats


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------


def _unit(normalizer, x: torch.Tensor) -> np.ndarray:
    """A (1, 1, H, W) network-range tensor as an (H, W) array in [0, 1] for display."""
    return np.clip(normalizer.output_to_unit(x[0, 0].double().cpu().numpy()), 0.0, 1.0)


def _eval_config(cfg: Config, data_root: str | Path | None, manifest: str | Path | None) -> Config:
    cfg = cfg.model_copy(deep=True)
    if data_root is not None:
        cfg.data.root = str(data_root)
        cfg.data.manifest = None if manifest is None else str(manifest)
    elif manifest is not None:
        cfg.data.manifest = str(manifest)
    return cfg


def evaluate_split(
    predictor: Predictor | LoadedGenerator,
    *,
    out_dir: str | Path,
    split: str = "test",
    data_root: str | Path | None = None,
    manifest: str | Path | None = None,
    config: Config | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    worst_k: int = 6,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate the model and the identity baseline on one split and write the reports.

    Args:
        predictor: the model with its TTA/tiling settings (a :class:`LoadedGenerator` is
            wrapped in a plain :class:`Predictor`).
        out_dir: folder for ``metrics.csv``, ``summary.json`` and ``worst_cases.png``.
        split: ``train``, ``val`` or ``test``.
        data_root: dataset folder replacing the config's ``data.root`` (the config's manifest
            is then not used unless ``manifest`` is given).
        manifest: CSV manifest replacing the config's ``data.manifest``.
        config: the config whose ``data`` section describes the dataset; default the
            training config stored in the checkpoint.
        bootstrap: bootstrap resamples for the confidence intervals.
        seed: seed of the bootstrap.
        worst_k: images shown in ``worst_cases.png`` (0: no figure).
        progress: show a progress bar.

    Returns:
        The summary (as written to ``summary.json``).

    Raises:
        medi2i.data.pairs.DatasetError: the split cannot be read.
        ValueError: bad arguments, or the model's output is not finite on some image.
    """
    if not isinstance(predictor, Predictor):
        predictor = Predictor(predictor)
    if bootstrap < 1:
        raise ValueError(f"bootstrap must be >= 1, got {bootstrap}")
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = _eval_config(config or predictor.loaded.config, data_root, manifest)
    normalizer = predictor.normalizer
    dataset = build_dataset(cfg, split, normalizer=normalizer, train=False)
    data_range = float(normalizer.out_hi - normalizer.out_lo)
    has_mask = any(rec.mask is not None for rec in dataset.records)

    scores = score_split(
        predictor,
        dataset,
        data_range=data_range,
        split=split,
        worst_k=worst_k,
        progress=progress,
    )
    rows, worst, reference = scores.rows, scores.worst, scores.reference
    _write_csv(out / "metrics.csv", rows)
    rng = np.random.default_rng(seed)
    methods: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method]
        methods[method] = {
            col: _describe([r.get(col, math.nan) for r in mine], bootstrap, rng)
            for col in METRIC_COLUMNS
            if any(col in r for r in mine)
        }
    model_rows = [r for r in rows if r["method"] == "model"]
    ident_rows = [r for r in rows if r["method"] == "identity"]
    delta = {
        col: _describe([m[col] - i[col] for m, i in zip(model_rows, ident_rows)], bootstrap, rng)
        for col in methods["model"]
    }
    summary: dict[str, Any] = {
        "split": split,
        "images": len(dataset),
        "reference": reference,
        "mask": "mask files" if has_mask else "none (whole image)",
        "data": {"root": cfg.data.root, "manifest": cfg.data.manifest},
        "units": f"normalised {list(normalizer.cfg.output_range)}, data_range {data_range:g}",
        **predictor.describe(),
        "bootstrap": {"resamples": bootstrap, "confidence": CONFIDENCE, "seed": seed},
        "methods": methods,
        "model_minus_identity": delta,
        "worst_cases": [{"name": name, WORST_BY: key} for key, name, _ in worst],
        "seconds": {
            "total": time.perf_counter() - start,
            "predict_per_image": scores.predict_seconds / max(1, len(dataset)),
        },
    }
    if worst:
        _worst_cases_png(out / "worst_cases.png", worst, normalizer, reference)
    atomic_write_text(out / "summary.json", json.dumps(json_safe(summary), indent=2) + "\n")
    log.info(
        "evaluated %d %s images against %s in %.1f s -> %s",
        len(dataset),
        split,
        reference,
        summary["seconds"]["total"],
        out,
    )
    return summary


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    present = [c for c in METRIC_COLUMNS if any(c in r for r in rows)]
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["name", "method", *present], extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (significant(v, 6) if isinstance(v, float) else v) for k, v in row.items()}
            )


def _worst_cases_png(
    path: Path, worst: list[tuple[float, str, dict[str, torch.Tensor]]], normalizer, reference: str
) -> None:
    errors = [
        np.abs(_unit(normalizer, w["pred"]) - _unit(normalizer, w["ref"])) for _, _, w in worst
    ]
    # one scale for every row (the 99.5th percentile of all shown errors), so rows compare
    scale = float(np.percentile(np.concatenate([e.ravel() for e in errors]), 99.5)) or 1.0
    rows = [
        [
            _unit(normalizer, w["input"]),
            _unit(normalizer, w["pred"]),
            _unit(normalizer, w["ref"]),
            np.clip(err / scale, 0.0, 1.0),
        ]
        for (_, _, w), err in zip(worst, errors)
    ]
    labels = ["input", "prediction", f"reference ({reference})", f"|error| 0-{scale:.3g}"]
    save_rgb_png(path, make_grid(rows, labels=labels))


# --------------------------------------------------------------------------------------------
# table
# --------------------------------------------------------------------------------------------


def _cell(stats: dict[str, Any] | None, signed: bool = False) -> str:
    if not stats or stats.get("mean") is None:
        return "n/a"
    mean = significant(stats["mean"], 4, signed=signed)
    return f"{mean} [{significant(stats['ci_low'], 4)}, {significant(stats['ci_high'], 4)}]"


def format_table(summary: dict[str, Any]) -> str:
    """Render an :func:`evaluate_split` summary as a text table (mean [95% CI]).

    Args:
        summary: the returned (or ``summary.json``-loaded) summary.

    Returns:
        A multi-line string: a header line, then one line per metric with the model, the
        identity baseline and their paired difference.
    """
    methods = summary["methods"]
    delta = summary.get("model_minus_identity", {})
    header = (
        f"{summary['split']} split, {summary['images']} images, reference "
        f"{summary['reference']}, mask {summary.get('mask', '?')}; {summary.get('weights')} "
        f"weights (epoch {summary.get('epoch')}), TTA {', '.join(summary.get('tta') or [])}"
        + (f", tile {summary['tile']}" if summary.get("tile") else "")
    )
    table = [("metric", "better", "model", "identity", "model - identity")]
    for col in METRIC_COLUMNS:
        if col not in methods.get("model", {}):
            continue
        table.append(
            (
                col,
                _direction(col),
                _cell(methods["model"].get(col)),
                _cell(methods.get("identity", {}).get(col)),
                _cell(delta.get(col), signed=True),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [header]
    for n, row in enumerate(table):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * width for width in widths))
    lines.append("mean [95% bootstrap CI]; units: " + str(summary.get("units", "")))
    return "\n".join(lines)
