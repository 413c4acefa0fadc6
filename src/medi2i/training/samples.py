"""The preview grid of validation samples (:func:`sample_grid`).

One row per sample: ``input | output | target | |error| | lung overlay``, as an RGB uint8 image
that :meth:`medi2i.training.run_logger.RunLogger.log_images` writes to TensorBoard and
``samples/epoch_XXXX.png``.

Rules: the inputs are not changed (copied to the host as float32); the error column is
``|output - target|`` relative to the value range times :data:`_ERROR_GAIN`, clipped.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from medi2i.viz import make_grid, overlay_mask, to_uint8

__all__ = ["sample_grid"]

_ERROR_GAIN = 4.0
"""|output − target| is multiplied by this (after normalising to [0, 1]) to make it visible."""


def _check_images(t: object, name: str) -> tuple[int, ...]:
    if not isinstance(t, Tensor) or t.ndim != 4 or t.shape[1] != 1:
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"sample_grid: {name} must be a (N, 1, H, W) tensor, got {shape}")
    return tuple(t.shape)


def _to_numpy_images(t: Tensor, n: int) -> np.ndarray:
    """First ``n`` images of (N, 1, H, W) -> float32 numpy (n, H, W) (bf16/fp16/bool safe)."""
    return t[:n, 0].detach().to(device="cpu", dtype=torch.float32).numpy()


def sample_grid(
    input: Tensor,
    output: Tensor,
    target: Tensor,
    mask: Tensor | None,
    *,
    value_range: tuple[float, float] = (0.0, 1.0),
    max_rows: int = 4,
) -> np.ndarray:
    """Preview grid, one row per sample: input | output | target | |error| | lung overlay.

    The error column shows ``|output − target|`` relative to the value range, multiplied by
    4 and clipped (black = perfect). The last column tints the mask (``> 0.5`` = inside) over the
    output; it is left out when ``mask`` is None.

    Args:
        input: network input, (N, 1, H, W), any device/dtype.
        output: G's output, same shape.
        target: the target, same shape.
        mask: lung / ROI mask (N, 1, H, W) (bool or float), or None.
        value_range: ``(lo, hi)`` of the images (``(0, 1)`` or ``(-1, 1)``).
        max_rows: at most this many samples (the first ones).

    Returns:
        ``(H_grid, W_grid, 3)`` uint8 RGB image with column labels.

    Raises:
        ValueError: on shapes other than (N, 1, H, W), mismatched shapes, ``max_rows < 1`` or an
            empty value range.
    """
    lo, hi = (float(v) for v in value_range)
    if hi == lo:
        raise ValueError(f"sample_grid: value_range must not be empty, got {value_range}")
    if max_rows < 1:
        raise ValueError(f"sample_grid: max_rows must be >= 1, got {max_rows}")
    shape = _check_images(input, "input")
    for name, t in (("output", output), ("target", target), ("mask", mask)):
        if t is not None and _check_images(t, name) != shape:
            raise ValueError(
                f"sample_grid: {name} has shape {tuple(t.shape)}, input has {shape}; "
                "expected the same (N, 1, H, W)"
            )
    if shape[0] == 0:
        raise ValueError("sample_grid: no samples (N = 0)")
    n = min(shape[0], max_rows)
    x, y_hat, y = (_to_numpy_images(t, n) for t in (input, output, target))
    m = _to_numpy_images(mask, n) if mask is not None else None

    labels = ["input", "output", "target", f"|error| x{_ERROR_GAIN:g}"]
    if m is not None:
        labels.append("lung")
    rows = []
    for i in range(n):
        output_u8 = to_uint8(y_hat[i], lo, hi)
        error = np.abs(y_hat[i] - y[i]) / abs(hi - lo) * _ERROR_GAIN
        row = [to_uint8(x[i], lo, hi), output_u8, to_uint8(y[i], lo, hi), to_uint8(error)]
        if m is not None:
            row.append(overlay_mask(output_u8, m[i] > 0.5))
        rows.append(row)
    return make_grid(rows, labels=labels)
