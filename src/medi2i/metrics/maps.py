"""Per-pixel maps, masked reductions and filters the metrics share.

SSIM and contrast-structure maps (MONAI's and skimage's conventions), LoG (scipy conventions),
Prewitt gradients, and the per-image reductions inside a mask. Every kernel is built on the
input's device, so nothing here copies from the host or syncs.

Every filter is separable and runs as two depthwise 1-D convolutions over all images and
channels at once (:func:`separable`): on the CPU a batch of single-channel images convolved as
such runs about 10x slower, forward and backward, than the same images as the channels of one
depthwise convolution (measured on a training batch of 4 x 128 px), with identical results.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from medi2i.metrics.checks import log_empty

logger = logging.getLogger(__name__)

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
PREWITT_MIN_SIZE = 2 * PREWITT_BORDER + 1
"""Smallest image side with a valid Prewitt region."""

IMAGE_DIMS = (1, 2, 3)


def masked_sum(values: Tensor, mask: Tensor | None, dims: tuple[int, ...] = IMAGE_DIMS) -> Tensor:
    if mask is None:
        return values.sum(dims)
    return torch.where(mask, values, 0.0).sum(dims)


def masked_mean(values: Tensor, mask: Tensor | None, dims: tuple[int, ...] = IMAGE_DIMS) -> Tensor:
    """Mean over ``dims`` inside ``mask`` (broadcast over channels); NaN where it is empty."""
    if mask is None:
        return values.mean(dims)
    count = mask.expand_as(values).sum(dims)
    return masked_sum(values, mask, dims) / count  # 0 / 0 -> NaN for an empty mask


def masked_std(values: Tensor, mask: Tensor | None) -> Tensor:
    """Population standard deviation per image inside ``mask``."""
    mean = masked_mean(values, mask)[:, None, None, None]
    return masked_mean((values - mean) ** 2, mask).sqrt()


def crop(x: Tensor | None, border: int) -> Tensor | None:
    if x is None or border == 0:
        return x
    return x[..., border:-border, border:-border]


def crop_mask(mask: Tensor | None, border: int, name: str) -> Tensor | None:
    """Align a full-size mask with a valid-region map that lost ``border`` px on each side."""
    cropped = crop(mask, border)
    log_empty(cropped, name, f"mask after the {border} px border crop")
    return cropped


def pad_symmetric(x: Tensor, pad: int) -> Tensor:
    """Mirror-pad H and W by ``pad``, repeating the edge pixel (scipy.ndimage ``"reflect"``).

    torch's ``"reflect"`` padding omits the edge pixel, so it cannot reproduce scipy/skimage.
    """
    x = torch.cat([x[..., :pad, :].flip(-2), x, x[..., -pad:, :].flip(-2)], dim=-2)
    return torch.cat([x[..., :pad].flip(-1), x, x[..., -pad:].flip(-1)], dim=-1)


def separable(x: Tensor, along_h: Tensor, along_w: Tensor) -> Tensor:
    """Valid 2-D correlation of every channel with the outer product ``along_h ⊗ along_w``.

    The images and channels become the channels of one image, filtered depthwise (see the
    module docstring for why).
    """
    n, c, h, w = x.shape
    groups = n * c
    y = x.reshape(1, groups, h, w)
    y = F.conv2d(y, along_h.view(1, 1, -1, 1).expand(groups, 1, -1, 1), groups=groups)
    y = F.conv2d(y, along_w.view(1, 1, 1, -1).expand(groups, 1, 1, -1), groups=groups)
    return y.reshape(n, c, y.shape[-2], y.shape[-1])


def gaussian_window(
    size: int, sigma: float, device: torch.device, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Normalised 1-D Gaussian of ``size`` taps centred on the middle one (built on ``device``)."""
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2.0
    gauss = torch.exp(-0.5 * (x / sigma) ** 2)
    return gauss / gauss.sum()


def ssim_and_cs(pred: Tensor, target: Tensor, data_range: float) -> tuple[Tensor, Tensor]:
    """Valid-region SSIM and contrast-structure maps (Wang et al. 2004).

    The local means, variances and covariance are Gaussian-weighted (11 taps, σ 1.5, the
    window of skimage's ``gaussian_weights=True`` and of MONAI's ``SSIMMetric``), over the
    region where the window fits (each map is ``SSIM_BORDER`` px smaller on each side); the
    five filtered maps go through one separable filter. Equal to MONAI's
    ``compute_ssim_and_cs`` to float32 rounding (tested), which filters each map with the
    full 11x11 window.
    """
    window = gaussian_window(SSIM_WIN_SIZE, SSIM_SIGMA, pred.device, pred.dtype)
    channels = pred.shape[1]
    stack = torch.cat([pred, target, pred * pred, target * target, pred * target], dim=1)
    mu_x, mu_y, mu_xx, mu_yy, mu_xy = separable(stack, window, window).split(channels, dim=1)
    sigma_x = mu_xx - mu_x * mu_x
    sigma_y = mu_yy - mu_y * mu_y
    sigma_xy = mu_xy - mu_x * mu_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    cs = (2.0 * sigma_xy + c2) / (sigma_x + sigma_y + c2)
    ssim = (2.0 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1) * cs
    return ssim, cs


def ms_ssim_values(pred: Tensor, target: Tensor, data_range: float) -> Tensor:
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
        ssim_full, cs_full = ssim_and_cs(pred, target, data_range)
        if level < levels - 1:
            factors.append(torch.relu(cs_full.mean((2, 3))))
            # pytorch-msssim's pooling: 2x2 mean, odd sizes zero-padded (count_include_pad).
            padding = [size % 2 for size in pred.shape[-2:]]
            pred = F.avg_pool2d(pred, kernel_size=2, padding=padding)
            target = F.avg_pool2d(target, kernel_size=2, padding=padding)
    factors.append(torch.relu(ssim_full.mean((2, 3))))
    per_channel = torch.stack([f**w for f, w in zip(factors, weights, strict=True)]).prod(0)
    return per_channel.mean(1)


def log_kernels(sigma: float, device: torch.device) -> tuple[Tensor, Tensor, int]:
    """1-D Gaussian and its second derivative as in ``scipy.ndimage`` (built on ``device``)."""
    radius = int(LOG_TRUNCATE * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    gauss = torch.exp(-0.5 * (x / sigma) ** 2)
    gauss = gauss / gauss.sum()
    second = gauss * (x**2 - sigma**2) / sigma**4
    return gauss, second, radius


def laplacian_of_gaussian(x: Tensor, sigma: float) -> Tensor:
    """LoG with reflect padding, same size as ``x``; equals ``scipy.ndimage.gaussian_laplace``.

    Hand-written: none of the project's dependencies offers a torch LoG (kornia needs Python
    3.11), and it is two separable convolutions.
    """
    gauss, second, radius = log_kernels(sigma, x.device)
    padded = pad_symmetric(x, radius)
    return separable(padded, second, gauss) + separable(padded, gauss, second)


def prewitt_magnitude(x: Tensor) -> Tensor:
    """Prewitt gradient magnitude over the valid region, shape (N, C, H - 2, W - 2).

    The 3x3 kernels are ``[1, 0, -1]`` ⊗ ``[1, 1, 1] / 3`` (Xue et al. 2014), built on the
    input's device.
    """
    diff = torch.arange(1, -2, -1, device=x.device, dtype=torch.float32)  # [1, 0, -1]
    smooth = torch.full((3,), 1.0 / 3.0, device=x.device, dtype=torch.float32)
    grad_w = separable(x, smooth, diff)
    grad_h = separable(x, diff, smooth)
    return torch.sqrt(grad_w**2 + grad_h**2)


def psnr_from_mse(mse: Tensor, data_range: float) -> Tensor:
    return 10.0 * torch.log10(data_range**2 / mse)


def hfen_from_log(log_error: Tensor, log_target: Tensor, mask: Tensor | None) -> Tensor:
    return (masked_sum(log_error**2, mask) / masked_sum(log_target**2, mask)).sqrt()


def gms_map(grad_pred: Tensor, grad_target: Tensor, data_range: float) -> Tensor:
    c = GMSD_C_UNIT * data_range**2
    return (2 * grad_pred * grad_target + c) / (grad_pred**2 + grad_target**2 + c)


def sharpness_from_grad(grad_pred: Tensor, grad_target: Tensor, mask: Tensor | None) -> Tensor:
    return masked_mean(grad_pred, mask) / masked_mean(grad_target, mask)
