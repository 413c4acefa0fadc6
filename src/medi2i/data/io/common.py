"""Shared pieces of :mod:`medi2i.data.io`: the error and metadata types and the helpers
every format module uses (file and slice-index checks, shape squeezing, conversion to the
returned float32 array, dtype ranges, rounding and clipping to a stored dtype)."""

from __future__ import annotations

import contextlib
import logging
import operator
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# One logger for the whole subpackage, under the package's name (as before the split into
# modules), so that configuring or capturing "medi2i.data.io" covers every format.
logger = logging.getLogger("medi2i.data.io")


class ImageIOError(ValueError):
    """An image file could not be read or written.

    The message always starts with the file's path followed by the problem.

    Attributes:
        path: the file concerned.
        problem: the problem, without the path.
    """

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # keep picklable (DataLoader workers send exceptions back)
        return (type(self), (self.path, self.problem))


@contextlib.contextmanager
def failures_as(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn any failure inside the block into an :class:`ImageIOError` naming ``path``.

    The message is ``"<what> (<the library's error>)"``: the file, what medi2i was doing and
    why the library refused. An :class:`ImageIOError` raised inside passes through as it is.
    """
    try:
        yield
    except ImageIOError:
        raise
    except Exception as exc:
        raise ImageIOError(path, f"{what} ({exc})") from exc


@dataclass
class ImageMeta:
    """What :func:`write_image` needs to write a result back like the input.

    Attributes:
        path: the file that was read.
        format: ``'dicom'``, ``'nifti'``, ``'png'``, ``'tiff'`` or ``'npy'``.
        shape: (rows, cols) of the array :func:`read_image` returned.
        stored_dtype: dtype of the stored pixel values, e.g. ``'uint16'``, ``'int16'``,
            ``'float32'``.
        extra: format-specific details. dicom: ``dataset`` (the pydicom Dataset without its
            pixel data), ``rescale``, ``modality_lut``, ``invert_sum``, ``stored_range``,
            ``voi_applied``, ``frame_index``, ``n_frames``, ``transfer_syntax``; nifti:
            ``affine``, ``header``, ``nifti_version``, ``volume_shape``, ``image_axes``,
            ``slice_index``, ``scaled``; png: ``bit_depth`` (1, 8 or 16), ``mode``, ``dpi``;
            tiff: ``photometric``, ``resolution``, ``resolutionunit``, ``description``,
            ``page_index``, ``n_pages``; npy: ``dtype`` (with byte order), ``volume_shape``.
    """

    path: Path
    format: str
    shape: tuple[int, int]
    stored_dtype: str
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _check_readable(src: Path) -> None:
    if not src.exists():
        raise ImageIOError(src, "file not found")
    if not src.is_file():
        raise ImageIOError(src, "not a regular file")
    if src.stat().st_size == 0:
        raise ImageIOError(src, "file is empty (0 bytes)")


def _check_slice_index(src: Path, slice_index: int | None) -> int | None:
    if slice_index is None:
        return None
    if isinstance(slice_index, bool):
        raise ImageIOError(src, f"slice_index must be an integer, got {slice_index!r}")
    try:
        k = operator.index(slice_index)
    except TypeError as exc:
        raise ImageIOError(src, f"slice_index must be an integer, got {slice_index!r}") from exc
    if k < 0:
        raise ImageIOError(src, f"slice_index must be >= 0, got {k}")
    return k


def _no_slices(src: Path, slice_index: int | None, what: str) -> None:
    if slice_index not in (None, 0):
        raise ImageIOError(
            src, f"{what} holds a single 2D image; slice_index={slice_index} is out of range"
        )


def _squeeze_2d(src: Path, arr: np.ndarray, what: str) -> tuple[np.ndarray, int | None]:
    """Accept (H, W), (1, H, W) or (H, W, 1); return the 2D array and the squeezed axis."""
    if arr.ndim == 2:
        return arr, None
    if arr.ndim == 3 and arr.shape[0] == 1:
        return arr[0], 0
    if arr.ndim == 3 and arr.shape[-1] == 1:
        return arr[..., 0], 2
    raise ImageIOError(
        src,
        f"expected a single-channel 2D {what} of shape (H, W), (1, H, W) or (H, W, 1), "
        f"got shape {arr.shape}",
    )


def _finish(src: Path, values: np.ndarray) -> np.ndarray:
    """Convert to a contiguous 2D float32 array; reject empty and non-finite images."""
    if values.size == 0:
        raise ImageIOError(src, f"image contains no pixels (shape {values.shape})")
    out = np.ascontiguousarray(values, dtype=np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        n_nan = int(np.count_nonzero(np.isnan(out)))
        n_inf = int(out.size - np.count_nonzero(finite) - n_nan)
        raise ImageIOError(
            src,
            f"image contains {n_nan} NaN and {n_inf} infinite values out of {out.size} pixels "
            "(after conversion to float32)",
        )
    return out


def _dtype_range(dtype: np.dtype) -> tuple[float, float]:
    if dtype == np.bool_:
        return 0.0, 1.0
    info = np.iinfo(dtype)
    lo, hi = float(info.min), float(info.max)
    if hi > info.max:  # 64-bit: float(max) rounds up past the range
        hi = float(np.nextafter(hi, -np.inf))
    return lo, hi


CLIP_WARN_MARGIN = 0.01
"""Overshoot beyond a stored range, as a fraction of the range, that clipping warns about.

A prediction of an image whose background sits at the range's end (black air at 0) scatters
around that end, so a few percent of a normal output's pixels lie a few grey levels outside
the range; clipping those changes nothing and is logged at debug level only. A pixel beyond
the range by more than this fraction of it is a value the image cannot hold; when more than
:data:`CLIP_WARN_SHARE` of the pixels are such, a warning gives their count and the largest
overshoot."""

CLIP_WARN_SHARE = 0.001
"""Share of pixels overshooting materially (:data:`CLIP_WARN_MARGIN`) above which clipping is
warned about: a handful of stray pixels in an otherwise sound prediction is not a problem."""


def _round_clip(dest: Path, values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Round to nearest and clip to [lo, hi]; warn about material overshoot.

    Pixels beyond the range by more than :data:`CLIP_WARN_MARGIN` of it are counted in a
    warning when they are more than :data:`CLIP_WARN_SHARE` of the image; other clipping is
    reported at debug level.
    """
    rounded = np.rint(values)
    below, above = rounded < lo, rounded > hi
    n_clipped = int(np.count_nonzero(below | above))
    if n_clipped:
        overshoot = np.maximum(lo - rounded, rounded - hi)
        margin = CLIP_WARN_MARGIN * max(hi - lo, 1.0)
        n_material = int(np.count_nonzero(overshoot > margin))
        if n_material > CLIP_WARN_SHARE * rounded.size:
            logger.warning(
                "%s: %d of %d pixels (%.3f%%) lay beyond the stored range [%g, %g] by more "
                "than %g%% of it (up to %g) and were clipped",
                dest,
                n_material,
                rounded.size,
                100.0 * n_material / rounded.size,
                lo,
                hi,
                100.0 * CLIP_WARN_MARGIN,
                float(overshoot.max()),
            )
        logger.debug(
            "%s: %d pixels outside the stored range [%g, %g] clipped", dest, n_clipped, lo, hi
        )
    return np.clip(rounded, lo, hi)


def _to_dtype(dest: Path, values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Convert float values to ``dtype``: round/clip for integers, plain cast for floats."""
    if dtype.kind == "f":
        return values.astype(dtype)
    if dtype.kind not in "biu":
        raise ImageIOError(dest, f"cannot write pixel values as dtype {dtype}")
    lo, hi = _dtype_range(dtype)
    return _round_clip(dest, values, lo, hi).astype(dtype)
