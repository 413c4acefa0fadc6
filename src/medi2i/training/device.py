"""Moving batches to the training device."""

from __future__ import annotations

import torch

__all__ = ["batch_tensor"]


def batch_tensor(
    batch: dict,
    key: str,
    device: torch.device,
    memory_format: torch.memory_format = torch.preserve_format,
) -> torch.Tensor:
    """``batch[key]`` on ``device`` (copied asynchronously from pinned memory) in
    ``memory_format`` (e.g. ``torch.channels_last``)."""
    return batch[key].to(device, non_blocking=True).contiguous(memory_format=memory_format)
