"""Lung-weighted reconstruction loss: ``l1_weight·L1 + ssim_weight·(1 − SSIM)``.

Every pixel carries a weight ``w = 1 + (lung_weight − 1)·mask``: 1 outside the mask,
``lung_weight`` inside (a soft mask in [0, 1] interpolates). Both terms are weighted means,

    L1   = Σ w·|pred − target| / Σ w
    SSIM = Σ w'·S / Σ w'

per image (sums over channels and pixels), then averaged over the batch. Normalising by the
weight sum keeps the loss on the scale of a plain mean: a uniform error ``e`` gives ``L1 = e``
whatever the mask's size, so the loss does not jump when the lung is large or small in an image,
and every image in a batch counts the same.

SSIM map and mask alignment. ``S`` is the *valid* SSIM map of
:func:`medi2i.metrics.ssim_map` (Gaussian window 11 px, σ 1.5, MONAI's valid map computed with
one separable filter; differentiable). It is smaller than the image by the window's half-width
``b = 5`` px on each side, and its pixel ``(i, j)`` is the SSIM of the window centred on image
pixel ``(i + b, j + b)``. ``w'`` is therefore the pixel weight map *cropped* by ``b`` on each
side (not pooled): each SSIM value is weighted by the weight of its window's centre pixel, the
same convention as the masked SSIM metric (without a mask, ``1 − dssim`` equals the batch
mean of ``metrics.ssim``; with a binary mask and ``lung_weight → ∞`` it tends to the masked
SSIM metric). Mask pixels
within ``b`` px of the image border do not count in the SSIM term (there the window would leave
the image); they still count in the L1 term. The crop is derived from the map's shape, so it
follows the metrics module if its window ever changes.

Multi-resolution (``scale_weights``, e.g. ``(1, 0.5, 0.25)``): the same loss at full, 1/2 and
1/4 resolution, each level 2×2 average pooling of the one above for prediction, target and mask,
combined as ``Σ s_k·loss_k / Σ s_k`` (so the total stays on the scale of a plain mean and its
balance with the other terms of G's loss does not move with the number of levels). A coarse
pixel's mask value is the mean of its footprint's mask - the fraction of it that is lung - so its
weight ``1 + (lung_weight − 1)·mean(mask)`` is the mean of its footprint's weights: a pixel is as
much "lung" at a coarse level as its footprint is. Coarse levels compare structure at scales the
full-resolution window does not see; a level whose weight is 0 is not computed.

The SSIM code lives once, in :mod:`medi2i.metrics`; this module only weights its map.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from medi2i.metrics import ssim_map

logger = logging.getLogger(__name__)

__all__ = ["pixel_weights", "reconstruction_loss"]

_TINY = 1e-12
"""Guard for the weight sum (only reached when ``lung_weight`` is 0 and the mask covers all)."""


def _check_images(pred: Tensor, target: Tensor) -> None:
    if not isinstance(pred, Tensor) or not isinstance(target, Tensor):
        raise TypeError(
            f"reconstruction_loss: pred and target must be torch.Tensor, got "
            f"{type(pred).__name__} and {type(target).__name__}"
        )
    if pred.ndim != 4:
        raise ValueError(
            f"reconstruction_loss: expected pred of shape (N, C, H, W), got {tuple(pred.shape)}"
        )
    if target.shape != pred.shape:
        raise ValueError(
            f"reconstruction_loss: expected target of shape {tuple(pred.shape)} (same as pred), "
            f"got {tuple(target.shape)}"
        )


def pixel_weights(mask: Tensor | None, like: Tensor, lung_weight: float) -> Tensor:
    """Per-pixel loss weights: 1 outside the mask, ``lung_weight`` inside.

    Args:
        mask: (N, 1, H, W) or (N, C, H, W) mask, bool or float in [0, 1] (a soft mask gives
            ``1 + (lung_weight − 1)·mask``), or None (all weights 1).
        like: the (N, C, H, W) image the weights apply to (gives shape, device).
        lung_weight: weight inside the mask, ≥ 0.

    Returns:
        Float32 weights of shape (N, 1, H, W) or (N, C, H, W) (broadcastable to ``like``).

    Raises:
        ValueError: if the mask's shape does not fit ``like`` or ``lung_weight`` is negative.
        TypeError: if ``mask`` is not a tensor.
    """
    if lung_weight < 0:
        raise ValueError(f"pixel_weights: lung_weight must be >= 0, got {lung_weight}")
    n, c, h, w = like.shape
    if mask is None:
        return torch.ones((n, 1, h, w), dtype=torch.float32, device=like.device)
    if not isinstance(mask, Tensor):
        raise TypeError(f"pixel_weights: mask must be a torch.Tensor, got {type(mask).__name__}")
    if tuple(mask.shape) not in {(n, 1, h, w), (n, c, h, w)}:
        raise ValueError(
            f"pixel_weights: expected mask of shape {(n, 1, h, w)} or {(n, c, h, w)}, "
            f"got {tuple(mask.shape)}"
        )
    return 1.0 + (float(lung_weight) - 1.0) * mask.to(device=like.device, dtype=torch.float32)


def _weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Per-image ``Σ w·v / Σ w`` over (C, H, W), ``weights`` broadcast over channels."""
    weights = weights.expand_as(values)
    total = weights.sum(dim=(1, 2, 3)).clamp_min(_TINY)
    return (weights * values).sum(dim=(1, 2, 3)) / total


def _single_scale(
    p: Tensor,
    t: Tensor,
    weights: Tensor,
    *,
    data_range: float,
    l1_weight: float,
    ssim_weight: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, l1, dssim)`` at one resolution (float32 images, pixel weights)."""
    zero = p.new_zeros(())
    loss = l1 = dssim = zero
    if l1_weight != 0:
        l1 = _weighted_mean((p - t).abs(), weights).mean()
        loss = loss + l1_weight * l1
    if ssim_weight != 0:
        smap = ssim_map(p, t, data_range=data_range)
        map_h, map_w = smap.shape[-2:]
        top, left = (p.shape[-2] - map_h) // 2, (p.shape[-1] - map_w) // 2
        cropped = weights[..., top : top + map_h, left : left + map_w]
        dssim = _weighted_mean(1.0 - smap, cropped).mean()
        loss = loss + ssim_weight * dssim
    return loss, l1, dssim


def _check_scales(scale_weights: tuple[float, ...], shape: tuple[int, ...], ssim: bool) -> None:
    if not scale_weights or any(w < 0 for w in scale_weights) or sum(scale_weights) <= 0:
        raise ValueError(
            "reconstruction_loss: scale_weights must be non-negative with a positive sum, got "
            f"{list(scale_weights)}"
        )
    level = len(scale_weights) - 1
    if level == 0:
        return  # full resolution alone: the SSIM map's own check applies
    smallest = min(shape[-2:]) >> level
    if smallest < 1 or (ssim and scale_weights[-1] > 0 and smallest < 11):
        raise ValueError(
            f"reconstruction_loss: an image of {shape[-2]}x{shape[-1]} px is {smallest} px at "
            f"level {level} (1/{2**level}), too small for the "
            + ("SSIM window (11 px)" if ssim else "pooling")
            + "; use fewer levels or larger crops"
        )


def reconstruction_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    data_range: float,
    lung_weight: float = 10.0,
    l1_weight: float = 1.0,
    ssim_weight: float = 1.0,
    scale_weights: tuple[float, ...] = (1.0,),
) -> tuple[Tensor, dict[str, Tensor]]:
    """Lung-weighted ``l1_weight·L1 + ssim_weight·(1 − SSIM)`` (see the module docstring).

    Computed in float32 (inputs in half precision are cast up). A term whose weight is 0 is not
    computed, so images smaller than the SSIM window (11×11) work when ``ssim_weight`` is 0.

    Args:
        pred: prediction, (N, C, H, W); gradients flow to it.
        target: reference, same shape.
        mask: optional (N, 1, H, W) or (N, C, H, W) region of interest (bool or float in [0, 1]);
            None weights every pixel 1.
        data_range: width of the intensity range (1.0 for [0, 1], 2.0 for [−1, 1]); sets SSIM's
            stability constants.
        lung_weight: pixel weight inside the mask.
        l1_weight: weight of the L1 term.
        ssim_weight: weight of the ``1 − SSIM`` term.
        scale_weights: weight of each resolution level, full resolution first, each next level
            half the size (module docstring); ``(1,)`` is the full-resolution loss alone.

    Returns:
        ``(loss, parts)``: the scalar loss (batch mean) and a dict of detached scalars
        ``l1`` (weighted-mean absolute error) and ``dssim`` (weighted mean of ``1 − SSIM``),
        combined over the levels as the loss is; a term that is switched off reads 0.

    Raises:
        ValueError: on mismatched shapes, a bad mask, images smaller than 11×11 (at the
            coarsest level with a weight) with ``ssim_weight > 0``, bad ``scale_weights`` or a
            non-positive ``data_range``.
        TypeError: on arguments that are not tensors.
    """
    _check_images(pred, target)
    _check_scales(tuple(scale_weights), tuple(pred.shape), ssim_weight != 0)
    p, t = pred.float(), target.float()
    weights = pixel_weights(mask, p, lung_weight)
    total_weight = float(sum(scale_weights))
    loss = l1 = dssim = p.new_zeros(())
    for level, scale_weight in enumerate(scale_weights):
        if level:
            # a coarse pixel's weight is the mean of its footprint's (= from the mask's mean)
            p, t, weights = (F.avg_pool2d(a, 2) for a in (p, t, weights))
        if scale_weight == 0:
            continue
        share = scale_weight / total_weight
        level_loss, level_l1, level_dssim = _single_scale(
            p, t, weights, data_range=data_range, l1_weight=l1_weight, ssim_weight=ssim_weight
        )
        loss = loss + share * level_loss
        l1 = l1 + share * level_l1
        dssim = dssim + share * level_dssim
    return loss, {"l1": l1.detach(), "dssim": dssim.detach()}
