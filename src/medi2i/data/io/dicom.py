"""DICOM reader and writer (pydicom), see the :mod:`medi2i.data.io` conventions."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

try:  # pydicom >= 3
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
except ImportError:  # pragma: no cover - pydicom 2.x
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

from medi2i.data.io.common import (
    ImageIOError,
    ImageMeta,
    _finish,
    _has_dicom_magic,
    _no_slices,
    _round_clip,
    failures_as,
    logger,
)
from medi2i.utils.atomic import atomic_path

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
    with failures_as(src, "cannot read DICOM, the file is corrupt or truncated"):
        ds = pydicom.dcmread(src, force=True)
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
            with failures_as(src, "cannot apply the DICOM VOI LUT/window"):
                values = np.asarray(apply_voi_lut(values, ds, prefer_lut=True), dtype=np.float64)
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
    with failures_as(dest, "cannot write DICOM"), atomic_path(dest) as tmp:
        if _PYDICOM_MAJOR >= 3:
            pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
        else:  # pragma: no cover - pydicom 2.x
            ds.is_little_endian, ds.is_implicit_VR = True, False
            pydicom.dcmwrite(tmp, ds, write_like_original=False)
