"""Moving batches to the training device and mixed-precision contexts, one of each."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["autocast", "batch_tensor"]


def autocast(device_type: str, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device_type``, or a no-op context when ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def batch_tensor(
    batch: dict,
    key: str,
    device: torch.device,
    memory_format: torch.memory_format = torch.preserve_format,
) -> torch.Tensor:
    """``batch[key]`` on ``device`` (copied asynchronously from pinned memory) in
    ``memory_format`` (e.g. ``torch.channels_last``)."""
    return batch[key].to(device, non_blocking=True).contiguous(memory_format=memory_format)
