"""Full-reference image-quality metrics, batched, for validation (torch) and offline use (numpy).

Every torch metric takes ``pred`` and ``target`` of shape (N, C, H, W) (single-channel images are
(N, 1, H, W)), an explicit ``data_range`` (the width of the intensity range, e.g. 1.0 for [0, 1],
2.0 for [-1, 1], 255 for 8-bit; it is never guessed) and an optional ``mask`` of shape
(N, 1, H, W) or (N, C, H, W), bool or float, binarised at ``> 0.5``. Each returns one value per
image, a float32 tensor of shape (N,); channels are pooled with the pixels.

=============  ==========  ===========  =====================================================
key            better      range        definition (``M`` = mask or all pixels, sums over C too)
=============  ==========  ===========  =====================================================
``psnr``       higher      (-inf, inf]  ``10·log10(data_range² / mean_M((pred − target)²))``;
                                        ``inf`` when identical inside ``M``
``ssim``       higher      [-1, 1]      mean inside ``M`` of the SSIM map of Wang et al. 2004
                                        (Gaussian window 11 px, σ 1.5, K1 0.01, K2 0.03,
                                        population covariances) over the *valid* region, i.e.
                                        the map and ``M`` both lose a 5 px border (see below)
``ms_ssim``    higher      [0, 1]       multi-scale SSIM (Wang et al. 2003, pytorch-msssim
                                        conventions), whole image only; fewer scales on
                                        images ≤ 160 px (see :func:`ms_ssim`)
``mae``        lower       [0, inf)     ``mean_M(|pred − target|)``
``bsr``        higher      (-inf, 1]    bone suppression ratio ``1 − E(pred) / E(input)``
                                        with ``E(x) = Σ_M relu(d − mean_M(d))²``,
                                        ``d = x − target``: 1 = all bone removed, 0 = as much
                                        bone left as in the input (see :func:`bsr`)
``bsr_lit``    higher      (-inf, 1]    bone suppression ratio as published (GL-LCM,
                                        BS-LDM): ``1 − Σ relu(r − mean(r))² / Σ (input −
                                        target)²``, ``r = target − pred``, whole image
                                        only; not comparable with ``bsr`` (see
                                        :func:`bsr_lit`)
``hfen``       lower       [0, inf)     ``‖LoG(pred − target)‖_M / ‖LoG(target)‖_M``, LoG
                                        σ 1.5 (Ravishankar & Bresler 2011), L2 norms over M
``gmsd``       lower       [0, 0.5]     standard deviation over ``M`` of the gradient
                                        magnitude similarity map (Xue et al. 2014), Prewitt
                                        3×3, ``c = 170/255² · data_range²``, no downsampling
``sharpness``  ≈ 1         [0, inf)     ``mean_M |∇pred| / mean_M |∇target|`` (Prewitt);
                                        secondary, fooled by checkerboard artefacts
blur_effect    lower       [0, 1]       no-reference blur of one image,
                                        :func:`skimage.measure.blur_effect` (numpy only)
=============  ==========  ===========  =====================================================

In :func:`compute_metrics` each key is the whole-image value and ``<key>_mask`` the value inside
the mask (when a mask is given); ``ms_ssim`` and ``bsr_lit`` have no masked variant.

Conventions:

* **Whole-image SSIM** equals ``skimage.metrics.structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=...)``. skimage filters with reflect padding
  to a full-size map and then averages ``crop(S, (win − 1) // 2)``, i.e. it drops a 5 px border;
  with an 11-tap window the cropped pixels are exactly those whose window lies inside the image,
  which is MONAI's *valid* map (:func:`monai.metrics.regression.compute_ssim_and_cs`). The
  masked SSIM averages that valid map inside the mask cropped by the same 5 px on every side
  (mask pixels within 5 px of the image border do not count), so ``ssim(mask=all ones) ==
  ssim()``. ``ssim_map(full=True)`` reproduces skimage's full reflect-padded map for display.
* **GMSD / sharpness** use the valid Prewitt region (1 px border dropped, mask cropped alike);
  **HFEN** filters with reflect (scipy ``"reflect"`` = numpy ``"symmetric"``) padding and keeps
  the full size, so the mask is used as is.
* **Empty mask** (or a mask that becomes empty after the border crop) gives NaN for that image;
  the count of such images is logged at DEBUG level only (checking needs a device-to-host sync,
  so it is done only when DEBUG is enabled).
* **Precision**: inputs are cast to float32 (half and bfloat16 up, float64 down: MONAI's SSIM
  works in float32 anyway, so all metrics share one precision) and autocast is disabled inside.
* **No host syncs** in the torch path: no ``.item()``, no data-dependent Python branches, and
  every filter kernel is built on the input's device (no host-to-device copies).
* **numpy**: every metric also accepts ``np.ndarray`` of shape (H, W), (N, H, W) or
  (N, C, H, W) (masks likewise) and then returns a ``float`` for (H, W) input, else a float64
  array of shape (N,) (maps come back without the added axes).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics.regression import compute_ssim_and_cs
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = [
    "GMSD_C_UNIT",
    "METRIC_NAMES",
    "MS_SSIM_WEIGHTS",
    "blur_effect",
    "bsr",
    "bsr_lit",
    "compute_metrics",
    "gmsd",
    "hfen",
    "mae",
    "ms_ssim",
    "psnr",
    "sharpness_ratio",
    "ssim",
    "ssim_map",
]

SSIM_WIN_SIZE = 11
"""Gaussian SSIM window (taps); with σ 1.5 the same 11 taps skimage uses (truncate 3.5)."""
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_BORDER = (SSIM_WIN_SIZE - 1) // 2
"""Pixels the valid SSIM map loses on each side (skimage's crop)."""
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Wang et al. 2003 scale weights, finest scale first."""
HFEN_SIGMA = 1.5
LOG_TRUNCATE = 4.0
"""LoG kernel radius = int(truncate·σ + 0.5) = 6 px, as in ``scipy.ndimage.gaussian_laplace``."""
GMSD_C_UNIT = 170.0 / 255.0**2
"""GMSD stability constant for data_range 1 (≈ 0.0026): the paper's T = 170 for 8-bit images;
gradient magnitudes scale with intensity, so ``c = GMSD_C_UNIT · data_range²``."""
PREWITT_BORDER = 1
_NO_BONE_REL_ENERGY = 1e-12

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
    "gmsd": 2 * PREWITT_BORDER + 1,
    "sharpness": 2 * PREWITT_BORDER + 1,
}

_F = TypeVar("_F", bound=Callable[..., Any])


# --------------------------------------------------------------------------------------------
# numpy support and precision guard
# --------------------------------------------------------------------------------------------


def _from_numpy(array: np.ndarray) -> Tensor:
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


def _to_numpy(value: Any, ndim: int) -> Any:
    """Convert a metric result back for a caller that passed numpy arrays of ``ndim`` dims."""
    if isinstance(value, dict):
        return {key: _to_numpy(item, ndim) for key, item in value.items()}
    array = value.detach().cpu().numpy().astype(np.float64)
    if array.ndim == 1:  # per-image values
        return float(array[0]) if ndim == 2 else array
    if ndim == 2:  # a map of one single-channel image
        return array[0, 0]
    return array[:, 0] if ndim == 3 else array


def _metric(fn: _F) -> _F:
    """Let a torch metric take numpy arrays, and run it with autocast disabled.

    numpy arguments are converted with :func:`_from_numpy` and the result converted back with
    :func:`_to_numpy`; the metric itself is written once, for tensors.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        first = args[0] if args else kwargs.get("pred")
        numpy_ndim = first.ndim if isinstance(first, np.ndarray) else None
        if numpy_ndim is not None:
            args = tuple(_from_numpy(a) if isinstance(a, np.ndarray) else a for a in args)
            kwargs = {
                k: _from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()
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
        return result if numpy_ndim is None else _to_numpy(result, numpy_ndim)

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------


def _check_pair(pred: Any, target: Any, name: str, min_size: int = 1) -> tuple[Tensor, Tensor]:
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


def _check_data_range(data_range: Any, name: str) -> float:
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


def _check_mask(mask: Any, pred: Tensor, name: str) -> Tensor | None:
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
    _log_empty(binary, name, "mask")
    return binary


def _check_input(image: Any, pred: Tensor, name: str) -> Tensor:
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


def _log_empty(mask: Tensor | None, name: str, what: str) -> None:
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


# --------------------------------------------------------------------------------------------
# reductions and filters
# --------------------------------------------------------------------------------------------

_IMAGE_DIMS = (1, 2, 3)


def _masked_sum(values: Tensor, mask: Tensor | None, dims: tuple[int, ...] = _IMAGE_DIMS) -> Tensor:
    if mask is None:
        return values.sum(dims)
    return torch.where(mask, values, 0.0).sum(dims)


def _masked_mean(
    values: Tensor, mask: Tensor | None, dims: tuple[int, ...] = _IMAGE_DIMS
) -> Tensor:
    """Mean over ``dims`` inside ``mask`` (broadcast over channels); NaN where it is empty."""
    if mask is None:
        return values.mean(dims)
    count = mask.expand_as(values).sum(dims)
    return _masked_sum(values, mask, dims) / count  # 0 / 0 -> NaN for an empty mask


def _masked_std(values: Tensor, mask: Tensor | None) -> Tensor:
    """Population standard deviation per image inside ``mask``."""
    mean = _masked_mean(values, mask)[:, None, None, None]
    return _masked_mean((values - mean) ** 2, mask).sqrt()


def _crop(x: Tensor | None, border: int) -> Tensor | None:
    if x is None or border == 0:
        return x
    return x[..., border:-border, border:-border]


def _crop_mask(mask: Tensor | None, border: int, name: str) -> Tensor | None:
    """Align a full-size mask with a valid-region map that lost ``border`` px on each side."""
    cropped = _crop(mask, border)
    _log_empty(cropped, name, f"mask after the {border} px border crop")
    return cropped


def _pad_symmetric(x: Tensor, pad: int) -> Tensor:
    """Mirror-pad H and W by ``pad``, repeating the edge pixel (scipy.ndimage ``"reflect"``).

    torch's ``"reflect"`` padding omits the edge pixel, so it cannot reproduce scipy/skimage.
    """
    x = torch.cat([x[..., :pad, :].flip(-2), x, x[..., -pad:, :].flip(-2)], dim=-2)
    return torch.cat([x[..., :pad].flip(-1), x, x[..., -pad:].flip(-1)], dim=-1)


def _separable(x: Tensor, along_h: Tensor, along_w: Tensor) -> Tensor:
    """Valid 2-D correlation of every channel with the outer product ``along_h ⊗ along_w``."""
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    y = F.conv2d(y, along_h.view(1, 1, -1, 1))
    y = F.conv2d(y, along_w.view(1, 1, 1, -1))
    return y.reshape(n, c, y.shape[-2], y.shape[-1])


def _ssim_and_cs(pred: Tensor, target: Tensor, data_range: float) -> tuple[Tensor, Tensor]:
    """Valid-region SSIM and contrast-structure maps from MONAI.

    MONAI builds its Gaussian window with tensor factories and then moves it to the input's
    device; creating it under ``torch.device(...)`` builds it there directly, so no
    host-to-device copy (a sync on CUDA) happens.
    """
    with torch.device(pred.device):
        return compute_ssim_and_cs(
            pred,
            target,
            spatial_dims=2,
            kernel_size=(SSIM_WIN_SIZE, SSIM_WIN_SIZE),
            kernel_sigma=(SSIM_SIGMA, SSIM_SIGMA),
            data_range=data_range,
            k1=SSIM_K1,
            k2=SSIM_K2,
        )


def _ms_ssim(pred: Tensor, target: Tensor, data_range: float) -> Tensor:
    """MS-SSIM per image, the number of scales reduced to fit the image (see :func:`ms_ssim`)."""
    side = min(pred.shape[-2:])
    levels = len(MS_SSIM_WEIGHTS)
    while levels > 1 and side <= (SSIM_WIN_SIZE - 1) * 2 ** (levels - 1):
        levels -= 1
    weights = MS_SSIM_WEIGHTS[:levels]
    if levels < len(MS_SSIM_WEIGHTS):
        total = sum(weights)
        weights = tuple(w / total for w in weights)
        logger.debug(
            "ms_ssim: %d px is too small for %d scales (needs > %d px); using %d scale(s) "
            "with weights %s",
            side,
            len(MS_SSIM_WEIGHTS),
            (SSIM_WIN_SIZE - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1),
            levels,
            tuple(round(w, 4) for w in weights),
        )
    factors = []
    for level in range(levels):
        ssim_full, cs_full = _ssim_and_cs(pred, target, data_range)
        if level < levels - 1:
            factors.append(torch.relu(cs_full.mean((2, 3))))
            # pytorch-msssim's pooling: 2x2 mean, odd sizes zero-padded (count_include_pad).
            padding = [size % 2 for size in pred.shape[-2:]]
            pred = F.avg_pool2d(pred, kernel_size=2, padding=padding)
            target = F.avg_pool2d(target, kernel_size=2, padding=padding)
    factors.append(torch.relu(ssim_full.mean((2, 3))))
    per_channel = torch.stack([f**w for f, w in zip(factors, weights, strict=True)]).prod(0)
    return per_channel.mean(1)


def _log_kernels(sigma: float, device: torch.device) -> tuple[Tensor, Tensor, int]:
    """1-D Gaussian and its second derivative as in ``scipy.ndimage`` (built on ``device``)."""
    radius = int(LOG_TRUNCATE * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    gauss = torch.exp(-0.5 * (x / sigma) ** 2)
    gauss = gauss / gauss.sum()
    second = gauss * (x**2 - sigma**2) / sigma**4
    return gauss, second, radius


def _laplacian_of_gaussian(x: Tensor, sigma: float) -> Tensor:
    """LoG with reflect padding, same size as ``x``; equals ``scipy.ndimage.gaussian_laplace``.

    Hand-written: none of the project's dependencies offers a torch LoG (kornia needs Python
    3.11), and it is two separable convolutions.
    """
    gauss, second, radius = _log_kernels(sigma, x.device)
    padded = _pad_symmetric(x, radius)
    return _separable(padded, second, gauss) + _separable(padded, gauss, second)


def _prewitt_magnitude(x: Tensor) -> Tensor:
    """Prewitt gradient magnitude over the valid region, shape (N, C, H - 2, W - 2).

    The 3x3 kernels are ``[1, 0, -1]`` ⊗ ``[1, 1, 1] / 3`` (Xue et al. 2014), built on the
    input's device.
    """
    diff = torch.arange(1, -2, -1, device=x.device, dtype=torch.float32)  # [1, 0, -1]
    smooth = torch.full((3,), 1.0 / 3.0, device=x.device, dtype=torch.float32)
    grad_w = _separable(x, smooth, diff)
    grad_h = _separable(x, diff, smooth)
    return torch.sqrt(grad_w**2 + grad_h**2)


def _psnr_from_mse(mse: Tensor, data_range: float) -> Tensor:
    return 10.0 * torch.log10(data_range**2 / mse)


def _hfen_from_log(log_error: Tensor, log_target: Tensor, mask: Tensor | None) -> Tensor:
    return (_masked_sum(log_error**2, mask) / _masked_sum(log_target**2, mask)).sqrt()


def _gms_map(grad_pred: Tensor, grad_target: Tensor, data_range: float) -> Tensor:
    c = GMSD_C_UNIT * data_range**2
    return (2 * grad_pred * grad_target + c) / (grad_pred**2 + grad_target**2 + c)


def _sharpness_from_grad(grad_pred: Tensor, grad_target: Tensor, mask: Tensor | None) -> Tensor:
    return _masked_mean(grad_pred, mask) / _masked_mean(grad_target, mask)


def _bsr(
    pred: Tensor, target: Tensor, image: Tensor, mask: Tensor | None, bone_is_bright: bool
) -> Tensor:
    sign = 1.0 if bone_is_bright else -1.0

    def remaining_bone_energy(x: Tensor) -> Tensor:
        diff = x - target
        diff = diff - _masked_mean(diff, mask, dims=(2, 3))[:, :, None, None]
        return _masked_sum(torch.relu(sign * diff) ** 2, mask)

    input_energy = remaining_bone_energy(image)
    removed = 1.0 - remaining_bone_energy(pred) / input_energy
    # "No bone" up to float32 rounding: residue RMS below 1e-6 of the images' RMS.
    scale = _masked_sum(image**2 + target**2, mask)
    return torch.where(input_energy > _NO_BONE_REL_ENERGY * scale, removed, torch.nan)


def _bsr_lit(pred: Tensor, target: Tensor, image: Tensor) -> Tensor:
    """The published BSR per image; NaN where ``input == target`` (see :func:`bsr_lit`)."""
    residue = target - pred
    residue = torch.relu(residue - residue.mean(_IMAGE_DIMS, keepdim=True))
    bone_energy = ((image - target) ** 2).sum(_IMAGE_DIMS)
    has_bone = bone_energy > 0
    if logger.isEnabledFor(logging.DEBUG):  # counting needs a device-to-host sync
        no_bone = int((~has_bone).sum())
        if no_bone:
            logger.debug(
                "bsr_lit: input equals target (no bone) for %d of %d image(s); their value is NaN",
                no_bone,
                has_bone.shape[0],
            )
    return torch.where(has_bone, 1.0 - (residue**2).sum(_IMAGE_DIMS) / bone_energy, torch.nan)


# --------------------------------------------------------------------------------------------
# public metrics
# --------------------------------------------------------------------------------------------


@_metric
def psnr(pred: Tensor, target: Tensor, *, data_range: float, mask: Tensor | None = None) -> Tensor:
    """Peak signal-to-noise ratio per image, in dB (higher is better).

    ``10·log10(data_range² / MSE)`` with the MSE over the whole image, or over the mask
    pixels only (masked PSNR). Matches ``skimage.metrics.peak_signal_noise_ratio``.

    Args:
        pred: prediction, (N, C, H, W) tensor (or numpy array, see the module docstring).
        target: reference, same shape as ``pred``.
        data_range: width of the intensity range (1.0 for [0, 1], 2.0 for [-1, 1], 255, ...).
        mask: optional (N, 1, H, W) or (N, C, H, W) mask, binarised at > 0.5.

    Returns:
        (N,) float32 tensor; ``inf`` for identical images, NaN for an empty mask.

    Raises:
        ValueError: on mismatched shapes or a non-positive ``data_range``.
        TypeError: on arguments of the wrong type.
    """
    p, t = _check_pair(pred, target, "psnr")
    dr = _check_data_range(data_range, "psnr")
    m = _check_mask(mask, p, "psnr")
    return _psnr_from_mse(_masked_mean((p - t) ** 2, m), dr)


@_metric
def mae(pred: Tensor, target: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """Mean absolute error per image (lower is better), over the image or inside the mask.

    Args:
        pred: prediction, (N, C, H, W) tensor (or numpy array).
        target: reference, same shape as ``pred``.
        mask: optional (N, 1, H, W) or (N, C, H, W) mask, binarised at > 0.5.

    Returns:
        (N,) float32 tensor, in the images' units; NaN for an empty mask.

    Raises:
        ValueError: on mismatched shapes.
        TypeError: on arguments of the wrong type.
    """
    p, t = _check_pair(pred, target, "mae")
    m = _check_mask(mask, p, "mae")
    return _masked_mean((p - t).abs(), m)


@_metric
def ssim_map(pred: Tensor, target: Tensor, *, data_range: float, full: bool = False) -> Tensor:
    """SSIM map (Gaussian window 11 px, σ 1.5, K1 0.01, K2 0.03, population covariances).

    Computed by :func:`monai.metrics.regression.compute_ssim_and_cs`.

    Args:
        pred: prediction, (N, C, H, W) tensor (or numpy array), H and W at least 11.
        target: reference, same shape as ``pred``.
        data_range: width of the intensity range.
        full: False (default): the *valid* map, (N, C, H - 10, W - 10); its pixel (i, j) is
            the image's pixel (i + 5, j + 5), and its mean is skimage's SSIM. True: a map of
            the input's size from reflect-padded images, equal to skimage's ``full=True`` map;
            its 5 px border depends on the padding, which is why :func:`ssim` ignores it.

    Returns:
        Float32 SSIM map.

    Raises:
        ValueError: on mismatched shapes, images smaller than 11x11 or a bad ``data_range``.
        TypeError: on arguments of the wrong type.
    """
    p, t = _check_pair(pred, target, "ssim_map", SSIM_WIN_SIZE)
    dr = _check_data_range(data_range, "ssim_map")
    if full:
        p, t = _pad_symmetric(p, SSIM_BORDER), _pad_symmetric(t, SSIM_BORDER)
    return _ssim_and_cs(p, t, dr)[0]


@_metric
def ssim(pred: Tensor, target: Tensor, *, data_range: float, mask: Tensor | None = None) -> Tensor:
    """Structural similarity per image (higher is better, 1 = identical).

    Without a mask: the mean of the valid SSIM map (see :func:`ssim_map`), equal to
    ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=data_range)``. With a mask: the mean of the same
    valid map over the mask cropped by 5 px on each side, so that map and mask pixels refer
    to the same image pixel; mask pixels within 5 px of the image border are ignored (there the
    window would reach outside the image). An all-ones mask gives the unmasked value.

    Args:
        pred: prediction, (N, C, H, W) tensor (or numpy array), H and W at least 11.
        target: reference, same shape as ``pred``.
        data_range: width of the intensity range.
        mask: optional (N, 1, H, W) or (N, C, H, W) mask, binarised at > 0.5.

    Returns:
        (N,) float32 tensor; NaN where the cropped mask is empty.

    Raises:
        ValueError: on mismatched shapes, images smaller than 11x11 or a bad ``data_range``.
        TypeError: on arguments of the wrong type.
    """
    p, t = _check_pair(pred, target, "ssim", SSIM_WIN_SIZE)
    dr = _check_data_range(data_range, "ssim")
    m = _check_mask(mask, p, "ssim")
    return _masked_mean(_ssim_and_cs(p, t, dr)[0], _crop_mask(m, SSIM_BORDER, "ssim"))


@_metric
def ms_ssim(pred: Tensor, target: Tensor, *, data_range: float) -> Tensor:
    """Multi-scale SSIM per image (higher is better), whole image only.

    Follows pytorch-msssim's ``ms_ssim`` (equal to it within float32 rounding on images
    > 160 px): at each scale the valid SSIM/CS maps (MONAI), the mean CS clipped at 0 for the
    finer scales and the mean SSIM clipped at 0 for the coarsest, a 2x2 average pooling
    between scales (odd sizes zero-padded), the weighted product per channel, then the mean
    over channels. It is composed here rather than called because pytorch-msssim refuses
    images ≤ 160 px whatever the number of weights and copies its weights to the device (a
    host sync on CUDA).

    Five scales (weights 0.0448, 0.2856, 0.3001, 0.2363, 0.1333) need the smaller side
    > 160 px. Smaller images use the largest number of scales L with side > 10·2^(L-1)
    (L = 1 below 21 px, i.e. plain SSIM clipped at 0) and the first L weights renormalised to
    sum to 1; this is logged at DEBUG level. Values from different L are not comparable, so
    compare MS-SSIM only between images of similar size.

    There is no masked MS-SSIM: at the coarse scales a pixel stands for a 16x16 block and the
    window covers most of the image, so "inside the mask" is not well defined. Use
    ``ssim(mask=...)`` for the region of interest.

    Args:
        pred: prediction, (N, C, H, W) tensor (or numpy array), H and W at least 11.
        target: reference, same shape as ``pred``.
        data_range: width of the intensity range.

    Returns:
        (N,) float32 tensor in [0, 1].

    Raises:
        ValueError: on mismatched shapes, images smaller than 11x11 or a bad ``data_range``.
        TypeError: on arguments of the wrong type.
    """
    p, t = _check_pair(pred, target, "ms_ssim", SSIM_WIN_SIZE)
    dr = _check_data_range(data_range, "ms_ssim")
    return _ms_ssim(p, t, dr)


@_metric
def bsr(
    pred: Tensor,
    target: Tensor,
    input: Tensor,  # the project's name for the network input
    *,
    mask: Tensor | None = None,
    bone_is_bright: bool = True,
) -> Tensor:
    """Bone suppression ratio per image (higher is better; 1 = all bone removed).

    Implemented exactly as::

        d(x)   = x − target                      (per image and channel)
        d'(x)  = d(x) − mean_M(d(x))             (the mean offset inside M is removed)
        E(x)   = Σ_M relu(s · d'(x))²            (s = +1 if bone is bright, −1 otherwise)
        BSR    = 1 − E(pred) / E(input)

    ``input − target`` is the bone image. In the usual display (bone bright, as in a
    radiograph shown white-on-black) bone left in the prediction makes it *brighter* than the
    target, so the remaining bone is ``relu(pred' − target)``, the positive part; the issue's
    ``relu(target − pred)`` would score the unsuppressed input as perfect (its positive part is
    zero wherever bone is bright) and is the right sign only for dark bone (``bone_is_bright=
    False``, e.g. MONOCHROME1 data). Removing the mean offset makes a global brightness shift of
    the prediction cost nothing (PSNR/MAE report it). The denominator applies the same
    definition to the input itself (instead of ``Σ bone²``), so BSR is exactly 0 for
    ``pred = input`` and exactly 1 for ``pred = target + constant``; a prediction that keeps
    half the bone (``target + bone / 2``) scores 0.75 (the energy is quadratic). Negative values
    mean more bright residue than the input had. One-sided by design: only the bright side of
    the offset-corrected difference counts as bone; a prediction darker than the target is
    penalised only through the mean correction (which lifts the other pixels), so judge
    over-suppression with MAE/PSNR/SSIM.

    Args:
        pred: prediction, (N, C, H, W) tensor (or numpy array).
        target: bone-free reference, same shape.
        input: the network input (with bones), same shape.
        mask: optional (N, 1, H, W) or (N, C, H, W) mask; sums and mean offsets are taken
            inside it.
        bone_is_bright: True when bone raises the intensity (input − target ≥ 0 on bone).

    Returns:
        (N,) float32 tensor; NaN for an empty mask or when the input has no bone residue
        (``E(input) ≤ 1e-12 · Σ_M (input² + target²)``, i.e. zero up to float32 rounding).

    Raises:
        ValueError: on mismatched shapes.
        TypeError: on arguments of the wrong type.
    """
    p, t = _check_pair(pred, target, "bsr")
    x = _check_input(input, p, "bsr")
    m = _check_mask(mask, p, "bsr")
    return _bsr(p, t, x, m, bone_is_bright)


@_metric
def bsr_lit(
    pred: Tensor,
    target: Tensor,
    input: Tensor,  # the project's name for the network input
) -> Tensor:
    """Bone suppression ratio per image exactly as the bone-suppression papers compute it.

    The ``cal_BSR`` of GL-LCM's and BS-LDM's ``metrics.py`` (``cxr`` = ``input``, ``gt`` =
    ``target``, ``bs`` = ``pred``), reported under the key ``bsr_lit`` so that it is never
    mistaken for :func:`bsr`::

        r       = target − pred                  (per image)
        BSR_lit = 1 − Σ relu(r − mean(r))² / Σ (input − target)²

    i.e. ``1 − Σ relu(gt − (bs + mean(gt − bs)))² / Σ (cxr − gt)²``. Sums and the mean run over
    the whole image (all pixels and channels of one image); there is no masked variant. The
    papers average the per-image values over the test images, as callers here do. (The papers
    also resize every image to a fixed size first; that belongs to their pipeline, not to the
    formula, and is not done here.)

    How it differs from :func:`bsr` (the two are not comparable):

    * **Which side counts.** Only pixels with ``target > pred + offset`` count (the prediction
      *darker* than the truth after the mean offset is removed), where ``bsr`` counts the
      prediction *brighter* than the truth. Reading this side as bone left unsuppressed is
      right only when bone darkens the image. On data with bright bone (``input − target ≥
      0`` on bone, as in the papers' own sample pairs) the counted side is dark residue -
      over-suppression - and bone left in the prediction counts only through the mean offset,
      which it raises so that the bone-free pixels appear too dark: keeping a fraction
      ``0 ≤ k ≤ 1`` of the bone (``pred = target + k·bone``) scores
      ``1 − k²·(1 − BSR_lit(input))``.
    * **Mean offset.** Removed from ``target − pred``, as in ``bsr`` (a constant brightness
      shift of the prediction costs nothing).
    * **Normaliser.** The input's bone energy ``Σ (input − target)²`` (no offset removed, no
      one-sided cut), where ``bsr`` applies its own numerator to the input. Hence ``pred =
      target + c`` scores exactly 1 in both, but the unprocessed input does **not** score 0:
      it scores ``1 − Σ relu(mean(b) − b)² / Σ b²`` with ``b = input − target`` (``1 −
      f·(1 − f)`` for bone of constant height covering a fraction ``f`` of the image; 0.66 to
      0.89 on the three sample pairs shipped with BS-LDM), and a prediction that carves the
      bone out dark (``pred = target − b``) scores ``1 − Σ relu(b − mean(b))² / Σ b²``
      (``1 − (1 − f)²``). Always read it against the identity baseline.

    Args:
        pred: prediction, (N, C, H, W) tensor (or numpy array).
        target: bone-free reference, same shape.
        input: the network input (with bones), same shape.

    Returns:
        (N,) float32 tensor, at most 1; NaN where ``input == target`` everywhere (no bone to
        suppress; the count of such images is logged at DEBUG level).

    Raises:
        ValueError: on mismatched shapes.
        TypeError: on arguments of the wrong type.
    """
    p, t = _check_pair(pred, target, "bsr_lit")
    x = _check_input(input, p, "bsr_lit")
    return _bsr_lit(p, t, x)


@_metric
def hfen(
    pred: Tensor, target: Tensor, *, mask: Tensor | None = None, sigma: float = HFEN_SIGMA
) -> Tensor:
    """High-frequency error norm per image (lower is better; 0 = perfect).

    ``HFEN = ‖LoG_σ(pred − target)‖₂ / ‖LoG_σ(target)‖₂`` with the L2 norms over the mask
    pixels (and channels), LoG = ``scipy.ndimage.gaussian_laplace`` (reflect padding, radius
    ``int(4σ + 0.5)``), σ = 1.5 (Ravishankar & Bresler 2011). It grows with lost edges (blur)
    and with added texture (checkerboard artefacts of period ≥ 4 px) alike; independent of
    ``data_range``. Blind spot: the σ 1.5 LoG is a band-pass peaking near a period of 8 px; its
    gain on a one-pixel (period-2) checkerboard is ~1e-8 (0.02 at period 4), so such a pattern
    shows in PSNR/SSIM/MAE but hardly in HFEN.

    Args:
        pred: prediction, (N, C, H, W) tensor (or numpy array).
        target: reference, same shape as ``pred``.
        mask: optional (N, 1, H, W) or (N, C, H, W) mask, binarised at > 0.5.
        sigma: LoG scale in pixels.

    Returns:
        (N,) float32 tensor; NaN for an empty mask, inf if the target has no detail there.

    Raises:
        ValueError: on mismatched shapes or images smaller than the LoG radius.
        TypeError: on arguments of the wrong type.
    """
    p, t = _check_pair(pred, target, "hfen", int(LOG_TRUNCATE * sigma + 0.5))
    m = _check_mask(mask, p, "hfen")
    return _hfen_from_log(_laplacian_of_gaussian(p - t, sigma), _laplacian_of_gaussian(t, sigma), m)


@_metric
def gmsd(
    pred: Tensor,
    target: Tensor,
    *,
    data_range: float,
    mask: Tensor | None = None,
    downsample: bool = False,
) -> Tensor:
    """Gradient magnitude similarity deviation per image (lower is better; 0 = perfect).

    Xue et al. 2014: gradient magnitudes ``m`` with the 3x3 Prewitt filters
    (``[1, 0, -1] ⊗ [1, 1, 1] / 3`` and its transpose), the similarity map
    ``(2·m_pred·m_target + c) / (m_pred² + m_target² + c)``, GMSD = its population standard
    deviation inside the mask. ``c = 170/255² · data_range²`` (≈ 0.0026 for data in [0, 1]; the
    paper's T = 170 for 8-bit images; gradients scale with intensity, hence data_range²). The
    map covers the valid Prewitt region; the mask is cropped by 1 px on each side to match.

    The paper first averages 2x2 blocks and subsamples by 2 (a viewing-distance model for
    natural images). That is off by default here: it would hide exactly the fine blur we want
    to see, and a 2x2 average cancels a one-pixel checkerboard completely. ``downsample=True``
    reproduces the paper (odd last row/column dropped; the mask is pooled and re-binarised).

    Blind spot: Prewitt filters are central differences, whose response to any pattern of
    period 2 px is exactly zero, so a one-pixel checkerboard leaves GMSD (and
    :func:`sharpness_ratio`) unchanged; patterns of period ≥ 4 px (stacked stride-2 transposed
    convolutions) and signal-modulated ones are seen. PSNR/SSIM/MAE see the period-2 case.

    Args:
        pred: prediction, (N, C, H, W) tensor (or numpy array).
        target: reference, same shape as ``pred``.
        data_range: width of the intensity range.
        mask: optional (N, 1, H, W) or (N, C, H, W) mask, binarised at > 0.5.
        downsample: apply the paper's 2x2 average and subsampling first.

    Returns:
        (N,) float32 tensor; NaN where the cropped mask is empty.

    Raises:
        ValueError: on mismatched shapes, images smaller than 3x3 (6x6 when downsampling) or a
            bad ``data_range``.
        TypeError: on arguments of the wrong type.
    """
    min_size = _MIN_SIZE["gmsd"] * (2 if downsample else 1)
    p, t = _check_pair(pred, target, "gmsd", min_size)
    dr = _check_data_range(data_range, "gmsd")
    m = _check_mask(mask, p, "gmsd")
    if downsample:
        p, t = F.avg_pool2d(p, 2), F.avg_pool2d(t, 2)
        m = None if m is None else F.avg_pool2d(m.float(), 2) > 0.5
    gms = _gms_map(_prewitt_magnitude(p), _prewitt_magnitude(t), dr)
    return _masked_std(gms, _crop_mask(m, PREWITT_BORDER, "gmsd"))


@_metric
def sharpness_ratio(pred: Tensor, target: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """Mean Prewitt gradient magnitude of ``pred`` ÷ that of ``target`` (≈ 1 is best).

    Below 1 means smoother than the target. **Secondary metric**: it only compares the total
    amount of gradient, not where it is or whether it matches the target's, so it is fooled by
    checkerboard or noise artefacts, which add gradient energy while detail is lost (a visibly
    blurred, checkered output read 0.98). Always report it beside :func:`hfen` and
    :func:`gmsd`, never alone. Valid Prewitt region, mask cropped by 1 px on each side; like
    GMSD it does not see a one-pixel (period-2) checkerboard at all.

    Args:
        pred: prediction, (N, C, H, W) tensor (or numpy array).
        target: reference, same shape as ``pred``.
        mask: optional (N, 1, H, W) or (N, C, H, W) mask, binarised at > 0.5.

    Returns:
        (N,) float32 tensor; NaN for an empty cropped mask.

    Raises:
        ValueError: on mismatched shapes or images smaller than 3x3.
        TypeError: on arguments of the wrong type.
    """
    p, t = _check_pair(pred, target, "sharpness_ratio", _MIN_SIZE["sharpness"])
    m = _crop_mask(_check_mask(mask, p, "sharpness_ratio"), PREWITT_BORDER, "sharpness_ratio")
    return _sharpness_from_grad(_prewitt_magnitude(p), _prewitt_magnitude(t), m)


def blur_effect(image: np.ndarray | Tensor, *, h_size: int = 11) -> float | np.ndarray:
    """No-reference blur score of each image, :func:`skimage.measure.blur_effect`.

    0 is sharp, 1 is fully blurred (Crété-Roffet et al. 2007); scale-free, so no data_range.
    numpy only (it runs on the host, image by image): for offline evaluation, not in the
    training loop. A tensor is copied to the host first.

    Args:
        image: (H, W), (N, H, W) or (N, 1, H, W) single-channel image(s).
        h_size: size of the re-blurring filter; keep it fixed when comparing scores.

    Returns:
        A float for one (H, W) image, else a float64 array of shape (N,).

    Raises:
        ValueError: on any other shape.
    """
    from skimage.measure import blur_effect as skimage_blur_effect

    if isinstance(image, Tensor):
        image = image.detach().float().cpu().numpy()
    array = np.asarray(image, dtype=np.float64)
    if array.ndim == 2:
        return float(skimage_blur_effect(array, h_size=h_size))
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3:
        raise ValueError(
            f"blur_effect: expected (H, W), (N, H, W) or (N, 1, H, W), got {array.shape}"
        )
    return np.array([skimage_blur_effect(a, h_size=h_size) for a in array], dtype=np.float64)


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


@_metric
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
    p, t = _check_pair(pred, target, "compute_metrics", min_size)
    dr = _check_data_range(data_range, "compute_metrics")
    m = _check_mask(mask, p, "compute_metrics")
    x = None if input is None else _check_input(input, p, "compute_metrics")

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
        reducers["psnr"] = lambda m: _psnr_from_mse(_masked_mean(squared, m), dr)
    if "ssim" in names:
        smap = _ssim_and_cs(p, t, dr)[0]
        reducers["ssim"] = lambda m: _masked_mean(smap, _crop_mask(m, SSIM_BORDER, "ssim"))
    if "ms_ssim" in names:
        reducers["ms_ssim"] = lambda m: _ms_ssim(p, t, dr)
    if "mae" in names:
        absolute = (p - t).abs()
        reducers["mae"] = lambda m: _masked_mean(absolute, m)
    if "hfen" in names:
        log_error = _laplacian_of_gaussian(p - t, HFEN_SIGMA)
        log_target = _laplacian_of_gaussian(t, HFEN_SIGMA)
        reducers["hfen"] = lambda m: _hfen_from_log(log_error, log_target, m)
    if "gmsd" in names or "sharpness" in names:
        grad_p, grad_t = _prewitt_magnitude(p), _prewitt_magnitude(t)
        if "gmsd" in names:
            gms = _gms_map(grad_p, grad_t, dr)
            reducers["gmsd"] = lambda m: _masked_std(gms, _crop_mask(m, PREWITT_BORDER, "gmsd"))
        if "sharpness" in names:
            reducers["sharpness"] = lambda m: _sharpness_from_grad(
                grad_p, grad_t, _crop(m, PREWITT_BORDER)
            )
    if "bsr" in names and x is not None:
        reducers["bsr"] = lambda m: _bsr(p, t, x, m, bone_is_bright=True)
    if "bsr_lit" in names and x is not None:
        reducers["bsr_lit"] = lambda m: _bsr_lit(p, t, x)
    return reducers
