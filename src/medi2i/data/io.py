"""Reading and writing single-channel 2D medical images: DICOM, NIfTI, PNG, TIFF and NPY.

Every reader returns the image as a 2D ``float32`` array plus an :class:`ImageMeta` that holds
what :func:`write_image` needs to write a result back "like the input" (same format, stored
dtype, geometry and metadata). Files are read with the field's libraries: pydicom, nibabel,
Pillow, tifffile and numpy. MONAI's ``LoadImage`` is deliberately not used because its PIL and
pydicom readers return (W, H) arrays by default.

Conventions (pinned by ``tests/test_io.py``):

* **Array order.** ``array[r, c]`` is row ``r``, column ``c`` of the pixel array exactly as the
  library returns it: Pillow / tifffile / pydicom ``pixel_array`` give (rows, cols) with row 0
  at the top of the image; NPY is used as stored. NIfTI keeps nibabel's array order (axis 0 = i,
  axis 1 = j) with no reorientation, so a read/write round trip is exact; for a 3D volume the
  slice is ``volume[:, :, slice_index]`` (the last axis).
* **Units.** Values are physical/stored units, never normalised: PNG/TIFF/NPY as stored (a 16-bit
  PNG reads 0..65535); DICOM after the modality transform (RescaleSlope/RescaleIntercept, or the
  Modality LUT Sequence), i.e. HU for CT; NIfTI with the header's ``scl_slope``/``scl_inter``
  applied by nibabel.
* **MONOCHROME1** DICOM (higher stored value = darker) is inverted on read so that higher always
  means brighter/denser: ``value = (y_min + y_max) - modality(stored)``, where
  ``[y_min, y_max]`` is the modality output range of the stored range given by BitsStored and
  PixelRepresentation (pydicom's convention for windowing). For a linear rescale this equals
  rescaling ``(s_min + s_max) - stored``. The map is its own inverse; :func:`write_image` applies
  it again, so the PhotometricInterpretation of the written file stays MONOCHROME1 and the
  stored values round-trip bit for bit.
* **Writing.** :func:`write_image` takes values in the units that :func:`read_image` returned,
  rounds to nearest (``numpy.rint``, half to even) and clips to the stored dtype's range for
  integer formats (a warning reports the clipped fraction); float formats stay float. All writes
  are atomic (:func:`medi2i.utils.atomic.atomic_path`) and never replace the input file.
* **NIfTI slices.** A slice taken from a 3D volume with ``slice_index=k`` is written as a
  single-slice 3D image ``(I, J, 1)`` whose affine is shifted to the slice's position
  (``affine @ [0, 0, k, 1]`` becomes the new origin), so world coordinates of every voxel are
  unchanged and the slice thickness (pixdim[3]) keeps its meaning. A 2D source is written 2D;
  a 3D source with one singleton axis is written with the same 3D shape. If the source had
  ``scl_slope``/``scl_inter`` scaling, the result is written as float32 with slope 1 and
  intercept 0 (exact, no re-quantisation); otherwise the source data dtype is kept.
* **DICOM writing.** The source's metadata are copied; the pixel data are converted back to
  stored values and written uncompressed (Explicit VR Little Endian) whatever the source
  transfer syntax, with ImageType DERIVED\\SECONDARY, new SOP Instance and Series Instance UIDs,
  a SourceImageSequence pointing at the source instance, SeriesDescription suffixed with
  " medi2i" and a DerivationDescription.
"""

from __future__ import annotations

import copy
import gzip
import logging
import operator
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import tifffile
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

try:  # pydicom >= 3
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
except ImportError:  # pragma: no cover - pydicom 2.x
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

from medi2i.utils.atomic import atomic_path

logger = logging.getLogger(__name__)

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
_PYDICOM_MAJOR = int(pydicom.__version__.split(".")[0])
_SECONDARY_CAPTURE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"
_DICOM_VOI_TAGS = (
    "WindowCenter",
    "WindowWidth",
    "WindowCenterWidthExplanation",
    "VOILUTFunction",
    "VOILUTSequence",
)
_SERIES_SUFFIX = " medi2i"


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
# PNG helpers (used by other modules to write previews and 16-bit results)
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
    try:
        with Image.open(src) as img:
            img.load()
            mode, fmt, info = img.mode, img.format, dict(img.info)
            arr = np.array(img)
    except Exception as exc:
        raise ImageIOError(
            src, f"cannot read PNG, the file is corrupt or truncated ({exc})"
        ) from exc
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


# --------------------------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------------------------


def _suffix_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


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
# Shared helpers
# --------------------------------------------------------------------------------------------


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


def _round_clip(dest: Path, values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Round to nearest and clip to [lo, hi]; warn with the fraction of clipped pixels."""
    rounded = np.rint(values)
    n_clipped = int(np.count_nonzero((rounded < lo) | (rounded > hi)))
    if n_clipped:
        logger.warning(
            "%s: %d of %d pixels (%.3f%%) outside the stored range [%g, %g] were clipped",
            dest,
            n_clipped,
            rounded.size,
            100.0 * n_clipped / rounded.size,
            lo,
            hi,
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


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


def _dicom_stored_range(ds: Dataset) -> tuple[int, int]:
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    if int(ds.get("PixelRepresentation") or 0) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _dicom_rescale(ds: Dataset, frame: int) -> tuple[float, float] | None:
    """Rescale slope/intercept: top level, else the frame's or the shared functional groups."""
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return float(ds.get("RescaleSlope") or 1.0), float(ds.get("RescaleIntercept") or 0.0)
    for seq_name, index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        seq = ds.get(seq_name)
        if not seq or index >= len(seq):
            continue
        pvt = seq[index].get("PixelValueTransformationSequence")
        if pvt:
            item = pvt[0]
            return float(item.get("RescaleSlope") or 1.0), float(
                item.get("RescaleIntercept") or 0.0
            )
    return None


def _lut_bits(item: Dataset) -> int:
    return int(item.LUTDescriptor[2])


def _read_dicom(
    src: Path, slice_index: int | None, apply_voi: bool
) -> tuple[np.ndarray, ImageMeta]:
    try:
        ds = pydicom.dcmread(src, force=True)
    except Exception as exc:
        raise ImageIOError(
            src, f"cannot read DICOM, the file is corrupt or truncated ({exc})"
        ) from exc
    pixel_keyword = next(
        (k for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if k in ds), None
    )
    if pixel_keyword is None:
        hint = "" if _has_dicom_magic(src) else " (no 'DICM' preamble either: is it DICOM?)"
        raise ImageIOError(src, f"DICOM file has no pixel data{hint}")
    samples = int(ds.get("SamplesPerPixel") or 1)
    photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").upper()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageIOError(
            src,
            f"expected one channel (SamplesPerPixel 1, MONOCHROME1/2), got SamplesPerPixel "
            f"{samples} and PhotometricInterpretation {photometric}",
        )
    transfer_syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    try:
        stored = ds.pixel_array
    except Exception as exc:
        raise ImageIOError(
            src,
            f"cannot decode DICOM pixel data (transfer syntax {transfer_syntax or 'unknown'}; "
            f"compressed data may need pylibjpeg/gdcm): {exc}",
        ) from exc
    n_frames = int(ds.get("NumberOfFrames") or 1)
    frame_index: int | None = None
    if n_frames > 1:
        if slice_index is None:
            raise ImageIOError(
                src,
                f"multi-frame DICOM with {n_frames} frames; pass slice_index (0..{n_frames - 1})",
            )
        if slice_index >= n_frames:
            raise ImageIOError(src, f"slice_index={slice_index} out of range for {n_frames} frames")
        frame_index = slice_index
        stored = stored[slice_index]
    else:
        _no_slices(src, slice_index, "single-frame DICOM")
        if stored.ndim == 3 and stored.shape[0] == 1:
            stored = stored[0]
    if stored.ndim != 2:
        raise ImageIOError(src, f"expected a 2D DICOM frame, got pixel array shape {stored.shape}")
    stored_dtype = stored.dtype.name

    lo, hi = _dicom_stored_range(ds)
    modality_lut = None
    rescale = None
    if pixel_keyword != "PixelData":
        values = stored.astype(np.float64)
        y_range = (float(np.min(values)), float(np.max(values)))
        lo, hi = -np.inf, np.inf
    elif ds.get("ModalityLUTSequence"):
        item = ds.ModalityLUTSequence[0]
        n_entries, first = int(item.LUTDescriptor[0]) or 65536, int(item.LUTDescriptor[1])
        values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
        domain = np.arange(first, first + n_entries)
        lut = np.asarray(apply_modality_lut(domain, ds), dtype=np.float64)
        modality_lut = (lut, first)
        y_range = (0.0, float(2 ** _lut_bits(item) - 1))
        logger.debug("%s: applied Modality LUT Sequence", src)
    else:
        rescale = _dicom_rescale(ds, frame_index or 0) or (1.0, 0.0)
        slope, intercept = rescale
        values = stored.astype(np.float64) * slope + intercept
        y_range = (lo * slope + intercept, hi * slope + intercept)
        logger.debug("%s: rescale slope %g intercept %g applied", src, slope, intercept)

    voi_applied = None
    if apply_voi and pixel_keyword == "PixelData":
        if ds.get("VOILUTSequence"):
            voi_applied = "lut"
            y_range = (0.0, float(2 ** _lut_bits(ds.VOILUTSequence[0]) - 1))
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            voi_applied = "window"  # pydicom maps the window onto the modality output range
        if voi_applied:
            try:
                values = np.asarray(apply_voi_lut(values, ds, prefer_lut=True), dtype=np.float64)
            except Exception as exc:
                raise ImageIOError(src, f"cannot apply the DICOM VOI LUT/window ({exc})") from exc
            logger.debug("%s: applied VOI %s", src, voi_applied)
        else:
            logger.debug("%s: apply_voi requested but no VOI LUT or window present", src)

    invert_sum = None
    if photometric == "MONOCHROME1":
        invert_sum = float(y_range[0] + y_range[1])
        values = invert_sum - values
        logger.debug("%s: MONOCHROME1 inverted as %g - value", src, invert_sum)

    meta_ds = ds
    delattr(meta_ds, pixel_keyword)  # also drops pydicom's cached pixel array
    meta = ImageMeta(
        path=src,
        format="dicom",
        shape=(int(stored.shape[0]), int(stored.shape[1])),
        stored_dtype=stored_dtype,
        extra={
            "dataset": meta_ds,
            "pixel_keyword": pixel_keyword,
            "rescale": rescale,
            "modality_lut": modality_lut,
            "invert_sum": invert_sum,
            "stored_range": (lo, hi),
            "voi_applied": voi_applied,
            "frame_index": frame_index,
            "n_frames": n_frames,
            "transfer_syntax": transfer_syntax,
            "photometric": photometric,
        },
    )
    return _finish(src, values), meta


def _inverse_lut(values: np.ndarray, lut: np.ndarray, first: int) -> np.ndarray:
    """Stored value whose LUT output is nearest to each value (monotonic or not)."""
    if len(lut) == 1:
        return np.full(values.shape, float(first))
    order = np.argsort(lut, kind="stable")
    sorted_lut = lut[order]
    pos = np.clip(np.searchsorted(sorted_lut, values), 1, len(lut) - 1)
    left, right = sorted_lut[pos - 1], sorted_lut[pos]
    pick = np.where(np.abs(values - left) <= np.abs(right - values), pos - 1, pos)
    return order[pick].astype(np.float64) + first


def _dicom_dtype(dest: Path, ds: Dataset, keyword: str) -> np.dtype:
    if keyword == "FloatPixelData":
        return np.dtype("<f4")
    if keyword == "DoubleFloatPixelData":
        return np.dtype("<f8")
    bits = int(ds.get("BitsAllocated") or 16)
    if bits not in (8, 16, 32):
        raise ImageIOError(dest, f"unsupported DICOM BitsAllocated {bits}")
    kind = "i" if int(ds.get("PixelRepresentation") or 0) == 1 else "u"
    return np.dtype(f"<{kind}{bits // 8}")


def _dicom_stored_values(dest: Path, arr: np.ndarray, meta: ImageMeta, ds: Dataset) -> np.ndarray:
    """Undo the read-side transforms: MONOCHROME1 inversion, VOI (if any), modality LUT."""
    extra = meta.extra
    values = arr.astype(np.float64)
    if extra.get("invert_sum") is not None:
        values = extra["invert_sum"] - values
    if extra.get("voi_applied") == "lut":
        # VOI LUT output cannot be mapped back: store display values with an identity rescale.
        for keyword in ("ModalityLUTSequence", "RescaleType"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    elif extra.get("modality_lut") is not None:
        lut, first = extra["modality_lut"]
        values = _inverse_lut(values, np.asarray(lut, dtype=np.float64), int(first))
    elif extra.get("rescale") is not None:
        slope, intercept = extra["rescale"]
        values = (values - intercept) / slope
    keyword = extra.get("pixel_keyword", "PixelData")
    dtype = _dicom_dtype(dest, ds, keyword)
    if dtype.kind == "f":
        return values.astype(dtype)
    lo, hi = extra.get("stored_range") or _dicom_stored_range(ds)
    return _round_clip(dest, values, float(lo), float(hi)).astype(dtype)


def _derive_dicom_dataset(ds: Dataset, meta: ImageMeta) -> None:
    """Turn a copy of the source metadata into a derived instance (UIDs, ImageType, ...)."""
    src_ds: Dataset = meta.extra["dataset"]
    if "ImageType" in ds:
        image_type = [str(v) for v in (ds.ImageType if ds["ImageType"].VM > 1 else [ds.ImageType])]
    else:
        image_type = []
    image_type = ["DERIVED", "SECONDARY", *image_type[2:]]
    ds.ImageType = image_type
    if not ds.get("SOPClassUID"):
        ds.SOPClassUID = _SECONDARY_CAPTURE_SOP_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    description = str(ds.get("SeriesDescription") or "").strip()
    description = (description[: 64 - len(_SERIES_SUFFIX)] + _SERIES_SUFFIX).strip()
    ds.SeriesDescription = description
    ds.DerivationDescription = "Generated by medi2i (paired image-to-image translation)"
    if src_ds.get("SOPInstanceUID"):
        ref = Dataset()
        ref.ReferencedSOPClassUID = src_ds.get("SOPClassUID") or ds.SOPClassUID
        ref.ReferencedSOPInstanceUID = src_ds.SOPInstanceUID
        if meta.extra.get("frame_index") is not None:
            ref.ReferencedFrameNumber = int(meta.extra["frame_index"]) + 1
        ds.SourceImageSequence = Sequence([ref])
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is None:
        file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = file_meta


def _write_dicom(dest: Path, arr: np.ndarray, meta: ImageMeta) -> None:
    src_ds = meta.extra.get("dataset")
    if not isinstance(src_ds, Dataset):
        raise ImageIOError(dest, "meta.extra has no DICOM dataset; pass the meta from read_image")
    ds = copy.deepcopy(src_ds)
    stored = _dicom_stored_values(dest, arr, meta, ds)
    if meta.extra.get("voi_applied"):
        for keyword in _DICOM_VOI_TAGS:  # the window is baked into the values now
            if keyword in ds:
                delattr(ds, keyword)
    n_frames = int(meta.extra.get("n_frames") or 1)
    if n_frames > 1 or "NumberOfFrames" in ds:
        ds.NumberOfFrames = 1
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        frame = meta.extra.get("frame_index") or 0
        if per_frame and frame < len(per_frame):
            ds.PerFrameFunctionalGroupsSequence = Sequence([per_frame[frame]])
    for keyword in (
        "SmallestImagePixelValue",
        "LargestImagePixelValue",
        "ExtendedOffsetTable",
        "ExtendedOffsetTableLengths",
    ):
        if keyword in ds:
            delattr(ds, keyword)
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.SamplesPerPixel = 1
    keyword = meta.extra.get("pixel_keyword", "PixelData")
    if keyword == "PixelData":
        bits_allocated = stored.dtype.itemsize * 8
        ds.BitsAllocated = bits_allocated
        ds.BitsStored = int(ds.get("BitsStored") or bits_allocated)
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if stored.dtype.kind == "i" else 0
        vr = "OB" if bits_allocated == 8 else "OW"
        data = stored.tobytes()
        if len(data) % 2:
            data += b"\x00"
        ds.add_new(0x7FE00010, vr, data)
    else:
        ds.add_new(
            0x7FE00008 if keyword == "FloatPixelData" else 0x7FE00009,
            "OF" if keyword == "FloatPixelData" else "OD",
            stored.tobytes(),
        )
    _derive_dicom_dataset(ds, meta)
    try:
        with atomic_path(dest) as tmp:
            if _PYDICOM_MAJOR >= 3:
                pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
            else:  # pragma: no cover - pydicom 2.x
                ds.is_little_endian, ds.is_implicit_VR = True, False
                pydicom.dcmwrite(tmp, ds, write_like_original=False)
    except Exception as exc:
        raise ImageIOError(dest, f"cannot write DICOM ({exc})") from exc


# --------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------


def _read_nifti(src: Path, slice_index: int | None) -> tuple[np.ndarray, ImageMeta]:
    try:
        img = nib.load(src, mmap=False)
    except Exception as exc:
        raise ImageIOError(
            src, f"cannot read NIfTI, the file is corrupt or truncated ({exc})"
        ) from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ImageIOError(src, f"expected a NIfTI-1/2 image, got {type(img).__name__}")
    volume_shape = tuple(int(s) for s in img.shape)
    shape = list(volume_shape)
    while len(shape) > 3 and shape[-1] == 1:  # (I, J, K, 1, ...) -> (I, J, K)
        shape.pop()
    index: tuple[Any, ...]
    if len(shape) == 2:
        _no_slices(src, slice_index, "2D NIfTI image")
        image_axes, index, layout_slice = (0, 1), (slice(None), slice(None)), None
    elif len(shape) == 3:
        if slice_index is not None:
            if slice_index >= shape[2]:
                raise ImageIOError(
                    src,
                    f"slice_index={slice_index} out of range for shape {tuple(shape)} "
                    f"(last axis has {shape[2]} slices)",
                )
            image_axes, index = (0, 1), (slice(None), slice(None), slice_index)
            layout_slice = slice_index
        else:
            singletons = [a for a, s in enumerate(shape) if s == 1]
            if len(singletons) != 1:
                raise ImageIOError(
                    src,
                    f"3D NIfTI volume of shape {tuple(shape)} needs slice_index (0..{shape[2] - 1} "
                    "on the last axis) to pick a 2D slice",
                )
            image_axes = tuple(a for a in range(3) if a != singletons[0])
            index = tuple(0 if a == singletons[0] else slice(None) for a in range(3))
            layout_slice = None
    else:
        raise ImageIOError(
            src,
            f"expected a 2D image or 3D volume, got {len(shape)}D NIfTI of shape {volume_shape}",
        )
    index = index + (0,) * (len(volume_shape) - len(index))
    try:
        data = np.asanyarray(img.dataobj[index])
    except Exception as exc:
        raise ImageIOError(
            src, f"cannot read NIfTI data, the file may be truncated ({exc})"
        ) from exc
    header = img.header
    # nibabel moves scl_slope/scl_inter from the loaded header into the array proxy
    slope = float(getattr(img.dataobj, "slope", 1.0))
    inter = float(getattr(img.dataobj, "inter", 0.0))
    scaled = not (slope == 1.0 and inter == 0.0)
    logger.debug(
        "%s: NIfTI shape %s, slice %s, data dtype %s, scaling %s/%s",
        src,
        volume_shape,
        layout_slice,
        header.get_data_dtype(),
        slope,
        inter,
    )
    meta = ImageMeta(
        path=src,
        format="nifti",
        shape=(int(data.shape[0]), int(data.shape[1])),
        stored_dtype=np.dtype(header.get_data_dtype()).name,
        extra={
            "affine": np.array(img.affine, dtype=np.float64),
            "header": header.copy(),
            "nifti_version": 2 if isinstance(img, nib.Nifti2Image) else 1,
            "volume_shape": volume_shape,
            "image_axes": image_axes,
            "slice_index": layout_slice,
            "scaled": scaled,
        },
    )
    return _finish(src, data), meta


def _write_nifti(dest: Path, arr: np.ndarray, meta: ImageMeta) -> None:
    extra = meta.extra
    affine = np.array(extra.get("affine", np.eye(4)), dtype=np.float64)
    header = extra.get("header")
    header = header.copy() if header is not None else None
    k = extra.get("slice_index")
    if k is not None:  # one slice of a volume -> single-slice 3D at the slice's position
        data = arr[:, :, None]
        affine = affine.copy()
        affine[:3, 3] = affine[:3, :3] @ np.array([0.0, 0.0, float(k)]) + affine[:3, 3]
    else:
        full = list(extra.get("volume_shape") or arr.shape)
        out_shape = [1] * len(full)
        axes = extra.get("image_axes", (0, 1))
        out_shape[axes[0]], out_shape[axes[1]] = arr.shape
        data = arr.reshape(out_shape)
    source_dtype = np.dtype(meta.stored_dtype)
    if extra.get("scaled") or source_dtype.kind not in "biuf":
        dtype = np.dtype(np.float32)
    elif source_dtype.kind == "f":
        dtype = source_dtype if source_dtype.itemsize >= 4 else np.dtype(np.float32)
    else:
        dtype = source_dtype
    data = _to_dtype(dest, data.astype(np.float64), dtype)
    cls = nib.Nifti2Image if extra.get("nifti_version") == 2 else nib.Nifti1Image
    img = cls(data, affine, header=header)
    img.header.set_data_dtype(dtype)
    img.header.set_slope_inter(1.0, 0.0)
    if header is not None:
        img.set_sform(affine, code=int(header["sform_code"]))
        img.set_qform(affine, code=int(header["qform_code"]))
    try:
        payload = img.to_bytes()
    except Exception as exc:
        raise ImageIOError(dest, f"cannot encode NIfTI ({exc})") from exc
    if dest.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    logger.debug("%s: writing NIfTI shape %s dtype %s", dest, data.shape, dtype)
    with atomic_path(dest) as tmp:
        tmp.write_bytes(payload)


# --------------------------------------------------------------------------------------------
# TIFF
# --------------------------------------------------------------------------------------------


def _read_tiff(src: Path, slice_index: int | None) -> tuple[np.ndarray, ImageMeta]:
    try:
        with tifffile.TiffFile(src) as tif:
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
    except ImageIOError:
        raise
    except Exception as exc:
        raise ImageIOError(
            src, f"cannot read TIFF, the file is corrupt or truncated ({exc})"
        ) from exc
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
    try:
        with atomic_path(dest) as tmp:
            tifffile.imwrite(tmp, data, **kwargs)
    except Exception as exc:
        raise ImageIOError(dest, f"cannot write TIFF ({exc})") from exc


# --------------------------------------------------------------------------------------------
# NPY
# --------------------------------------------------------------------------------------------


def _read_npy(src: Path, slice_index: int | None) -> tuple[np.ndarray, ImageMeta]:
    try:
        data = np.load(src, allow_pickle=False)
    except Exception as exc:
        raise ImageIOError(
            src, f"cannot read NPY, the file is corrupt or not a .npy ({exc})"
        ) from exc
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


# --------------------------------------------------------------------------------------------
# PNG (read_image / write_image side)
# --------------------------------------------------------------------------------------------


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
# Public entry points
# --------------------------------------------------------------------------------------------


def read_image(
    path: str | os.PathLike, *, slice_index: int | None = None, apply_voi: bool = False
) -> tuple[np.ndarray, ImageMeta]:
    """Read one 2D single-channel image as float32 in physical/stored units.

    See the module docstring for the array-order, unit and MONOCHROME1 conventions. The input
    file is only read, never modified.

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
