"""NIfTI-1/2 reader and writer (nibabel), see the :mod:`medi2i.data.io` conventions."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medi2i.data.io.common import (
    ImageIOError,
    ImageMeta,
    _finish,
    _no_slices,
    _to_dtype,
    failures_as,
    logger,
)
from medi2i.utils.atomic import atomic_path


def _read_nifti(src: Path, slice_index: int | None) -> tuple[np.ndarray, ImageMeta]:
    with failures_as(src, "cannot read NIfTI, the file is corrupt or truncated"):
        img = nib.load(src, mmap=False)
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
    with failures_as(src, "cannot read NIfTI data, the file may be truncated"):
        data = np.asanyarray(img.dataobj[index])
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
    with failures_as(dest, "cannot encode NIfTI"):
        payload = img.to_bytes()
    if dest.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    logger.debug("%s: writing NIfTI shape %s dtype %s", dest, data.shape, dtype)
    with atomic_path(dest) as tmp:
        tmp.write_bytes(payload)
