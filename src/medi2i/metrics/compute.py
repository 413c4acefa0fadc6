"""Several metrics of one batch at once, sharing the SSIM, LoG and gradient maps."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import Tensor

from medi2i.metrics.bone import bsr_lit_values, bsr_values
from medi2i.metrics.checks import (
    check_data_range,
    check_input,
    check_mask,
    check_pair,
    metric_function,
)
from medi2i.metrics.maps import (
    HFEN_SIGMA,
    LOG_TRUNCATE,
    PREWITT_BORDER,
    PREWITT_MIN_SIZE,
    SSIM_BORDER,
    SSIM_WIN_SIZE,
    crop,
    crop_mask,
    gms_map,
    hfen_from_log,
    laplacian_of_gaussian,
    masked_mean,
    masked_std,
    ms_ssim_values,
    prewitt_magnitude,
    psnr_from_mse,
    sharpness_from_grad,
    ssim_and_cs,
)

METRIC_NAMES = (
    "psnr",
    "ssim",
    "ms_ssim",
    "mae",
    "hfen",
    "gmsd",
    "sharpness",
    "bsr",
    "bsr_lit",
)
"""Names accepted by :func:`compute_metrics`'s ``include``."""
_UNMASKED_ONLY = frozenset({"ms_ssim", "bsr_lit"})
_NEEDS_INPUT = frozenset({"bsr", "bsr_lit"})
"""Metrics computed only when :func:`compute_metrics` gets the network input."""
_MIN_SIZE = {
    "psnr": 1,
    "mae": 1,
    "bsr": 1,
    "bsr_lit": 1,
    "ssim": SSIM_WIN_SIZE,
    "ms_ssim": SSIM_WIN_SIZE,
    "hfen": int(LOG_TRUNCATE * HFEN_SIGMA + 0.5),
    "gmsd": PREWITT_MIN_SIZE,
    "sharpness": PREWITT_MIN_SIZE,
}


def _resolve_include(include: Iterable[str] | None, has_input: bool) -> tuple[str, ...]:
    if include is None:
        return tuple(n for n in METRIC_NAMES if n not in _NEEDS_INPUT or has_input)
    names = (include,) if isinstance(include, str) else tuple(include)
    unknown = [n for n in names if n not in METRIC_NAMES]
    if unknown:
        raise ValueError(
            f"compute_metrics: unknown metric(s) {unknown}; choose from {METRIC_NAMES}"
        )
    needing = [n for n in METRIC_NAMES if n in names and n in _NEEDS_INPUT]
    if needing and not has_input:
        raise ValueError(
            f"compute_metrics: {', '.join(repr(n) for n in needing)} "
            f"need{'s' * (len(needing) == 1)} input= (the network input with bones)"
        )
    return tuple(n for n in METRIC_NAMES if n in names)


@metric_function
def compute_metrics(
    pred: Tensor,
    target: Tensor,
    *,
    data_range: float,
    mask: Tensor | None = None,
    input: Tensor | None = None,  # the project's name for the network input
    include: Iterable[str] | None = None,
) -> dict[str, Tensor]:
    """Compute several metrics at once, sharing the SSIM, LoG and gradient maps.

    Each metric gives the key ``<name>`` (whole image) and, when ``mask`` is given,
    ``<name>_mask`` (inside the mask; none for ``ms_ssim``): ``psnr``, ``ssim``, ``ms_ssim``,
    ``mae``, ``hfen``, ``gmsd``, ``sharpness`` (:func:`sharpness_ratio`) and, when ``input``
    is given, ``bsr`` and ``bsr_lit`` (:func:`bsr_lit`; whole image only, no ``_mask`` key).
    Defaults of the single functions apply (GMSD without downsampling, BSR with bright bone).
    :func:`blur_effect` is numpy-only and not included.

    Args:
        pred: prediction, (N, C, H, W) tensor (or numpy array, then numpy results).
        target: reference, same shape as ``pred``.
        data_range: width of the intensity range.
        mask: optional (N, 1, H, W) or (N, C, H, W) mask, binarised at > 0.5.
        input: optional network input (same shape) for the bone suppression ratios.
        include: metric names to compute (see :data:`METRIC_NAMES`); default all that apply.

    Returns:
        Dict from key to a (N,) float32 tensor, in :data:`METRIC_NAMES` order.

    Raises:
        ValueError: on mismatched shapes, images too small for a requested metric, unknown
            names, ``bsr`` or ``bsr_lit`` requested without ``input``, or a bad
            ``data_range``.
        TypeError: on arguments of the wrong type.
    """
    names = _resolve_include(include, input is not None)
    min_size = max((_MIN_SIZE[n] for n in names), default=1)
    p, t = check_pair(pred, target, "compute_metrics", min_size)
    dr = check_data_range(data_range, "compute_metrics")
    m = check_mask(mask, p, "compute_metrics")
    x = None if input is None else check_input(input, p, "compute_metrics")

    out: dict[str, Tensor] = {}
    for name, reduce in _reducers(p, t, x, dr, names).items():
        out[name] = reduce(None)
        if m is not None and name not in _UNMASKED_ONLY:
            out[name + "_mask"] = reduce(m)
    return out


def _reducers(
    p: Tensor, t: Tensor, x: Tensor | None, dr: float, names: tuple[str, ...]
) -> dict[str, Callable[[Tensor | None], Tensor]]:
    """For each name, a function of the (full-size) mask; the maps are computed once here."""
    reducers: dict[str, Callable[[Tensor | None], Tensor]] = {}
    if "psnr" in names:
        squared = (p - t) ** 2
        reducers["psnr"] = lambda m: psnr_from_mse(masked_mean(squared, m), dr)
    if "ssim" in names:
        smap = ssim_and_cs(p, t, dr)[0]
        reducers["ssim"] = lambda m: masked_mean(smap, crop_mask(m, SSIM_BORDER, "ssim"))
    if "ms_ssim" in names:
        reducers["ms_ssim"] = lambda m: ms_ssim_values(p, t, dr)
    if "mae" in names:
        absolute = (p - t).abs()
        reducers["mae"] = lambda m: masked_mean(absolute, m)
    if "hfen" in names:
        log_error = laplacian_of_gaussian(p - t, HFEN_SIGMA)
        log_target = laplacian_of_gaussian(t, HFEN_SIGMA)
        reducers["hfen"] = lambda m: hfen_from_log(log_error, log_target, m)
    if "gmsd" in names or "sharpness" in names:
        grad_p, grad_t = prewitt_magnitude(p), prewitt_magnitude(t)
        if "gmsd" in names:
            gms = gms_map(grad_p, grad_t, dr)
            reducers["gmsd"] = lambda m: masked_std(gms, crop_mask(m, PREWITT_BORDER, "gmsd"))
        if "sharpness" in names:
            reducers["sharpness"] = lambda m: sharpness_from_grad(
                grad_p, grad_t, crop(m, PREWITT_BORDER)
            )
    if "bsr" in names and x is not None:
        reducers["bsr"] = lambda m: bsr_values(p, t, x, m, bone_is_bright=True)
    if "bsr_lit" in names and x is not None:
        reducers["bsr_lit"] = lambda m: bsr_lit_values(p, t, x)
    return reducers
