"""Test-time augmentation (TTA): predict on transformed copies, undo each, average.

Each transform has an exact inverse on the network output (``inverse(forward(x)) == x`` bit
for bit), so the averaged prediction stays pixel-aligned with the input:

* ``identity``: the plain prediction.
* ``hflip`` / ``vflip``: left-right / up-down mirror (its own inverse). Left-right flips alter
  chest anatomy (the heart moves to the right), so a network trained only on upright,
  unflipped radiographs sees an implausible image; a WARNING is logged when it is used. An
  upside-down chest is no more plausible: use flips only with a model trained with them.
* ``shift`` (= ``shift:2``): two translations of the image relative to the generator's
  padding and stride grid, by ``(+2, +2)`` and ``(-2, -2)`` pixels. ``shift:N`` uses ``N``
  pixels, ``shift:DY:DX`` a single translation. A translation by ``(dy, dx)`` reflect-pads
  ``|dy|`` rows at the top (``dy > 0``) or bottom (``dy < 0``) and ``|dx|`` columns at the left
  or right; the inverse crops them away again. Nothing is cut off, so the inverse is exact (a
  pad-then-crop-the-other-side shift would lose the pixels shifted out).

Measured (``benchmarks/bench_tta.py``, CPU demo model trained without flips, 8 test images of
the benchmark, PSNR inside the lung mask vs the aligned target): ``vflip`` -2.2 dB, ``hflip``
-2.0 dB, ``shift`` -0.14 dB (SSIM +0.001) for 1.7x, 1.5x and 2.6x the time of a plain
prediction; no set improved a single image. TTA is therefore off by default and
:data:`DEFAULT_TTA` is the least harmful set; measure before using it on another model.

Torch has no test-time-augmentation helper and MONAI's (``TestTimeAugmentation``) works on
dictionaries of invertible random MONAI transforms, so this small deterministic set is
written here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_SHIFT_PX", "DEFAULT_TTA", "TTA_NAMES", "TTATransform", "parse_tta"]

DEFAULT_SHIFT_PX = 2
"""Translation (pixels) of ``shift`` without an explicit size."""
TTA_NAMES = ("identity", "hflip", "vflip", "shift")
"""Names accepted by :func:`parse_tta` (``shift`` also as ``shift:N`` or ``shift:DY:DX``)."""

DEFAULT_TTA = ("identity", "shift")
"""A set for a bare ``--tta``: no flips (they alter chest anatomy and cost 2 dB on the demo)."""

_SHIFT_RE = re.compile(r"^shift(?::(-?\d+)(?::(-?\d+))?)?$")
_HFLIP_WARNING = (
    "TTA 'hflip' mirrors images left-right: on chest radiographs this alters the anatomy "
    "(heart on the wrong side), which a model trained without left-right flips has never "
    "seen; measure its gain (benchmarks/bench_tta.py) or use 'shift' instead"
)


@dataclass(frozen=True)
class TTATransform:
    """One invertible test-time transform of (N, C, H, W) tensors.

    Attributes:
        name: canonical name (``identity``, ``hflip``, ``vflip`` or ``shift:DY:DX``).
        flip_dims: tensor dims mirrored (``(-1,)`` for hflip, ``(-2,)`` for vflip).
        shift: ``(dy, dx)`` translation in pixels (reflect padding, see the module docstring).
    """

    name: str
    flip_dims: tuple[int, ...] = ()
    shift: tuple[int, int] = (0, 0)

    def _padding(self) -> tuple[int, int, int, int]:
        """``F.pad`` order: left, right, top, bottom."""
        dy, dx = self.shift
        return max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the transform.

        Args:
            x: ``(N, C, H, W)`` tensor.

        Returns:
            The transformed tensor; a shift makes it ``|dy|`` rows and ``|dx|`` columns larger.

        Raises:
            ValueError: if a shift is not smaller than the image (reflect padding needs that).
        """
        if self.flip_dims:
            x = torch.flip(x, self.flip_dims)
        if self.shift != (0, 0):
            h, w = x.shape[-2:]
            dy, dx = self.shift
            if abs(dy) >= h or abs(dx) >= w:
                raise ValueError(
                    f"TTA {self.name}: shift ({dy}, {dx}) px needs an image larger than that, "
                    f"got {h}x{w}"
                )
            x = F.pad(x, self._padding(), mode="reflect")
        return x

    def inverse(self, y: Tensor) -> Tensor:
        """Undo :meth:`forward` on a network output of the transformed size.

        Args:
            y: ``(N, C, H', W')`` output for a transformed input.

        Returns:
            ``y`` in the original geometry.
        """
        if self.shift != (0, 0):
            left, right, top, bottom = self._padding()
            h, w = y.shape[-2:]
            y = y[..., top : h - bottom, left : w - right]
        if self.flip_dims:
            y = torch.flip(y, self.flip_dims)
        return y


_FIXED = {
    "identity": TTATransform("identity"),
    "hflip": TTATransform("hflip", flip_dims=(-1,)),
    "vflip": TTATransform("vflip", flip_dims=(-2,)),
}


def _parse_one(name: str) -> list[TTATransform]:
    key = name.strip().lower()
    if key in _FIXED:
        return [_FIXED[key]]
    match = _SHIFT_RE.match(key)
    if match is None:
        raise ValueError(
            f"unknown TTA transform {name!r}; expected one of {', '.join(TTA_NAMES)} "
            "(shift also as shift:N or shift:DY:DX)"
        )
    first, second = match.groups()
    if second is not None:
        shifts = [(int(first), int(second))]
    else:
        n = DEFAULT_SHIFT_PX if first is None else int(first)
        shifts = [(n, n), (-n, -n)]
    if any(s == (0, 0) for s in shifts):
        raise ValueError(f"TTA {name!r}: a zero shift is the identity; use 'identity'")
    return [TTATransform(f"shift:{dy}:{dx}", shift=(dy, dx)) for dy, dx in shifts]


def parse_tta(names: Sequence[str] | str | None) -> list[TTATransform]:
    """The transforms of a TTA set, in order, duplicates removed.

    Args:
        names: transform names (see :data:`TTA_NAMES`), one name, or ``None`` / empty for
            no TTA (identity only).

    Returns:
        The transforms; ``[identity]`` when ``names`` is empty.

    Raises:
        ValueError: for an unknown name.
    """
    if names is None:
        names = []
    elif isinstance(names, str):
        names = [names]
    transforms: list[TTATransform] = []
    for name in names:
        for t in _parse_one(name):
            if t not in transforms:
                transforms.append(t)
    if not transforms:
        transforms = [_FIXED["identity"]]
    if any(t.name == "hflip" for t in transforms):
        log.warning(_HFLIP_WARNING)
    return transforms
