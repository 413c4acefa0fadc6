"""Each sample's random streams and the target's misalignment.

Every sample has its own random stream (:func:`sample_rng`, from the benchmark seed, the split
and the index), so any sample can be regenerated alone and the output does not depend on the
number of worker threads. That stream first yields four independent child streams
(:func:`sample_streams`: pose, misalignment, elastic deformation, noise), so switching noise or
deformation on or off leaves the poses and misalignments of a benchmark unchanged, and
:func:`target_displacement` recovers a sample's true misalignment without rendering it.

The misalignment is a smooth random displacement of at most ``misalign_px`` pixels (its largest
norm drawn uniformly from ``[0.5, 1] * misalign_px``), like the second exposure of a
dual-energy pair.
"""

from __future__ import annotations

import numpy as np

from medi2i.data.deform import random_smooth_displacement

__all__ = [
    "SPLIT_IDS",
    "draw_misalignment",
    "sample_rng",
    "sample_streams",
    "target_displacement",
]

#: The spawn key of each split in :func:`sample_rng`.
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


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


def sample_streams(rng: np.random.Generator) -> tuple[np.random.Generator, ...]:
    """A sample's four independent streams: pose, misalignment, elastic deformation, noise."""
    return tuple(np.random.default_rng(int(s)) for s in rng.integers(0, 2**63 - 1, size=4))


def draw_misalignment(
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
    _, misalign_rng, _, _ = sample_streams(sample_rng(seed, split, index))
    return draw_misalignment((size, size), misalign_px, misalign_rng)
