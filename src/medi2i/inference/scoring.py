"""The numbers of a generator on a split: one function for every table medi2i prints.

:func:`score_split` runs G through a :class:`~medi2i.inference.predictor.Predictor` (so the
same TTA and tiling apply as in ``medi2i predict``) on every image of a dataset and computes, per
image, every metric of :func:`medi2i.metrics.compute_metrics` plus the no-reference
``blur_effect``, for the **model** and for the **identity** baseline (the input taken as the
prediction), against the **aligned target** when the dataset has one (the truth for misaligned
pairs), else the target. The end-of-run test of a training run, ``medi2i evaluate`` (which adds
bootstrap intervals and the reports) and the ablation benchmark all score through it, so every
table shows the same metrics computed the same way.

Rules: a prediction with a NaN or infinite pixel stops the scoring with an error naming the
images (broken weights must not produce a table); metrics are computed in the normalised range
(``data_range`` = the width of the normaliser's ``output_range``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medi2i.inference.predictor import Predictor
from medi2i.metrics import blur_effect, compute_metrics, reference_key
from medi2i.utils.progress import Progress

__all__ = ["METHODS", "METRIC_COLUMNS", "WORST_BY", "SplitScores", "score_split"]

METHODS = ("model", "identity")
"""Rows of every image: the model's prediction and the input taken as the prediction."""

METRIC_COLUMNS = (
    "psnr",
    "psnr_mask",
    "ssim",
    "ssim_mask",
    "ms_ssim",
    "mae",
    "mae_mask",
    "bsr",
    "bsr_mask",
    "bsr_lit",
    "hfen",
    "hfen_mask",
    "gmsd",
    "gmsd_mask",
    "sharpness",
    "sharpness_mask",
    "blur_effect",
)
"""Every per-image number, in table order (``_mask``: inside the mask)."""

WORST_BY = "psnr_mask"
"""The worst cases are the images with the lowest model value of this metric (lung PSNR)."""


@dataclass
class SplitScores:
    """Per-image numbers of the model and the identity baseline on one split.

    Attributes:
        rows: one dict per image and method: ``name``, ``method`` and every metric.
        reference: what the outputs were compared with (``aligned_target`` or ``target``).
        images: images scored.
        predict_seconds: time spent in G (all images).
        worst: up to ``worst_k`` ``(score, name, {"input", "pred", "ref"})`` with the lowest
            model :data:`WORST_BY`, lowest first.
    """

    rows: list[dict[str, Any]]
    reference: str
    images: int
    predict_seconds: float
    worst: list[tuple[float, str, dict[str, torch.Tensor]]] = field(default_factory=list)

    def values(self, method: str, metric: str) -> list[float]:
        """One value per image (NaN where the metric is undefined for an image)."""
        return [row.get(metric, math.nan) for row in self.rows if row["method"] == method]

    def means(self, method: str) -> dict[str, float]:
        """Mean over images (ignoring NaN) of every metric present, for ``method``."""
        out = {}
        for metric in METRIC_COLUMNS:
            values = np.asarray(self.values(method, metric), dtype=np.float64)
            if values.size and np.isfinite(values).any():
                out[metric] = float(np.nanmean(values))
            elif any(metric in row for row in self.rows):
                out[metric] = math.nan
        return out


def _floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    return {key: float(value[0]) for key, value in metrics.items()}


def score_split(
    predictor: Predictor,
    dataset: Dataset,
    *,
    data_range: float,
    split: str = "test",
    worst_k: int = 0,
    progress: bool = False,
) -> SplitScores:
    """Score the model and the identity baseline on every image of ``dataset``.

    Args:
        predictor: G with its normaliser, TTA and tiling settings.
        dataset: yields dicts with ``name``, ``input``, ``target``, ``mask`` (and
            ``aligned_target``), already normalised with ``predictor.normalizer``.
        data_range: width of the normalised range.
        worst_k: keep the images of the ``worst_k`` lowest model :data:`WORST_BY` (0: none).
        split: the split's name (for the progress bar and messages).
        progress: show a progress bar.

    Returns:
        The per-image numbers.

    Raises:
        ValueError: the model's output is not finite on some image (every such image named).
    """
    rows: list[dict[str, Any]] = []
    worst: list[tuple[float, str, dict[str, torch.Tensor]]] = []
    reference = "target"
    predict_seconds = 0.0
    not_finite: list[str] = []
    with Progress(len(dataset), desc=f"evaluate {split}", enabled=progress) as bar:
        for index in bar.iterate(range(len(dataset))):
            item = dataset[index]
            reference = reference_key(item)
            x = item["input"][None]
            ref = item[reference][None]
            mask = item["mask"][None]
            tic = time.perf_counter()
            pred = predictor.predict_normalised(x).cpu()
            predict_seconds += time.perf_counter() - tic
            if not bool(torch.isfinite(pred).all()):
                not_finite.append(str(item["name"]))
                continue
            for method, image in (("model", pred), ("identity", x)):
                with torch.no_grad():
                    values = _floats(
                        compute_metrics(image, ref, data_range=data_range, mask=mask, input=x)
                    )
                values["blur_effect"] = float(blur_effect(image[0, 0].numpy()))
                rows.append({"name": item["name"], "method": method, **values})
            if worst_k > 0:
                score = rows[-2][WORST_BY]
                key = score if math.isfinite(score) else math.inf
                worst.append((key, item["name"], {"input": x, "pred": pred, "ref": ref}))
                worst.sort(key=lambda entry: entry[0])
                del worst[worst_k:]
    if not_finite:
        shown = ", ".join(not_finite[:5]) + (" ..." if len(not_finite) > 5 else "")
        raise ValueError(
            f"the model's output contains NaN or infinite values on {len(not_finite)} of "
            f"{len(dataset)} {split} images ({shown}): the weights are broken, most likely by "
            "a training run that diverged (its summary.json counts the skipped non-finite "
            "steps); no metrics were written"
        )
    return SplitScores(rows, reference, len(dataset), predict_seconds, worst)
