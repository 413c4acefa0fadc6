"""Mixed precision: the autocast context shared by training and inference, and which
reduced-precision types a device runs natively."""

from __future__ import annotations

import contextlib
import logging

import torch

__all__ = ["PRECISIONS", "autocast", "check_precision"]

log = logging.getLogger(__name__)

PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
"""The precisions the networks run in: ``fp32`` (exact), or autocast to ``bf16`` / ``fp16``
(convolutions and matrix products in the reduced type, normalisations, losses and G's output
in float32). Training calls fp32 ``off`` (``train.amp``)."""


def autocast(device_type: str, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device_type``, or a no-op context when ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def _cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # an old build without the query: assume not
        return False


def check_precision(
    precision: str, device: torch.device, setting: str = "precision"
) -> torch.dtype | None:
    """The autocast type of a precision on ``device`` (``None`` for fp32).

    Args:
        precision: a key of :data:`PRECISIONS`.
        device: where the networks run.
        setting: the option's name in messages (``precision``, ``train.amp``).

    Raises:
        ValueError: an unknown precision, or ``fp16`` on the CPU (PyTorch's CPU kernels run
            half precision far slower than float32, and it gains nothing there).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"{setting} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError(f"{setting} fp16 needs a GPU; on the CPU use bf16 or full precision")
    if precision == "bf16" and device.type == "cpu" and not _cpu_has_native_bf16():
        log.warning(
            "%s bf16: this CPU has no native bfloat16 instructions (AVX512-BF16 or AMX), so "
            "bf16 runs emulated, slower than fp32",
            setting,
        )
    return PRECISIONS[precision]
