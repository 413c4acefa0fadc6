"""Small image helpers for previews and sample grids (benchmark previews, training samples).

Everything here works on plain numpy arrays: greyscale tiles are ``(H, W)`` (float in a known
range, or uint8/uint16), colour tiles ``(H, W, 3)`` uint8. Grids are RGB uint8.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from medi2i.utils.atomic import atomic_path

logger = logging.getLogger(__name__)

__all__ = ["make_grid", "overlay_mask", "save_rgb_png", "to_uint8"]

_LABEL_HEIGHT_PX = 14


def to_uint8(img: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Map ``[lo, hi]`` linearly to ``[0, 255]`` (clipped, rounded) and return uint8.

    Args:
        img: array of any real dtype and shape.
        lo: value shown black.
        hi: value shown white (must differ from ``lo``).

    Returns:
        uint8 array of the same shape.

    Raises:
        ValueError: if ``hi == lo``.
    """
    if hi == lo:
        raise ValueError(f"hi and lo must differ, got lo=hi={lo}")
    scaled = (np.asarray(img, dtype=np.float64) - lo) / (hi - lo)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def _as_rgb(tile: np.ndarray) -> np.ndarray:
    """Greyscale (float in [0, 1], uint8 or uint16) or RGB uint8 tile -> RGB uint8."""
    arr = np.asarray(tile)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return arr if arr.dtype == np.uint8 else to_uint8(arr)
    if arr.ndim != 2:
        raise ValueError(f"tiles must be (H, W) or (H, W, 3), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        grey = arr
    elif arr.dtype == np.uint16:
        grey = to_uint8(arr, 0, 65535)
    elif arr.dtype == np.bool_:
        grey = arr.astype(np.uint8) * 255
    else:
        grey = to_uint8(arr)
    return np.repeat(grey[..., None], 3, axis=-1)


def overlay_mask(
    gray: np.ndarray,
    mask: np.ndarray,
    color: tuple[int, int, int] = (255, 64, 64),
    alpha: float = 0.35,
) -> np.ndarray:
    """Tint the pixels of ``mask`` on a greyscale image.

    Args:
        gray: ``(H, W)`` greyscale image (float in [0, 1], uint8 or uint16) or RGB uint8.
        mask: ``(H, W)`` boolean (or anything, non-zero = inside).
        color: RGB colour of the tint.
        alpha: opacity of the tint in ``[0, 1]``.

    Returns:
        ``(H, W, 3)`` uint8 image.

    Raises:
        ValueError: if the shapes differ or ``alpha`` is outside ``[0, 1]``.
    """
    rgb = _as_rgb(gray).astype(np.float64)
    inside = np.asarray(mask).astype(bool)
    if inside.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {inside.shape} does not match image shape {rgb.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    tint = np.asarray(color, dtype=np.float64)
    rgb[inside] = (1.0 - alpha) * rgb[inside] + alpha * tint
    return np.round(rgb).astype(np.uint8)


def make_grid(
    rows: Sequence[Sequence[np.ndarray]],
    pad: int = 2,
    labels: Sequence[str] | None = None,
) -> np.ndarray:
    """Assemble tiles into one RGB image, row by row, with optional column labels on top.

    Tiles may differ in size: each cell is as large as the largest tile and tiles sit at its
    top-left corner. Float greyscale tiles are assumed to lie in ``[0, 1]``.

    Args:
        rows: list of rows, each a list of tiles (``(H, W)`` greyscale or ``(H, W, 3)`` uint8).
        pad: white-ish gap in pixels between and around the tiles.
        labels: one text per column, drawn in a strip above the first row.

    Returns:
        ``(H_total, W_total, 3)`` uint8 image.

    Raises:
        ValueError: if there are no tiles, a tile has an unsupported shape, or ``labels`` does not
            have one entry per column.
    """
    tiles = [[_as_rgb(tile) for tile in row] for row in rows]
    if not tiles or not any(tiles):
        raise ValueError("make_grid needs at least one tile")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    n_cols = max(len(row) for row in tiles)
    if labels is not None and len(labels) != n_cols:
        raise ValueError(f"got {len(labels)} labels for {n_cols} columns")
    cell_h = max(tile.shape[0] for row in tiles for tile in row)
    cell_w = max(tile.shape[1] for row in tiles for tile in row)
    top = _LABEL_HEIGHT_PX + pad if labels is not None else 0
    height = top + pad + len(tiles) * (cell_h + pad)
    width = pad + n_cols * (cell_w + pad)
    grid = np.full((height, width, 3), 40, dtype=np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            y = top + pad + r * (cell_h + pad)
            x = pad + c * (cell_w + pad)
            grid[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    if labels is not None:
        image = Image.fromarray(grid)
        draw = ImageDraw.Draw(image)
        font = ImageFont.load_default()
        for c, text in enumerate(labels):
            draw.text(
                (pad + c * (cell_w + pad) + 2, pad), str(text), fill=(255, 255, 255), font=font
            )
        grid = np.asarray(image, dtype=np.uint8).copy()
    return grid


def save_rgb_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an RGB (or greyscale) uint8 image as PNG, atomically.

    Args:
        path: destination file; its folder is created if missing.
        rgb: ``(H, W, 3)`` or ``(H, W)`` uint8 array.

    Returns:
        The destination path.

    Raises:
        ValueError: if the array is not uint8 ``(H, W[, 3])``.
    """
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        raise ValueError(f"expected uint8 (H, W, 3) or (H, W), got {arr.dtype} {arr.shape}")
    dest = Path(path)
    with atomic_path(dest) as tmp:
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")
    logger.debug("wrote %s (%dx%d)", dest, arr.shape[1], arr.shape[0])
    return dest
