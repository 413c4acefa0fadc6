"""Pixel and structure fidelity: PSNR, MAE, SSIM (map and mean) and MS-SSIM."""

from __future__ import annotations

from torch import Tensor

from medi2i.metrics.checks import check_data_range, check_mask, check_pair, metric_function
from medi2i.metrics.maps import (
    SSIM_BORDER,
    SSIM_WIN_SIZE,
    crop_mask,
    masked_mean,
    ms_ssim_values,
    pad_symmetric,
    psnr_from_mse,
    ssim_and_cs,
)


@metric_function
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
    p, t = check_pair(pred, target, "psnr")
    dr = check_data_range(data_range, "psnr")
    m = check_mask(mask, p, "psnr")
    return psnr_from_mse(masked_mean((p - t) ** 2, m), dr)


@metric_function
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
    p, t = check_pair(pred, target, "mae")
    m = check_mask(mask, p, "mae")
    return masked_mean((p - t).abs(), m)


@metric_function
def ssim_map(pred: Tensor, target: Tensor, *, data_range: float, full: bool = False) -> Tensor:
    """SSIM map (Gaussian window 11 px, σ 1.5, K1 0.01, K2 0.03, population covariances).

    The valid map equals MONAI's ``compute_ssim_and_cs`` to float32 rounding
    (:func:`medi2i.metrics.maps.ssim_and_cs`).

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
    p, t = check_pair(pred, target, "ssim_map", SSIM_WIN_SIZE)
    dr = check_data_range(data_range, "ssim_map")
    if full:
        p, t = pad_symmetric(p, SSIM_BORDER), pad_symmetric(t, SSIM_BORDER)
    return ssim_and_cs(p, t, dr)[0]


@metric_function
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
    p, t = check_pair(pred, target, "ssim", SSIM_WIN_SIZE)
    dr = check_data_range(data_range, "ssim")
    m = check_mask(mask, p, "ssim")
    return masked_mean(ssim_and_cs(p, t, dr)[0], crop_mask(m, SSIM_BORDER, "ssim"))


@metric_function
def ms_ssim(pred: Tensor, target: Tensor, *, data_range: float) -> Tensor:
    """Multi-scale SSIM per image (higher is better), whole image only.

    Follows pytorch-msssim's ``ms_ssim`` (equal to it within float32 rounding on images
    > 160 px): at each scale the valid SSIM/CS maps, the mean CS clipped at 0 for the
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
    p, t = check_pair(pred, target, "ms_ssim", SSIM_WIN_SIZE)
    dr = check_data_range(data_range, "ms_ssim")
    return ms_ssim_values(p, t, dr)
