"""A resumable, rank-aware sampler: the sample order depends only on (seed, epoch).

Each epoch draws as many permutations of the dataset as it needs (seeded with
``(seed, epoch, k)``), concatenates them, deals the result to the ranks round-robin and can
start part-way through (``start_step``). Because the order is a pure function of the seed and
the epoch - no RNG state involved - a run resumed from a checkpoint taken at step ``s`` of an
epoch sees exactly the batches the uninterrupted run saw from step ``s`` on.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class EpochSampler(Sampler[tuple[int, int]]):
    """Indices for ``steps`` batches of ``batch_size`` on one rank.

    Yields ``(epoch, index)`` pairs, which :class:`~medi2i.data.dataset.PairedImageDataset`
    accepts as keys, so the epoch reaches DataLoader workers (even persistent ones).

    Args:
        dataset_size: number of items.
        batch_size: per-rank batch size.
        steps: batches per epoch.
        seed: base seed.
        shuffle: random order (else sequential, wrapping around).
        rank: this process's rank.
        world_size: number of ranks.
    """

    def __init__(
        self,
        dataset_size: int,
        *,
        batch_size: int,
        steps: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        if dataset_size < 1 or batch_size < 1 or steps < 1:
            raise ValueError(
                f"EpochSampler needs dataset_size, batch_size and steps >= 1, "
                f"got {dataset_size}, {batch_size}, {steps}"
            )
        self.n = dataset_size
        self.batch_size = batch_size
        self.steps = steps
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch's order and the step to start from (0 = the beginning)."""
        if not 0 <= start_step <= self.steps:
            raise ValueError(f"start_step must be in [0, {self.steps}], got {start_step}")
        self.epoch = int(epoch)
        self.start_step = int(start_step)

    def epoch_indices(self) -> np.ndarray:
        """This rank's full index list of the current epoch (before ``start_step``)."""
        needed = self.steps * self.batch_size * self.world_size
        chunks, have, k = [], 0, 0
        while have < needed:
            if self.shuffle:
                rng = np.random.default_rng((self.seed, self.epoch, k))
                chunks.append(rng.permutation(self.n))
            else:
                chunks.append(np.arange(self.n))
            have += self.n
            k += 1
        order = np.concatenate(chunks)[:needed]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = self.epoch_indices()[self.start_step * self.batch_size :]
        return iter([(self.epoch, i) for i in indices.tolist()])

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.batch_size
