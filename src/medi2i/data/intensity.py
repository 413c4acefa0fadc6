"""What the training inputs' intensities looked like, and whether a new image matches them.

A model only knows the intensity domain it was trained in: the same radiograph saved as an
8-bit PNG, as a 16-bit PNG or as a float array in [0, 1] lands at very different places of a
fixed normalisation window, and a generator fed an image from the wrong place returns an
output that looks like an image but is not a prediction. The :class:`IntensityProfile` of the
training inputs is measured when training starts, stored in every checkpoint, and compared
with each image at prediction time (:meth:`IntensityProfile.mismatch`).

Everything is measured *in units of the normalisation window* (0 = the window's low end,
1 = its high end, before any clipping), so the comparison holds for every normalisation mode:

* ``median``: where the image's typical pixel sits in the window;
* ``spread``: its 1st-to-99th-percentile range (the contrast the network sees);
* ``outside``: the fraction of its pixels outside the window (clipped by normalisation).

An image matches when its median lies within the training medians' range widened by
:data:`MEDIAN_MARGIN` (or by half that range, if wider), its spread lies within
``[min / SPREAD_FACTOR, max * SPREAD_FACTOR]`` of the training spreads, and no more than
:data:`OUTSIDE_MARGIN` more of its pixels fall outside the window than in any training input.
These margins accept a different exposure or patient size and reject a different encoding
(an 8-bit image in a 16-bit window sits at ~0.4% of it; a [0, 1] float image at ~0.002%).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from medi2i.data.normalization import INTEGER_RANGES, Window, strided_sample
from medi2i.utils.formatting import significant

__all__ = [
    "MEDIAN_MARGIN",
    "OUTSIDE_MARGIN",
    "SPREAD_FACTOR",
    "ImageIntensity",
    "IntensityProfile",
    "measure_intensity",
]

MEDIAN_MARGIN = 0.15
"""Least widening (window units) of the training medians' range on each side."""

SPREAD_FACTOR = 3.0
"""How much lower or higher than any training input's contrast an image's may be."""

OUTSIDE_MARGIN = 0.05
"""Extra fraction of pixels outside the window allowed beyond the training inputs' worst."""


@dataclass(frozen=True)
class ImageIntensity:
    """One image's intensities in units of its normalisation window (unclipped).

    Attributes:
        low: 1st percentile.
        median: median.
        high: 99th percentile.
        outside: fraction of pixels outside the window ``[0, 1]``.
    """

    low: float
    median: float
    high: float
    outside: float

    @property
    def spread(self) -> float:
        """1st-to-99th-percentile range."""
        return self.high - self.low


def measure_intensity(image: np.ndarray, window: Window) -> ImageIntensity:
    """Statistics of ``image`` (stored/physical units) relative to ``window``.

    Args:
        image: the image as read (any shape; flattened).
        window: its normalisation window.

    Returns:
        The image's :class:`ImageIntensity`.

    Raises:
        ValueError: an empty image.
    """
    if np.asarray(image).size == 0:
        raise ValueError("cannot measure the intensities of an empty image")
    unit = (strided_sample(image) - window.lo) / (window.hi - window.lo)
    low, median, high = np.percentile(unit, [1.0, 50.0, 99.0])
    outside = float(np.count_nonzero((unit < 0.0) | (unit > 1.0))) / unit.size
    return ImageIntensity(float(low), float(median), float(high), outside)


@dataclass(frozen=True)
class IntensityProfile:
    """The training inputs' intensity statistics (window units), stored in checkpoints.

    Attributes:
        images: number of training inputs measured.
        median: ``(min, max)`` of their medians.
        spread: ``(min, max)`` of their 1st-to-99th-percentile ranges.
        outside: the largest fraction of pixels outside the window of any of them.
        low: mean 1st percentile (to suggest a window for a mismatched image).
        high: mean 99th percentile.
        stored_dtypes: the value types the inputs were stored as (``uint16``, ``float32``...).
        window: the window every measured input shared (fixed / dataset modes), else ``None``.
    """

    images: int
    median: tuple[float, float]
    spread: tuple[float, float]
    outside: float
    low: float
    high: float
    stored_dtypes: tuple[str, ...]
    window: tuple[float, float] | None

    @classmethod
    def from_images(cls, items: Iterable[tuple[np.ndarray, Window, str]]) -> IntensityProfile:
        """Measure training inputs.

        Args:
            items: ``(image, window, stored_dtype)`` of each input measured.

        Returns:
            The profile.

        Raises:
            ValueError: no images.
        """
        stats: list[ImageIntensity] = []
        dtypes: set[str] = set()
        windows: set[tuple[float, float]] = set()
        for image, window, dtype in items:
            stats.append(measure_intensity(image, window))
            dtypes.add(str(dtype))
            windows.add((float(window.lo), float(window.hi)))
        if not stats:
            raise ValueError("an intensity profile needs at least one training input")
        medians = [s.median for s in stats]
        spreads = [s.spread for s in stats]
        return cls(
            images=len(stats),
            median=(min(medians), max(medians)),
            spread=(min(spreads), max(spreads)),
            outside=max(s.outside for s in stats),
            low=float(np.mean([s.low for s in stats])),
            high=float(np.mean([s.high for s in stats])),
            stored_dtypes=tuple(sorted(dtypes)),
            window=next(iter(windows)) if len(windows) == 1 else None,
        )

    # -- persistence -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (checkpoints load with ``weights_only``)."""
        out = asdict(self)
        out["median"] = list(self.median)
        out["spread"] = list(self.spread)
        out["stored_dtypes"] = list(self.stored_dtypes)
        out["window"] = None if self.window is None else list(self.window)
        return out

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> IntensityProfile:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: a missing or malformed field, named.
        """
        try:
            window = state.get("window")
            return cls(
                images=int(state["images"]),
                median=(float(state["median"][0]), float(state["median"][1])),
                spread=(float(state["spread"][0]), float(state["spread"][1])),
                outside=float(state["outside"]),
                low=float(state["low"]),
                high=float(state["high"]),
                stored_dtypes=tuple(str(d) for d in state["stored_dtypes"]),
                window=None if window is None else (float(window[0]), float(window[1])),
            )
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise ValueError(f"malformed intensity profile {dict(state)!r}: {exc}") from exc

    # -- comparison ------------------------------------------------------------------------

    def median_bounds(self) -> tuple[float, float]:
        """Accepted range of an image's median (window units)."""
        lo, hi = self.median
        margin = max(MEDIAN_MARGIN, 0.5 * (hi - lo))
        return lo - margin, hi + margin

    def spread_bounds(self) -> tuple[float, float]:
        """Accepted range of an image's 1st-to-99th-percentile spread (window units)."""
        return self.spread[0] / SPREAD_FACTOR, self.spread[1] * SPREAD_FACTOR

    def mismatch(self, stats: ImageIntensity) -> list[str]:
        """How an image's statistics differ from the training inputs'; empty when they match."""
        problems = []
        lo, hi = self.median_bounds()
        if not lo <= stats.median <= hi:
            value, low, high = (significant(v, 3) for v in (stats.median, *self.median))
            problems.append(
                f"its median sits at {value} of the window (training inputs: {low} to {high})"
            )
        lo, hi = self.spread_bounds()
        if not lo <= stats.spread <= hi:
            value, low, high = (significant(v, 3) for v in (stats.spread, *self.spread))
            problems.append(
                f"its 1st-99th percentile range spans {value} of the window "
                f"(training inputs: {low} to {high})"
            )
        if stats.outside > self.outside + OUTSIDE_MARGIN:
            problems.append(
                f"{stats.outside:.1%} of its pixels fall outside the window (training inputs: "
                f"at most {self.outside:.1%})"
            )
        return problems

    def suggest_window(self, image: np.ndarray, stored_dtype: str) -> Window | None:
        """A window that would place ``image`` where the training inputs sat, or ``None``.

        When the training window is its inputs' integer range (e.g. ``[0, 65535]`` for 16-bit
        files) and the image is stored in another integer type, the analogous range of that
        type; otherwise the window that maps the image's 1st and 99th percentiles onto the
        training inputs' mean 1st and 99th percentiles.
        """
        if (
            self.window is not None
            and len(self.stored_dtypes) == 1
            and INTEGER_RANGES.get(self.stored_dtypes[0]) == self.window
            and stored_dtype in INTEGER_RANGES
            and stored_dtype != self.stored_dtypes[0]
        ):
            return Window(*INTEGER_RANGES[stored_dtype])
        p1, p99 = np.percentile(strided_sample(image), [1.0, 99.0])
        if not p99 > p1 or not self.high > self.low:
            return None
        scale = (p99 - p1) / (self.high - self.low)
        lo = p1 - self.low * scale
        hi = lo + scale
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            return None
        return Window(float(lo), float(hi))

    def describe(self) -> str:
        """One line for logs."""
        window = "" if self.window is None else f", window [{self.window[0]:g}, {self.window[1]:g}]"
        median, spread = (
            "-".join(significant(v, 3) for v in pair) for pair in (self.median, self.spread)
        )
        return (
            f"{self.images} training inputs ({', '.join(self.stored_dtypes)}{window}): median "
            f"{median}, 1-99% range {spread}, at most {self.outside:.1%} outside"
        )
