"""Raster formats: PNG (Pillow), TIFF (tifffile) and NPY (numpy) readers and writers, plus
the public :func:`write_png` / :func:`read_png` helpers used to write previews and 16-bit
results. See the :mod:`medi2i.data.io` conventions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from medi2i.data.io.common import (
    ImageIOError,
    ImageMeta,
    _check_readable,
    _finish,
    _no_slices,
    _round_clip,
    _squeeze_2d,
    _to_dtype,
    failures_as,
    logger,
)
from medi2i.utils.atomic import atomic_path

# --------------------------------------------------------------------------------------------
# PNG: write_png/read_png (used by other modules for previews and 16-bit results) and the
# read_image / write_image side
# --------------------------------------------------------------------------------------------


def _save_png(dest: Path, arr: np.ndarray, *, dpi: tuple[float, float] | None = None) -> Path:
    """Save a prepared uint8/uint16/bool 2D array as PNG atomically (format forced to PNG)."""
    if arr.dtype == np.uint16:
        arr = np.ascontiguousarray(arr, dtype="<u2")  # Pillow: '<u2' -> mode 'I;16'
    else:
        arr = np.ascontiguousarray(arr)
    img = Image.fromarray(arr)
    params: dict[str, Any] = {}
    if dpi is not None:
        params["dpi"] = tuple(float(d) for d in dpi)
    logger.debug("%s: writing PNG mode %s shape %s", dest, img.mode, arr.shape)
    try:
        with atomic_path(dest) as tmp:
            img.save(tmp, format="PNG", **params)
    except OSError as exc:
        raise ImageIOError(dest, f"cannot write PNG ({exc})") from exc
    return dest


def write_png(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a 2D uint8 or uint16 array as an 8- or 16-bit greyscale PNG, atomically.

    Values are written exactly as given (no scaling): uint8 gives an 8-bit PNG, uint16 a
    16-bit PNG. ``array[r, c]`` becomes the pixel at row ``r`` (from the top), column ``c``.

    Args:
        path: destination file; the format is PNG whatever the suffix.
        array: 2D ``uint8`` or ``uint16`` array, non-empty.

    Returns:
        The destination path.

    Raises:
        ImageIOError: if the array is not 2D, is empty or has another dtype.
    """
    dest = Path(path)
    arr = np.asarray(array)
    if arr.ndim != 2 or arr.size == 0:
        raise ImageIOError(dest, f"expected a non-empty 2D array to write as PNG, got {arr.shape}")
    if arr.dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)):
        raise ImageIOError(
            dest, f"expected a uint8 or uint16 array to write as PNG, got dtype {arr.dtype}"
        )
    return _save_png(dest, arr)


def _read_png(src: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a greyscale PNG's stored values and describe how they were stored."""
    with (
        failures_as(src, "cannot read PNG, the file is corrupt or truncated"),
        Image.open(src) as img,
    ):
        img.load()
        mode, fmt, info = img.mode, img.format, dict(img.info)
        arr = np.array(img)
    if fmt != "PNG":
        logger.warning("%s: file is %s, not PNG; reading it anyway", src, fmt)
    if mode in ("P", "PA"):
        raise ImageIOError(
            src, f"expected single-channel greyscale, got mode {mode} (palette image)"
        )
    bit_depth = 8
    if mode == "L":
        pass
    elif mode == "1":
        arr, bit_depth = arr.astype(np.uint8), 1
    elif mode.startswith("I;16"):
        arr, bit_depth = arr.astype(np.uint16), 16  # also turns I;16B into native order
    elif mode == "I":  # older Pillow opens 16-bit greyscale PNG as 32-bit 'I'
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageIOError(src, f"mode I values outside 0..65535 ({arr.min()}..{arr.max()})")
        arr, bit_depth = arr.astype(np.uint16), 16
    elif mode in ("LA", "RGB", "RGBA"):
        n_colour = 1 if mode == "LA" else 3
        colour = arr[..., :n_colour]
        if not np.all(colour == colour[..., :1]):
            raise ImageIOError(
                src, f"expected single-channel greyscale, got mode {mode} with differing channels"
            )
        if mode in ("LA", "RGBA") and not np.all(arr[..., -1] == np.iinfo(arr.dtype).max):
            raise ImageIOError(
                src, f"expected single-channel greyscale, got mode {mode} with transparency"
            )
        logger.warning(
            "%s: mode %s PNG with identical colour channels; using the first channel", src, mode
        )
        arr = np.ascontiguousarray(colour[..., 0])
    else:
        raise ImageIOError(src, f"expected single-channel greyscale, got mode {mode}")
    details = {"bit_depth": bit_depth, "mode": mode, "dpi": info.get("dpi")}
    return arr, details


def read_png(path: str | os.PathLike) -> np.ndarray:
    """Read a greyscale PNG and return its stored values without conversion.

    Args:
        path: PNG file (8- or 16-bit greyscale; 1-bit reads as 0/1; RGB/RGBA/LA only when the
            colour channels are equal and the image is opaque).

    Returns:
        2D ``uint8`` (1- and 8-bit) or ``uint16`` (16-bit) array, (rows, cols).

    Raises:
        ImageIOError: if the file cannot be decoded or is not single-channel greyscale.
    """
    src = Path(path)
    _check_readable(src)
    arr, _ = _read_png(src)
    return arr


def _read_png_image(src: Path, slice_index: int | None) -> tuple[np.ndarray, ImageMeta]:
    _no_slices(src, slice_index, "PNG file")
    data, details = _read_png(src)
    logger.debug("%s: PNG mode %s, %d-bit", src, details["mode"], details["bit_depth"])
    meta = ImageMeta(
        path=src,
        format="png",
        shape=(int(data.shape[0]), int(data.shape[1])),
        stored_dtype=data.dtype.name,
        extra=details,
    )
    return _finish(src, data), meta


def _write_png_image(dest: Path, arr: np.ndarray, meta: ImageMeta) -> None:
    bit_depth = meta.extra.get("bit_depth")
    if bit_depth is None:
        bit_depth = 16 if np.dtype(meta.stored_dtype).itemsize > 1 else 8
    values = arr.astype(np.float64)
    if bit_depth == 1:
        data = _round_clip(dest, values, 0.0, 1.0).astype(np.bool_)
    else:
        data = _to_dtype(dest, values, np.dtype(np.uint16 if bit_depth == 16 else np.uint8))
    _save_png(dest, data, dpi=meta.extra.get("dpi"))


# --------------------------------------------------------------------------------------------
# TIFF
# --------------------------------------------------------------------------------------------


def _read_tiff(src: Path, slice_index: int | None) -> tuple[np.ndarray, ImageMeta]:
    with (
        failures_as(src, "cannot read TIFF, the file is corrupt or truncated"),
        tifffile.TiffFile(src) as tif,
    ):
        n_pages = len(tif.pages)
        if n_pages == 0:
            raise ImageIOError(src, "TIFF file has no pages")
        if n_pages > 1 and slice_index is None:
            raise ImageIOError(
                src,
                f"multi-page TIFF with {n_pages} pages; pass slice_index (0..{n_pages - 1})",
            )
        k = slice_index or 0
        if k >= n_pages:
            raise ImageIOError(src, f"slice_index={k} out of range for {n_pages} pages")
        page = tif.pages[k]
        samples = int(page.samplesperpixel)
        if samples != 1:
            raise ImageIOError(
                src, f"expected single-channel greyscale TIFF, got {samples} samples per pixel"
            )
        data = page.asarray()
        tags = page.tags
        resolution = None
        if "XResolution" in tags and "YResolution" in tags:
            resolution = (tuple(tags["XResolution"].value), tuple(tags["YResolution"].value))
        unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else None
        extra = {
            "photometric": int(page.photometric),
            "resolution": resolution,
            "resolutionunit": unit,
            "description": page.description or None,
            "page_index": k,
            "n_pages": n_pages,
        }
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    if data.dtype.kind not in "iuf":
        raise ImageIOError(src, f"unsupported TIFF pixel dtype {data.dtype}")
    data, squeezed = _squeeze_2d(src, data, "TIFF page")
    extra["squeezed_axis"] = squeezed
    logger.debug("%s: TIFF page %d of %d, dtype %s", src, extra["page_index"], n_pages, data.dtype)
    meta = ImageMeta(
        path=src,
        format="tiff",
        shape=(int(data.shape[0]), int(data.shape[1])),
        stored_dtype=data.dtype.name,
        extra=extra,
    )
    return _finish(src, data), meta


def _write_tiff(dest: Path, arr: np.ndarray, meta: ImageMeta) -> None:
    extra = meta.extra
    dtype = np.dtype(meta.stored_dtype)
    if dtype.kind == "f" and dtype.itemsize < 4:
        dtype = np.dtype(np.float32)
    data = _to_dtype(dest, arr.astype(np.float64), dtype)
    kwargs: dict[str, Any] = {
        "photometric": "miniswhite" if extra.get("photometric") == 0 else "minisblack",
        "metadata": None,
        "software": "medi2i",
    }
    if extra.get("resolution"):
        kwargs["resolution"] = tuple(extra["resolution"])
        if extra.get("resolutionunit") is not None:
            kwargs["resolutionunit"] = int(extra["resolutionunit"])
    if extra.get("description"):
        kwargs["description"] = str(extra["description"])
    logger.debug("%s: writing TIFF dtype %s", dest, dtype)
    with failures_as(dest, "cannot write TIFF"), atomic_path(dest) as tmp:
        tifffile.imwrite(tmp, data, **kwargs)


# --------------------------------------------------------------------------------------------
# NPY
# --------------------------------------------------------------------------------------------


def _read_npy(src: Path, slice_index: int | None) -> tuple[np.ndarray, ImageMeta]:
    with failures_as(src, "cannot read NPY, the file is corrupt or not a .npy"):
        data = np.load(src, allow_pickle=False)
    if not isinstance(data, np.ndarray):
        if hasattr(data, "close"):
            data.close()
        raise ImageIOError(src, "expected a single .npy array, got an .npz archive")
    if data.dtype.kind not in "biuf":
        raise ImageIOError(src, f"expected a numeric array, got dtype {data.dtype}")
    volume_shape = tuple(int(s) for s in data.shape)
    data, squeezed = _squeeze_2d(src, data, "array")
    _no_slices(src, slice_index, "NPY array")
    stored_dtype = data.dtype.name
    logger.debug("%s: NPY shape %s dtype %s", src, volume_shape, data.dtype)
    meta = ImageMeta(
        path=src,
        format="npy",
        shape=(int(data.shape[0]), int(data.shape[1])),
        stored_dtype=stored_dtype,
        extra={"dtype": data.dtype.str, "squeezed_axis": squeezed, "volume_shape": volume_shape},
    )
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    return _finish(src, data), meta


def _write_npy(dest: Path, arr: np.ndarray, meta: ImageMeta) -> None:
    dtype = np.dtype(meta.extra.get("dtype") or meta.stored_dtype)
    data = _to_dtype(dest, arr.astype(np.float64), dtype)
    squeezed = meta.extra.get("squeezed_axis")
    if squeezed is not None:
        data = np.expand_dims(data, squeezed)
    logger.debug("%s: writing NPY shape %s dtype %s", dest, data.shape, dtype)
    with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
        np.save(fh, data, allow_pickle=False)
