"""Intensity normalisation with an exact inverse.

Every image is mapped linearly from an intensity *window* ``[lo, hi]`` (stored or physical
units: PNG grey levels, Hounsfield units, ...) onto ``[0, 1]`` (clipped when ``clip``), and
then onto the configured ``output_range`` (``[0, 1]`` or ``[-1, 1]``). The inverse maps network
outputs back to the input's units, so predictions can be written in the input's value range.

How the window is chosen is explicit in the config (:class:`medi2i.config.NormalizationConfig`):
a fixed window, the full range of the stored integer type, percentiles over the training split
(computed once by :meth:`Normalizer.fit` and saved with the model), or percentiles per image.
Input and target share the input's window unless ``share_scale`` is off, so that intensities
stay comparable between input and target.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from medi2i.config import NormalizationConfig

log = logging.getLogger(__name__)

PERCENTILE_SAMPLES = 65536
"""Pixels (evenly strided) an image contributes to percentile estimates: bounded memory."""

INTEGER_RANGES = {
    "uint8": (0.0, 255.0),
    "uint16": (0.0, 65535.0),
    "int8": (-128.0, 127.0),
    "int16": (-32768.0, 32767.0),
}
"""The value range of each integer type images are stored in (``dtype`` normalisation)."""


def strided_sample(image: np.ndarray, count: int = PERCENTILE_SAMPLES) -> np.ndarray:
    """At most about ``count`` evenly strided pixels of ``image``, flattened, as float64."""
    flat = np.asarray(image).ravel()
    return flat[:: max(1, flat.size // count)].astype(np.float64)


@dataclass(frozen=True)
class Window:
    """A linear intensity window ``[lo, hi]`` in stored/physical units."""

    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not np.isfinite(self.lo) or not np.isfinite(self.hi) or not self.lo < self.hi:
            raise ValueError(f"intensity window needs finite lo < hi, got [{self.lo}, {self.hi}]")


class Normalizer:
    """Maps images to the network's range and back.

    Args:
        cfg: the ``data.normalization`` config section.
        dataset_window: the window of ``dataset_percentile`` mode (from :meth:`fit` or a
            checkpoint); ignored by the other modes.

    Raises:
        ValueError: ``dataset_percentile`` mode without a dataset window.
    """

    def __init__(self, cfg: NormalizationConfig, dataset_window: Window | None = None):
        self.cfg = cfg
        if cfg.mode == "dataset_percentile" and dataset_window is None:
            raise ValueError(
                "normalization mode 'dataset_percentile' needs the training split's window: "
                "build it with Normalizer.fit(...) or load it from a checkpoint"
            )
        self.dataset_window = dataset_window
        self.out_lo, self.out_hi = (float(v) for v in cfg.output_range)

    # -- fitting and persistence ---------------------------------------------------------------

    @classmethod
    def fit(cls, cfg: NormalizationConfig, images: Iterable[np.ndarray]) -> Normalizer:
        """Build a normaliser, estimating the dataset window when the mode needs one.

        Args:
            cfg: the normalisation config.
            images: the training images (inputs and targets) to estimate percentiles from;
                only consumed in ``dataset_percentile`` mode. Each contributes at most
                65536 evenly strided pixels.

        Returns:
            The normaliser.
        """
        if cfg.mode != "dataset_percentile":
            return cls(cfg)
        samples = []
        for image in images:
            samples.append(strided_sample(image).astype(np.float32))
        if not samples:
            raise ValueError("cannot estimate dataset percentiles from an empty training split")
        pooled = np.concatenate(samples)
        lo, hi = np.percentile(pooled, cfg.percentiles)
        if not hi > lo:
            raise ValueError(
                f"training images are constant between percentiles {list(cfg.percentiles)} "
                f"(value {lo}); use a fixed window instead"
            )
        window = Window(float(lo), float(hi))
        log.info("dataset percentile window %s from %d images", window, len(samples))
        return cls(cfg, window)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this normaliser (stored in checkpoints)."""
        dw = self.dataset_window
        return {
            "config": self.cfg.model_dump(mode="json"),
            "dataset_window": None if dw is None else [dw.lo, dw.hi],
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Normalizer:
        """Inverse of :meth:`state_dict`."""
        dw = state.get("dataset_window")
        return cls(
            NormalizationConfig.model_validate(state["config"]),
            None if dw is None else Window(float(dw[0]), float(dw[1])),
        )

    # -- windows ---------------------------------------------------------------------------------

    def window_for(self, image: np.ndarray, stored_dtype: str, source: str = "") -> Window:
        """The window this image is normalised with.

        Args:
            image: the image in stored/physical units (used by ``image_percentile``).
            stored_dtype: the file's stored type (used by ``dtype``), e.g. ``"uint16"``.
            source: file name for error messages.

        Raises:
            ValueError: ``dtype`` mode on a float image, or a constant image in
                ``image_percentile`` mode.
        """
        mode = self.cfg.mode
        if mode == "fixed":
            lo, hi = self.cfg.window  # type: ignore[misc]  # validated non-None for fixed
            return Window(float(lo), float(hi))
        if mode == "dataset_percentile":
            assert self.dataset_window is not None
            return self.dataset_window
        if mode == "dtype":
            if stored_dtype not in INTEGER_RANGES:
                raise ValueError(
                    f"{source or 'image'}: normalization mode 'dtype' needs an 8/16-bit integer "
                    f"file, got stored type {stored_dtype!r}; set data.normalization.mode to "
                    "'fixed' (with window) or a percentile mode"
                )
            return Window(*INTEGER_RANGES[stored_dtype])
        lo, hi = np.percentile(np.asarray(image, dtype=np.float64), self.cfg.percentiles)
        if not hi > lo:
            raise ValueError(
                f"{source or 'image'}: constant between percentiles {list(self.cfg.percentiles)} "
                f"(value {lo}); per-image normalisation is undefined"
            )
        return Window(float(lo), float(hi))

    # -- mapping -----------------------------------------------------------------------------

    def to_unit(self, image: np.ndarray, window: Window) -> np.ndarray:
        """Map ``image`` from ``window`` onto [0, 1] (clipped when configured); float32."""
        out = (np.asarray(image, dtype=np.float32) - np.float32(window.lo)) / np.float32(
            window.hi - window.lo
        )
        if self.cfg.clip:
            np.clip(out, 0.0, 1.0, out=out)
        return out

    def unit_to_output(self, x):
        """Map [0, 1] onto ``output_range``; works on numpy arrays and torch tensors."""
        if (self.out_lo, self.out_hi) == (0.0, 1.0):
            return x
        return x * (self.out_hi - self.out_lo) + self.out_lo

    def output_to_unit(self, y):
        """Map ``output_range`` back onto [0, 1]; numpy or torch."""
        if (self.out_lo, self.out_hi) == (0.0, 1.0):
            return y
        return (y - self.out_lo) / (self.out_hi - self.out_lo)

    def forward(self, image: np.ndarray, window: Window) -> np.ndarray:
        """Stored units -> network range (``output_range``)."""
        return self.unit_to_output(self.to_unit(image, window))

    def inverse(self, y, window: Window):
        """Network range -> stored/physical units (numpy or torch, float)."""
        return self.output_to_unit(y) * (window.hi - window.lo) + window.lo
