"""Format detection and the format-independent entry points :func:`read_image` and
:func:`write_image`, which route to the DICOM, NIfTI and raster (PNG/TIFF/NPY) modules."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medi2i.data.io.common import (
    ImageIOError,
    ImageMeta,
    _check_readable,
    _check_slice_index,
    _has_dicom_magic,
    logger,
)
from medi2i.data.io.dicom import _read_dicom, _write_dicom
from medi2i.data.io.nifti import _read_nifti, _write_nifti
from medi2i.data.io.raster import (
    _read_npy,
    _read_png_image,
    _read_tiff,
    _write_npy,
    _write_png_image,
    _write_tiff,
)

SUPPORTED_SUFFIXES: tuple[str, ...] = (
    ".dcm",
    ".dicom",
    ".nii",
    ".nii.gz",
    ".png",
    ".tif",
    ".tiff",
    ".npy",
)
"""Suffixes recognised (case-insensitively); files with another or no suffix are read as DICOM
when they carry the ``DICM`` magic at byte 128."""

_SUFFIX_FORMATS: dict[str, str] = {
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".png": "png",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".npy": "npy",
}
_FORMATS = ("dicom", "nifti", "png", "tiff", "npy")


# --------------------------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------------------------


def _suffix_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def detect_format(path: str | os.PathLike) -> str:
    """Return the format of an image file: by suffix, then by the DICOM ``DICM`` magic.

    Args:
        path: the file. Suffixes are matched case-insensitively (see ``SUPPORTED_SUFFIXES``);
            a file with any other or no suffix is DICOM if bytes 128..131 are ``DICM``.

    Returns:
        ``'dicom'``, ``'nifti'``, ``'png'``, ``'tiff'`` or ``'npy'``.

    Raises:
        ImageIOError: if the format is not supported.
    """
    p = Path(path)
    suffix = _suffix_of(p)
    fmt = _SUFFIX_FORMATS.get(suffix)
    if fmt is None and _has_dicom_magic(p):
        fmt = "dicom"
    if fmt is None:
        raise ImageIOError(
            p,
            f"unsupported file type {suffix or '(no suffix)'!r}; supported: "
            f"{', '.join(SUPPORTED_SUFFIXES)} or DICOM files with the 'DICM' preamble",
        )
    logger.debug("%s: detected format %s", p, fmt)
    return fmt


def is_image_file(path: str | os.PathLike) -> bool:
    """Tell whether a path looks like a readable image, for folder scanning.

    A supported suffix is enough (the file is not opened). Hidden files (name starting with
    ``.``, e.g. temporary files of :func:`atomic_path`) are skipped. Other files are accepted
    only if they exist and carry the DICOM ``DICM`` magic (DICOM exports often have no suffix
    or a UID-like name such as ``1.2.840...504``).

    Args:
        path: candidate path.

    Returns:
        True if :func:`read_image` should be able to read it.
    """
    p = Path(path)
    if p.name.startswith("."):
        return False
    if _suffix_of(p) in _SUFFIX_FORMATS:
        return True
    return p.is_file() and _has_dicom_magic(p)


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def read_image(
    path: str | os.PathLike, *, slice_index: int | None = None, apply_voi: bool = False
) -> tuple[np.ndarray, ImageMeta]:
    """Read one 2D single-channel image as float32 in physical/stored units.

    See the :mod:`medi2i.data.io` package docstring for the array-order, unit and MONOCHROME1
    conventions. The input file is only read, never modified.

    Args:
        path: a DICOM, NIfTI, PNG, TIFF or NPY file (see :func:`detect_format`).
        slice_index: which 2D image to take from a multi-frame DICOM (frame), a 3D NIfTI
            volume (index on the last axis) or a multi-page TIFF (page). Required for those
            when they hold more than one image; for single images only ``None`` or 0 is valid.
        apply_voi: DICOM only: apply the VOI LUT (preferred) or WindowCenter/WindowWidth with
            pydicom's ``apply_voi_lut``; values are then display values in the window's output
            range (MONOCHROME1 inverted within that range). Ignored for other formats.

    Returns:
        ``(array, meta)``: a C-contiguous 2D float32 array of shape (rows, cols) and the
        :class:`ImageMeta` to pass to :func:`write_image`.

    Raises:
        ImageIOError: if the file is missing, empty, corrupt, of an unsupported type, not a
            single-channel 2D image (or slice_index is missing/out of range), or contains
            NaN/infinite values.
    """
    src = Path(path)
    _check_readable(src)
    fmt = detect_format(src)
    k = _check_slice_index(src, slice_index)
    if apply_voi and fmt != "dicom":
        logger.debug("%s: apply_voi ignored for %s files", src, fmt)
    logger.debug("%s: reading with the %s reader", src, fmt)
    if fmt == "dicom":
        return _read_dicom(src, k, apply_voi)
    if fmt == "nifti":
        return _read_nifti(src, k)
    if fmt == "png":
        return _read_png_image(src, k)
    if fmt == "tiff":
        return _read_tiff(src, k)
    return _read_npy(src, k)


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def write_image(path: str | os.PathLike, array: np.ndarray, meta: ImageMeta) -> Path:
    """Write a 2D image in the format, dtype and metadata of the file ``meta`` came from.

    ``array`` holds values in the units :func:`read_image` returned (e.g. HU for CT DICOM).
    Integer stored dtypes are rounded to nearest and clipped to their range (a warning gives
    the clipped fraction); float dtypes stay float. The format follows ``meta.format``
    whatever the suffix of ``path``. The write is atomic.

    Args:
        path: destination file; must not be the input file ``meta.path``.
        array: 2D array (any real dtype), finite values.
        meta: the :class:`ImageMeta` returned by :func:`read_image` for the source file.

    Returns:
        The destination path.

    Raises:
        ImageIOError: if ``path`` is the input file, the array is not 2D/empty/non-finite, or
            ``meta`` lacks what the format needs.
    """
    dest = Path(path)
    if meta.path is not None and _same_file(dest, Path(meta.path)):
        raise ImageIOError(dest, "refusing to overwrite the input image; choose another path")
    arr = np.asarray(array)
    if arr.ndim != 2 or arr.size == 0:
        raise ImageIOError(dest, f"expected a non-empty 2D array to write, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise ImageIOError(dest, f"expected a real-valued array to write, got dtype {arr.dtype}")
    finite = np.isfinite(arr)
    if not finite.all():
        raise ImageIOError(
            dest, f"array to write contains {arr.size - int(finite.sum())} NaN/infinite values"
        )
    if tuple(arr.shape) != tuple(meta.shape):
        logger.warning(
            "%s: writing shape %s although the source was %s; spacing metadata may not apply",
            dest,
            arr.shape,
            tuple(meta.shape),
        )
    fmt = meta.format
    logger.debug("%s: writing as %s (stored dtype %s)", dest, fmt, meta.stored_dtype)
    if fmt == "dicom":
        _write_dicom(dest, arr, meta)
    elif fmt == "nifti":
        _write_nifti(dest, arr, meta)
    elif fmt == "png":
        _write_png_image(dest, arr, meta)
    elif fmt == "tiff":
        _write_tiff(dest, arr, meta)
    elif fmt == "npy":
        _write_npy(dest, arr, meta)
    else:
        raise ImageIOError(dest, f"unknown meta.format {fmt!r}; expected one of {_FORMATS}")
    return dest
