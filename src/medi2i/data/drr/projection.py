"""Patient poses and the parallel anterior-posterior projection of the projection volume.

:func:`project` integrates the volume's channels along parallel rays (one trilinear
:func:`torch.nn.functional.grid_sample` per group of :data:`RAY_CHUNK` ray depths), for a
:class:`Pose` (small 3D rotations, shifts and magnification of the sampling grid) and an optional
smooth 3D elastic deformation (:func:`elastic_control_field`). Images come out as a chest
radiograph in PA display: patient upright, head at the top (row 0 = superior), patient's right on
the image **left** (the heart on the image right).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medi2i.data.drr.settings import DRRSettings
from medi2i.data.drr.volume import ProjectionVolume

__all__ = ["RAY_CHUNK", "Pose", "elastic_control_field", "project", "sample_pose"]

#: Ray samples are taken in groups of this many depths (bounded memory, cache-friendly).
RAY_CHUNK = 12


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


def elastic_control_field(elastic_mm: float, rng: np.random.Generator) -> np.ndarray:
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
