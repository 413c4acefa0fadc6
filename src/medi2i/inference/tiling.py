"""Sliding-window (tiled) inference for images larger than a tile, never resizing.

A thin, checked wrapper around MONAI's :func:`monai.inferers.sliding_window_inference`: tiles
of ``tile x tile`` pixels overlapping by ``overlap`` (a fraction of the tile), blended with a
Gaussian importance map (sigma 0.125 of the tile, MONAI's default), so seams between tiles
vanish. Along a side that is not larger than the tile the window shrinks to that side instead,
so MONAI never pads the image; an image that fits in one tile is predicted whole.

Tiles are sized evenly (:func:`even_tile`): along a side longer than the tile, the number of
tiles MONAI would place at ``tile`` is kept and the tile shrinks to the smallest side (rounded
up to G's size multiple) that still covers the image with the requested overlap. A 2048-px
image in 1024-px tiles overlapping by a quarter needs three tiles a side either way; at 832 px
they cover 6.2 million pixels instead of 9.4 (a third less work), and no tile is ever larger
than ``tile``, so memory stays bounded as before.

Tiled and whole-image predictions of a larger image are not identical, and cannot be with
G's GroupNorm layers: their statistics are taken over the whole extent G is given, so a pixel's
output depends on the extent around it. The normalisation is the only cause: the same UNet
without normalisation layers gives the same output tiled or whole, to 1e-5 of the range
(``tests/test_inference.py``). On the bone-suppression benchmark, 256-px images
predicted whole or in 192-px tiles overlapping by half differ by 0.24% of the range on
average, and the tiled outputs are the closer to the truth: lung PSNR 39.4 vs 38.6 dB (the
model was trained on 128-px crops; ``benchmarks/bench_tiling.py``). Blending the overlaps keeps
the seams invisible.

The importance map is built here and passed as ``roi_weight_map``: MONAI's own Gaussian map is
clamped from below at 1e-3, which gives a tile's edge pixels (where the network lacks context)
the same weight as a neighbour's near-centre pixels wherever two Gaussian tails multiply (tile
corners, the image border), leaving visible seams there (errors of ~0.1 on a unit range with a
two-layer conv net). The unclamped map stays positive (>= exp(-8) ~ 3e-7 at a tile corner).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from monai.inferers import sliding_window_inference
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TILE",
    "GAUSSIAN_SIGMA_SCALE",
    "check_tiling",
    "even_tile",
    "gaussian_weights",
    "tiled_apply",
]

DEFAULT_TILE = 1024
"""Tile side (px) prediction uses unless told otherwise: an image with a side longer than this
is predicted tile by tile, so G's activations are bounded by one tile's whatever the image size
(measured with the small G on CPU at one tile per pass: peak memory 1.5 GB for 1024-px tiles,
against 3.9 GB for a whole 2048x2048 image and 14.3 GB for a whole 4096x4096 one). An image
that fits is predicted whole."""

GAUSSIAN_SIGMA_SCALE = 0.125
"""Standard deviation of the blending weights as a fraction of the tile (MONAI's default)."""


def check_tiling(tile: int | None, overlap: float) -> None:
    """Validate tiling settings.

    Args:
        tile: tile side in pixels, or ``None`` for whole-image prediction.
        overlap: fraction of the tile shared with the neighbouring tile.

    Raises:
        ValueError: a tile smaller than 8 px or an overlap outside ``[0, 1)``.
    """
    if tile is not None and (isinstance(tile, bool) or int(tile) != tile or tile < 8):
        raise ValueError(f"tile must be an integer >= 8 px (or None), got {tile!r}")
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")


def _tile_count(side: int, tile: int, overlap: float) -> int:
    """Tiles MONAI's sliding window places along a side: its integer stride, the last tile
    moved back to end at the border."""
    if side <= tile:
        return 1
    stride = max(1, int(tile * (1.0 - overlap)))
    return math.ceil((side - tile) / stride) + 1


def even_tile(side: int, tile: int, overlap: float, multiple: int = 1) -> int:
    """The tile side for one image side: as many tiles as ``tile`` needs, each as small as covers.

    ``n`` tiles of side ``t`` overlapping by ``overlap`` cover about
    ``t * (1 + (n - 1) * (1 - overlap))`` pixels, so with the ``n`` that MONAI places at
    ``tile`` the smallest tile is about ``side / (1 + (n - 1) * (1 - overlap))``; it is rounded
    up to ``multiple`` and grown (by ``multiple``) until MONAI's integer stride places no more
    than ``n`` tiles, and never exceeds ``tile``. A side that fits in one tile is returned as it
    is.

    Args:
        side: the image side in px.
        tile: the largest tile side in px.
        overlap: overlap of neighbouring tiles, a fraction of the tile in ``[0, 1)``.
        multiple: round the tile up to a multiple of this (G's size multiple).
    """
    if side <= tile:
        return side
    step = max(1, int(multiple))
    count = _tile_count(side, tile, overlap)
    needed = math.ceil(side / (1.0 + (count - 1) * (1.0 - overlap)))
    even = -(-needed // step) * step
    while even < tile and _tile_count(side, even, overlap) > count:
        even += step
    return min(tile, even)


def gaussian_weights(
    size: tuple[int, int], sigma_scale: float = GAUSSIAN_SIGMA_SCALE, device=None
) -> Tensor:
    """Separable Gaussian blending weights of one tile, 1 at the centre, never clamped.

    Args:
        size: ``(h, w)`` of the tile.
        sigma_scale: standard deviation as a fraction of each side.
        device: where to build the map.

    Returns:
        ``(h, w)`` float32 tensor of positive weights.
    """
    axes = []
    for n in size:
        coords = torch.arange(n, dtype=torch.float64, device=device) - (n - 1) / 2.0
        axes.append(torch.exp(-(coords**2) / (2.0 * (sigma_scale * n) ** 2)))
    return (axes[0][:, None] * axes[1][None, :]).float()


def tiled_apply(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    tile: int,
    overlap: float = 0.25,
    batch_size: int = 4,
    multiple: int = 1,
) -> Tensor:
    """Apply ``fn`` tile by tile and blend, or in one go when ``x`` fits in a tile.

    Args:
        fn: maps ``(B, C, h, w)`` to ``(B, C', h, w)`` (same spatial size).
        x: ``(N, C, H, W)`` input.
        tile: tile side in pixels.
        overlap: overlap between neighbouring tiles, a fraction of the tile in ``[0, 1)``.
        batch_size: tiles per call of ``fn``.
        multiple: tile sides are rounded up to a multiple of this (:func:`even_tile`).

    Returns:
        ``(N, C', H, W)``, on ``x``'s device, in ``fn``'s output dtype.

    Raises:
        ValueError: for bad tiling settings or an input that is not 4D.
    """
    check_tiling(tile, overlap)
    if x.ndim != 4:
        raise ValueError(f"tiled inference expects (N, C, H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return fn(x)
    roi = (even_tile(h, tile, overlap, multiple), even_tile(w, tile, overlap, multiple))
    log.debug("tiled inference: %dx%d image, %dx%d tiles, overlap %.2f", h, w, *roi, overlap)
    out = sliding_window_inference(
        x,
        roi_size=roi,
        sw_batch_size=max(1, int(batch_size)),
        predictor=fn,
        overlap=float(overlap),
        mode="gaussian",
        sigma_scale=GAUSSIAN_SIGMA_SCALE,
        roi_weight_map=gaussian_weights(roi, device=x.device),
        progress=False,
    )
    return out.as_tensor() if hasattr(out, "as_tensor") else out
