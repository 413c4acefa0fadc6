"""Argument checks, numpy support and the precision guard shared by every metric.

Each public metric is written once, for (N, C, H, W) tensors; :func:`metric_function` lets it take
numpy arrays too and runs it with autocast disabled (float32 throughout).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import numbers
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])


def from_numpy(array: np.ndarray) -> Tensor:
    """(H, W) / (N, H, W) / (N, C, H, W) array -> (N, C, H, W) CPU tensor (bool or float32)."""
    if array.ndim == 2:
        array = array[None, None]
    elif array.ndim == 3:
        array = array[:, None]
    elif array.ndim != 4:
        raise ValueError(
            f"expected a numpy array of shape (H, W), (N, H, W) or (N, C, H, W), got {array.shape}"
        )
    dtype = np.bool_ if array.dtype == np.bool_ else np.float32
    return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))


def to_numpy(value: Any, ndim: int) -> Any:
    """Convert a metric result back for a caller that passed numpy arrays of ``ndim`` dims."""
    if isinstance(value, dict):
        return {key: to_numpy(item, ndim) for key, item in value.items()}
    array = value.detach().cpu().numpy().astype(np.float64)
    if array.ndim == 1:  # per-image values
        return float(array[0]) if ndim == 2 else array
    if ndim == 2:  # a map of one single-channel image
        return array[0, 0]
    return array[:, 0] if ndim == 3 else array


def metric_function(fn: _F) -> _F:
    """Let a torch metric take numpy arrays, and run it with autocast disabled.

    numpy arguments are converted with :func:`from_numpy` and the result converted back with
    :func:`to_numpy`; the metric itself is written once, for tensors.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        first = args[0] if args else kwargs.get("pred")
        numpy_ndim = first.ndim if isinstance(first, np.ndarray) else None
        if numpy_ndim is not None:
            args = tuple(from_numpy(a) if isinstance(a, np.ndarray) else a for a in args)
            kwargs = {
                k: from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()
            }
            first = args[0] if args else kwargs.get("pred")
        device_type = first.device.type if isinstance(first, Tensor) else "cpu"
        no_autocast = (
            torch.autocast(device_type=device_type, enabled=False)
            if torch.amp.is_autocast_available(device_type)
            else contextlib.nullcontext()
        )
        with no_autocast:
            result = fn(*args, **kwargs)
        return result if numpy_ndim is None else to_numpy(result, numpy_ndim)

    return wrapper  # type: ignore[return-value]


def check_pair(pred: Any, target: Any, name: str, min_size: int = 1) -> tuple[Tensor, Tensor]:
    """Validate a (pred, target) pair and return both as float32 tensors."""
    for arg, value in (("pred", pred), ("target", target)):
        if not isinstance(value, Tensor):
            raise TypeError(
                f"{name}: {arg} must be a torch.Tensor or np.ndarray, got {type(value).__name__}"
            )
    if pred.ndim != 4:
        raise ValueError(f"{name}: expected pred of shape (N, C, H, W), got {tuple(pred.shape)}")
    if target.shape != pred.shape:
        raise ValueError(
            f"{name}: expected target of shape {tuple(pred.shape)} (same as pred), "
            f"got {tuple(target.shape)}"
        )
    height, width = pred.shape[-2:]
    if min(height, width) < min_size:
        raise ValueError(
            f"{name}: expected images of at least {min_size}x{min_size} pixels, "
            f"got {height}x{width}"
        )
    return pred.float(), target.float()


def check_data_range(data_range: Any, name: str) -> float:
    """Return ``data_range`` as a positive finite float."""
    if isinstance(data_range, bool) or not isinstance(data_range, numbers.Real):
        raise TypeError(
            f"{name}: data_range must be a real number (e.g. 1.0 or 255), "
            f"got {type(data_range).__name__}"
        )
    value = float(data_range)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: data_range must be positive and finite, got {value}")
    return value


def check_mask(mask: Any, pred: Tensor, name: str) -> Tensor | None:
    """Validate a mask against ``pred`` and binarise it (> 0.5) to bool."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(
            f"{name}: mask must be a torch.Tensor or np.ndarray, got {type(mask).__name__}"
        )
    n, c, h, w = pred.shape
    if tuple(mask.shape) not in {(n, 1, h, w), (n, c, h, w)}:
        raise ValueError(
            f"{name}: expected mask of shape {(n, 1, h, w)} or {(n, c, h, w)}, "
            f"got {tuple(mask.shape)}"
        )
    binary = mask if mask.dtype == torch.bool else mask.float() > 0.5
    log_empty(binary, name, "mask")
    return binary


def check_input(image: Any, pred: Tensor, name: str) -> Tensor:
    """Validate the network input (for BSR) against ``pred``."""
    if not isinstance(image, Tensor):
        raise TypeError(
            f"{name}: input must be a torch.Tensor or np.ndarray, got {type(image).__name__}"
        )
    if image.shape != pred.shape:
        raise ValueError(
            f"{name}: expected input of shape {tuple(pred.shape)} (same as pred), "
            f"got {tuple(image.shape)}"
        )
    return image.float()


def log_empty(mask: Tensor | None, name: str, what: str) -> None:
    """Log (DEBUG only: it syncs) how many images have an empty ``mask``."""
    if mask is None or not logger.isEnabledFor(logging.DEBUG):
        return
    empty = int((~mask.flatten(1).any(1)).sum())
    if empty:
        logger.debug(
            "%s: %s empty for %d of %d image(s); their value is NaN",
            name,
            what,
            empty,
            mask.shape[0],
        )
