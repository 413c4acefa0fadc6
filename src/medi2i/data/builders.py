"""Datasets from a config: the normaliser, the dataset of a split and its DataLoader.

:func:`build_normalizer`, :func:`build_dataset` and :func:`build_dataloader` turn the config's
``data`` section (and ``seed``) into a :class:`~medi2i.data.normalization.Normalizer`, a
:class:`~medi2i.data.dataset.PairedImageDataset` and a ``DataLoader``; the dataset itself never
sees the whole config. :func:`resolve_pairs` decides whether the training pairs count as misaligned
(``data.pairs``).
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader

from medi2i.config import Config
from medi2i.data.dataset import PairedImageDataset
from medi2i.data.io import read_image
from medi2i.data.normalization import Normalizer
from medi2i.data.pairs import discover_pairs
from medi2i.data.transforms import PairedAugment

__all__ = ["build_dataloader", "build_dataset", "build_normalizer", "resolve_pairs"]

log = logging.getLogger(__name__)


def build_normalizer(cfg: Config) -> Normalizer:
    """The normaliser of a config; ``dataset_percentile`` mode reads the training split."""
    ncfg = cfg.data.normalization
    if ncfg.mode != "dataset_percentile":
        return Normalizer(ncfg)
    records = discover_pairs("train", root=cfg.data.root, manifest=cfg.data.manifest)

    def images():
        for rec in records:
            for path in (rec.input, rec.target):
                yield read_image(path, slice_index=cfg.data.slice_index)[0]

    return Normalizer.fit(ncfg, images())


def build_dataset(
    cfg: Config, split: str, *, normalizer: Normalizer | None = None, train: bool | None = None
) -> PairedImageDataset:
    """The dataset of one split as the config describes it.

    Args:
        cfg: the run's config.
        split: ``train``, ``val`` or ``test``.
        normalizer: a shared normaliser (e.g. the training one, or from a checkpoint);
            built from the config when ``None``.
        train: apply training-time randomness (augmentation, random crop); default: only
            for the ``train`` split.

    Returns:
        The dataset. For the ``train`` split with ``data.train_target: aligned`` its targets
        are the aligned targets (whatever ``train`` says); simulated misalignment applies to
        the splits in ``data.misalign.splits``.

    Raises:
        DatasetError: the split cannot be read, or ``data.train_target: aligned`` on a train
            split without aligned targets.
    """
    train = (split == "train") if train is None else train
    data = cfg.data
    records = discover_pairs(split, root=data.root, manifest=data.manifest)
    augment = None
    if train or data.augment.apply_to_eval:
        augment = PairedAugment(data.augment)
    misalign = data.misalign if split in data.misalign.splits else None
    dataset = PairedImageDataset(
        records,
        normalizer or build_normalizer(cfg),
        mask_cfg=data.mask,
        augment=augment,
        misalign=misalign,
        crop_size=data.crop_size if train else None,
        seed=cfg.seed,
        slice_index=data.slice_index,
        cache=data.cache,
        target_from_aligned=split == "train" and data.train_target == "aligned",
    )
    log.info("split %r: %d pairs, image %s", split, len(dataset), dataset.image_shape)
    return dataset


def resolve_pairs(cfg: Config, train_dataset: PairedImageDataset) -> tuple[bool, str]:
    """Whether the training pairs are misaligned (``data.pairs``), and why.

    ``misaligned`` and ``aligned`` are taken as stated. ``auto`` means misaligned when the
    train split gets simulated misalignment (``"train" in data.misalign.splits`` and
    ``data.misalign.max_px > 0``), or when G trains against the measured targets
    (``data.train_target: target``) of a train split that ships aligned targets (a dataset
    provides an aligned truth because its targets are misaligned); otherwise aligned. Real
    misaligned data without an aligned truth (e.g. dual-energy subtraction) cannot be
    recognised and needs ``data.pairs: misaligned``.

    Args:
        cfg: the run's config.
        train_dataset: the train split as built by :func:`build_dataset`.

    Returns:
        ``(misaligned, reason)``, the reason one short line for the log.
    """
    data = cfg.data
    if data.pairs != "auto":
        return data.pairs == "misaligned", f"data.pairs={data.pairs}"
    if "train" in data.misalign.splits and data.misalign.max_px > 0:
        return True, (
            f"data.pairs=auto: simulated misalignment on the train split "
            f"(data.misalign.max_px={data.misalign.max_px:g})"
        )
    if data.train_target == "target" and train_dataset.has_aligned_files:
        return True, (
            "data.pairs=auto: the train split ships aligned targets, so its targets are taken "
            "as misaligned"
        )
    if data.train_target == "aligned":
        return False, (
            "data.pairs=auto: training against the aligned targets (data.train_target=aligned) "
            "without simulated misalignment"
        )
    return False, (
        "data.pairs=auto: no aligned targets and no simulated misalignment in the train split "
        "(set data.pairs=misaligned for misaligned data without an aligned truth)"
    )


def build_dataloader(
    dataset: PairedImageDataset,
    cfg: Config,
    *,
    shuffle: bool,
    drop_last: bool = False,
    pin_memory: bool | None = None,
    sampler=None,
) -> DataLoader:
    """A DataLoader with the config's batch size and workers, shuffled by a seeded generator.

    Workers are persistent between epochs when there are any; memory is pinned when asked
    (``data.pin_memory``; default: on when CUDA is available).
    """
    data = cfg.data
    if pin_memory is None:
        pin_memory = data.pin_memory if data.pin_memory is not None else torch.cuda.is_available()
    generator = torch.Generator().manual_seed(cfg.seed)
    return DataLoader(
        dataset,
        batch_size=data.batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=data.num_workers,
        persistent_workers=data.num_workers > 0,
        pin_memory=pin_memory,
        generator=generator,
    )
