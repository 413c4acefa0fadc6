"""One benchmark sample: the projected pair in the benchmark's display window.

:func:`render_pair` draws a pose (and optionally a 3D elastic deformation), projects the volume
and derives the sample's images:

* **input** - the radiograph: line integral of attenuation, bone attenuation scaled by
  ``bone_scale``, with optional quantum noise;
* **aligned** - the bone-suppressed image: the same projection with every bone voxel replaced by
  soft tissue;
* **target** - ``aligned`` warped by the sample's misalignment
  (:mod:`medi2i.data.drr.misalignment`);
* **mask** - the lungs: pixels whose ray crosses more than :data:`LUNG_MASK_MIN_MM` of lung.

Display: ``v = clip((L - L_lo) / (L_hi - L_lo), 0, 1) ** gamma`` with ONE window ``L_lo, L_hi``
for input and target of the whole benchmark, taken from the canonical-pose input (see
:func:`display_window`) and a fixed gamma of :data:`DISPLAY_GAMMA` (darker lungs, as on a
radiograph); high attenuation (bone) is bright.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

from medi2i.data.deform import displacement_stats, warp_image
from medi2i.data.drr.misalignment import draw_misalignment, sample_streams
from medi2i.data.drr.projection import Pose, elastic_control_field, project, sample_pose
from medi2i.data.drr.settings import DRRSettings
from medi2i.data.drr.volume import ProjectionVolume, load_projection_volume

logger = logging.getLogger(__name__)

__all__ = [
    "DISPLAY_GAMMA",
    "DISPLAY_HI_HEADROOM",
    "DISPLAY_LO_PERCENTILE",
    "LUNG_MASK_MIN_MM",
    "display_window",
    "render_pair",
]

#: A pixel belongs to the lung mask when its ray crosses more than this much lung (mm).
LUNG_MASK_MIN_MM = 10.0
#: Black: this percentile of the canonical input's line integrals (the air beside the patient).
DISPLAY_LO_PERCENTILE = 0.5
#: White: the canonical input's largest line integral times this headroom, so that the spine of a
#: rotated or magnified view is not clipped.
DISPLAY_HI_HEADROOM = 1.05
#: Fixed display gamma applied after windowing (1 = linear in the line integral).
DISPLAY_GAMMA = 1.5


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
    pose_rng, misalign_rng, elastic_rng, noise_rng = sample_streams(rng)
    window = display_window(settings) if window is None else window
    volume = load_projection_volume(settings) if volume is None else volume
    pose = sample_pose(settings, pose_rng)
    elastic = (
        elastic_control_field(settings.elastic_mm, elastic_rng) if settings.elastic_mm > 0 else None
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
    disp = draw_misalignment(aligned.shape, settings.misalign_px, misalign_rng)
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
