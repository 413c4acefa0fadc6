"""The identity baseline: the input itself taken as the prediction.

Every number medi2i reports should be read against this floor: a model that does nothing scores
exactly these values. The reference is the aligned target when the dataset has one (the truth
for misaligned pairs), else the target.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medi2i.metrics.compute import compute_metrics

log = logging.getLogger(__name__)


def reference_key(batch: dict) -> str:
    """``aligned_target`` when the batch has it, else ``target``."""
    return "aligned_target" if "aligned_target" in batch else "target"


@torch.no_grad()
def identity_baseline(
    dataset: Dataset, *, data_range: float, batch_size: int = 8
) -> tuple[dict[str, float], str]:
    """Mean metrics of input-as-prediction over a dataset.

    Args:
        dataset: yields dicts with ``input``, ``target``, ``mask`` (and ``aligned_target``).
        data_range: the width of the images' value range (1 for [0, 1], 2 for [-1, 1]).
        batch_size: images per metric batch.

    Returns:
        (metric name -> mean over images ignoring NaN, name of the reference used).
    """
    values: dict[str, list[np.ndarray]] = defaultdict(list)
    ref = "target"
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        ref = reference_key(batch)
        metrics = compute_metrics(
            batch["input"],
            batch[ref],
            data_range=data_range,
            mask=batch["mask"],
            input=batch["input"],
        )
        for name, value in metrics.items():
            values[name].append(value.detach().cpu().double().numpy())
    means = {name: float(np.nanmean(np.concatenate(v))) for name, v in values.items()}
    log.info("identity baseline vs %s over %d images: %s", ref, len(dataset), means)
    return means, ref
