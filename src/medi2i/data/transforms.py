"""Paired transforms: geometric changes applied identically to every image of a pair.

A sample is a dict of 2D float32 arrays in the [0, 1] domain: ``input``, ``target``, optional
``aligned_target`` and ``mask``. Geometric transforms (flips, random affine, crop) move all of
them together - the mask is resampled bilinearly and re-binarised at 0.5, so it stays exactly
on the anatomy it marks. Intensity transforms change ``input``, ``target`` and
``aligned_target`` by the same amount and never touch the mask.

Randomness comes only from the ``numpy.random.Generator`` passed in, which the dataset derives
from (seed, epoch, index): results do not depend on worker count or loading order.
"""

from __future__ import annotations

import math

import numpy as np

from medi2i.config import AugmentConfig, IntensityAugmentConfig
from medi2i.data.deform import warp_image

Sample = dict[str, np.ndarray]

IMAGE_KEYS = ("input", "target", "aligned_target")
MASK_KEY = "mask"


def affine_displacement(
    shape: tuple[int, int],
    *,
    rotation_deg: float = 0.0,
    translate_px: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
) -> np.ndarray:
    """Displacement field (2, H, W) of a rotation/scale about the centre plus a translation.

    Uses the backward-warp convention of :func:`medi2i.data.deform.warp_image`: output pixel
    ``p`` samples the source at ``p + disp[:, p]`` (channel 0 = rows). ``scale > 1`` enlarges
    the content, positive ``translate_px`` moves it down/right.
    """
    h, w = shape
    rows, cols = np.meshgrid(
        np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij"
    )
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    theta = math.radians(rotation_deg)
    cos, sin = math.cos(theta) / scale, math.sin(theta) / scale
    dy, dx = rows - cy - translate_px[0], cols - cx - translate_px[1]
    src_r = cy + cos * dy - sin * dx
    src_c = cx + sin * dy + cos * dx
    return np.stack([src_r - rows, src_c - cols]).astype(np.float32)


def _apply_geometry(sample: Sample, fn) -> Sample:
    out = dict(sample)
    for key in (*IMAGE_KEYS, MASK_KEY):
        if key in out:
            out[key] = fn(out[key], key == MASK_KEY)
    return out


def flip(sample: Sample, axis: int) -> Sample:
    """Flip every image of the sample along ``axis`` (0 = up-down, 1 = left-right)."""
    return _apply_geometry(sample, lambda a, _: np.ascontiguousarray(np.flip(a, axis=axis)))


def warp_sample(sample: Sample, disp: np.ndarray) -> Sample:
    """Warp every image of the sample by one displacement field (mask re-binarised at 0.5)."""

    def warp(a: np.ndarray, is_mask: bool) -> np.ndarray:
        out = warp_image(a, disp, order=1)
        return (out > 0.5).astype(np.float32) if is_mask else out

    return _apply_geometry(sample, warp)


def crop(sample: Sample, top: int, left: int, size: int) -> Sample:
    """Crop a ``size`` x ``size`` window from every image of the sample."""
    return _apply_geometry(sample, lambda a, _: a[top : top + size, left : left + size].copy())


def random_crop(sample: Sample, size: int, rng: np.random.Generator) -> Sample:
    """Crop the same random ``size`` x ``size`` window from every image.

    Raises:
        ValueError: when the images are smaller than ``size`` (never resized silently).
    """
    h, w = sample["input"].shape
    if h < size or w < size:
        raise ValueError(f"data.crop_size {size} is larger than the image ({h}x{w})")
    return crop(
        sample, int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1)), size
    )


def adjust_intensity(sample: Sample, *, gamma: float, contrast: float, brightness: float) -> Sample:
    """Apply ``clip(((x ** gamma) - m) * contrast + m + brightness, 0, 1)`` to the images.

    ``m`` is the mean of the gamma-corrected input, shared by all images of the pair so that
    input and target change identically. The mask is untouched.
    """
    out = dict(sample)
    ref = np.clip(sample["input"], 0.0, 1.0) ** gamma
    mean = float(ref.mean())
    for key in IMAGE_KEYS:
        if key in out:
            x = np.clip(out[key], 0.0, 1.0) ** gamma
            out[key] = np.clip((x - mean) * contrast + mean + brightness, 0.0, 1.0).astype(
                np.float32
            )
    return out


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return lo if lo == hi else float(rng.uniform(lo, hi))


class PairedAugment:
    """Random paired augmentation from the ``data.augment`` config.

    Order: left-right flip, up-down flip, random affine (rotation, translation, scale), then
    intensity. Every random draw is made whether or not it is used, so a sample's draws do not
    depend on which transforms fired.
    """

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg

    @property
    def is_identity(self) -> bool:
        """True when no transform can fire."""
        c = self.cfg
        return (
            c.hflip == 0
            and c.vflip == 0
            and (
                c.affine_p == 0
                or (c.rotate_deg == 0 and c.translate_frac == 0 and c.scale == (1.0, 1.0))
            )
            and _intensity_identity(c.intensity)
        )

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        c = self.cfg
        u_h, u_v, u_a, u_i = rng.random(4)
        rot = float(rng.uniform(-1.0, 1.0)) * c.rotate_deg
        shift = rng.uniform(-1.0, 1.0, size=2) * c.translate_frac
        scale = _uniform(rng, c.scale)
        gamma = _uniform(rng, c.intensity.gamma)
        contrast = _uniform(rng, c.intensity.contrast)
        brightness = _uniform(rng, c.intensity.brightness)

        if u_h < c.hflip:
            sample = flip(sample, axis=1)
        if u_v < c.vflip:
            sample = flip(sample, axis=0)
        if u_a < c.affine_p:
            h, w = sample["input"].shape
            disp = affine_displacement(
                (h, w),
                rotation_deg=rot,
                translate_px=(float(shift[0]) * h, float(shift[1]) * w),
                scale=scale,
            )
            sample = warp_sample(sample, disp)
        if u_i < c.intensity.p:
            sample = adjust_intensity(sample, gamma=gamma, contrast=contrast, brightness=brightness)
        return sample


def _intensity_identity(c: IntensityAugmentConfig) -> bool:
    return c.p == 0 or (
        c.gamma == (1.0, 1.0) and c.contrast == (1.0, 1.0) and c.brightness == (0.0, 0.0)
    )
