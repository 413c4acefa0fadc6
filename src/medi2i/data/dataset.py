"""The paired-image dataset: :class:`PairedImageDataset` reads, checks and serves one split.

Files are read (and checked) once at construction: unreadable files, size mismatches, aligned
targets on only some pairs, an aligned training target without aligned files and images
smaller than the crop are raised as a :class:`~medi2i.data.pairs.DatasetError` that lists every
offending pair.

Each item is a dict of tensors shaped (1, H, W): ``input``, ``target``, ``mask`` (0/1; all
ones without a mask file) and ``aligned_target`` when the dataset has aligned targets (or
simulates misalignment), plus ``name``, ``index`` and ``window`` (the normalisation window
``[lo, hi]`` needed to write results back in the input's units). With
``data.train_target: aligned`` the train split's ``target`` is its aligned target (then
misaligned by ``data.misalign`` when that applies to the train split).

Randomness depends only on seeds: simulated misalignment on ``(seed, split, index)``,
augmentation and crop on ``(seed, epoch, index)``, each in its own salted stream, so items do
not depend on the number of DataLoader workers or the loading order.

The pairs come from :mod:`medi2i.data.pairs`; :mod:`medi2i.data.builders` builds a dataset
from a config.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from medi2i.config import MaskConfig, MisalignConfig
from medi2i.data.deform import random_smooth_displacement, warp_image
from medi2i.data.io import ImageIOError, ImageMeta, read_image
from medi2i.data.normalization import Normalizer, Window
from medi2i.data.pairs import DatasetError, PairRecord
from medi2i.data.transforms import PairedAugment, random_crop

__all__ = ["PairedImageDataset", "binarize_mask"]

log = logging.getLogger(__name__)

# Salts that keep the random streams of different purposes apart.
_AUGMENT_STREAM, _MISALIGN_STREAM = 1, 2


def _split_stream(split: str) -> int:
    """A stable integer for a split name, the same in every process and Python run.

    Python's ``hash()`` of a string is salted per interpreter (``PYTHONHASHSEED``), so it
    would give a pair a different misalignment in every run and in spawned DataLoader workers.
    """
    return zlib.crc32(split.encode("utf-8"))


def binarize_mask(mask: np.ndarray, meta: ImageMeta, cfg: MaskConfig) -> np.ndarray:
    """Binary float32 mask (1 inside) by the documented rule of :class:`MaskConfig`."""
    if cfg.binarize == "nonzero":
        inside = mask != 0
    elif cfg.binarize == "labels":
        inside = np.isin(np.rint(mask).astype(np.int64), cfg.labels or [])
    else:
        scale = {"uint8": 255.0, "uint16": 65535.0}.get(meta.stored_dtype, 1.0)
        inside = mask > cfg.threshold * scale
    return inside.astype(np.float32)


def _compact(image: np.ndarray, meta: ImageMeta) -> np.ndarray:
    """Store an image in its file's integer type when that is lossless (halves the cache)."""
    if meta.stored_dtype in ("uint8", "uint16", "int8", "int16"):
        compact = image.astype(meta.stored_dtype)
        if np.array_equal(compact, image):
            return compact
    return image


_Loaded = tuple[dict[str, np.ndarray], Window, Window]


class PairedImageDataset(Dataset):
    """Map-style dataset of normalised image pairs (DataLoader-ready, deterministic by seed).

    Files are read (and checked) once at construction: unreadable files and size mismatches
    are reported together. With ``cache`` the decoded images stay in memory (forked
    DataLoader workers share them copy-on-write).

    Random augmentation of item ``i`` in epoch ``e`` uses a generator seeded with
    ``(seed, e, i)`` (call :meth:`set_epoch` each epoch), so results do not depend on the
    number of workers or the loading order. Simulated misalignment of item ``i`` of split
    ``s`` is seeded with ``(seed, s, i)`` and not with the epoch: like a real misaligned
    dataset, a pair keeps its misalignment, and the i-th pairs of different splits get
    independent fields.

    Args:
        records: the pairs (from :func:`~medi2i.data.pairs.discover_pairs`).
        normalizer: maps stored units to the network's range.
        mask_cfg: mask binarisation rule.
        augment: paired augmentation, or ``None``.
        misalign: simulated misalignment settings, or ``None`` for none.
        crop_size: random crop size (px) applied after augmentation, or ``None``.
        seed: base seed.
        slice_index: slice of 3D NIfTI/TIFF files.
        cache: keep decoded images in memory.
        target_from_aligned: use each pair's aligned target as its ``target`` (the item keeps
            ``aligned_target`` too); simulated misalignment then warps the aligned target.

    Attributes:
        has_aligned_files: every pair has an aligned-target file (not simulated).
        has_aligned_target: items carry ``aligned_target`` (aligned files or simulated
            misalignment).

    Raises:
        DatasetError: unreadable files, shape mismatches, inconsistent aligned targets, or
            ``target_from_aligned`` without aligned targets.
    """

    def __init__(
        self,
        records: Sequence[PairRecord],
        normalizer: Normalizer,
        *,
        mask_cfg: MaskConfig | None = None,
        augment: PairedAugment | None = None,
        misalign: MisalignConfig | None = None,
        crop_size: int | None = None,
        seed: int = 0,
        slice_index: int | None = None,
        cache: bool = True,
        target_from_aligned: bool = False,
    ):
        if not records:
            raise DatasetError("dataset", ["no image pairs"])
        self.records = list(records)
        self.normalizer = normalizer
        self.mask_cfg = mask_cfg or MaskConfig()
        self.augment = None if augment is None or augment.is_identity else augment
        self.misalign = misalign if misalign is not None and misalign.max_px > 0 else None
        self.crop_size = crop_size
        self.seed = int(seed)
        self.slice_index = slice_index
        self.epoch = 0
        has_aligned = {r.aligned is not None for r in self.records}
        if len(has_aligned) > 1:
            lacking = [r.name for r in self.records if r.aligned is None]
            raise DatasetError(
                "dataset: aligned targets must exist for all pairs or none",
                [f"{n}: no aligned target" for n in lacking],
            )
        self.has_aligned_files = has_aligned == {True}
        self.has_aligned_target = self.has_aligned_files or self.misalign is not None
        self.target_from_aligned = bool(target_from_aligned)
        if self.target_from_aligned and not self.has_aligned_files:
            raise DatasetError(
                f"split {self.records[0].split!r}: data.train_target 'aligned' needs aligned "
                "targets",
                [
                    f"none of its {len(self.records)} pairs has an aligned target; add the "
                    "'aligned' folder (or manifest column) or set data.train_target=target"
                ],
            )
        self._cache: list[_Loaded | None] = [None] * len(self.records)
        self._check_and_cache(cache)
        if crop_size is not None:
            small = [
                f"{rec.name}: {h}x{w} is smaller than data.crop_size {crop_size}"
                for rec, (h, w) in zip(self.records, self._shapes)
                if h < crop_size or w < crop_size
            ]
            if small:
                raise DatasetError(f"split {self.records[0].split!r}", small)

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (call before iterating each epoch)."""
        self.epoch = int(epoch)

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the first pair (all pairs of a split are checked to match their parts)."""
        return self._shapes[0]

    # -- loading -----------------------------------------------------------------------------

    def _read(self, path: Path) -> tuple[np.ndarray, ImageMeta]:
        return read_image(path, slice_index=self.slice_index)

    def _load(self, rec: PairRecord) -> _Loaded:
        """Read a pair and check its shapes; images kept compact, in stored units.

        Raises:
            ImageIOError: unreadable file.
            ValueError: size mismatch or a window that cannot be computed.
        """
        inp, meta_in = self._read(rec.input)
        tgt, meta_t = self._read(rec.target)
        shapes = {"input": inp.shape, "target": tgt.shape}
        norm = self.normalizer
        win_in = norm.window_for(inp, meta_in.stored_dtype, str(rec.input))
        share = norm.cfg.share_scale
        win_t = win_in if share else norm.window_for(tgt, meta_t.stored_dtype, str(rec.target))
        raw = {"input": _compact(inp, meta_in), "target": _compact(tgt, meta_t)}
        if rec.aligned is not None:
            aligned, meta_a = self._read(rec.aligned)
            shapes["aligned"] = aligned.shape
            raw["aligned_target"] = _compact(aligned, meta_a)
        if rec.mask is not None:
            mask, meta_m = self._read(rec.mask)
            shapes["mask"] = mask.shape
            raw["mask"] = binarize_mask(mask, meta_m, self.mask_cfg).astype(bool)
        if len(set(shapes.values())) > 1:
            detail = ", ".join(f"{k} {v[0]}x{v[1]}" for k, v in shapes.items())
            raise ValueError(f"size mismatch: {detail}")
        return raw, win_in, win_t

    def _check_and_cache(self, keep: bool) -> None:
        start = time.perf_counter()
        problems: list[str] = []
        self._shapes: list[tuple[int, int]] = []
        for i, rec in enumerate(self.records):
            try:
                loaded = self._load(rec)
            except (ImageIOError, ValueError) as exc:
                problems.append(f"{rec.name}: {exc}")
                continue
            self._shapes.append(loaded[0]["input"].shape)
            if keep:
                self._cache[i] = loaded
        if problems:
            raise DatasetError(f"split {self.records[0].split!r}", problems)
        log.info(
            "checked %d pairs of split %r in %.1fs (cache %s)",
            len(self.records),
            self.records[0].split,
            time.perf_counter() - start,
            "on" if keep else "off",
        )

    def raw_inputs(self, count: int) -> Iterator[tuple[np.ndarray, Window, str]]:
        """Up to ``count`` evenly spaced inputs as stored, with their windows and value types.

        The value type is the file's integer type when the image holds integers of it, else
        the decoded float type (e.g. rescaled DICOM).
        """
        indices = np.unique(np.linspace(0, len(self) - 1, min(count, len(self))).astype(int))
        for index in indices:
            loaded = self._cache[index]
            raw, win_in, _ = loaded if loaded is not None else self._load(self.records[index])
            image = raw["input"]
            yield image, win_in, image.dtype.name

    def load_unit(self, index: int) -> tuple[dict[str, np.ndarray], Window, Window]:
        """The pair's images in [0, 1] (mask 0/1) before any random transform, and windows."""
        loaded = self._cache[index]
        raw, win_in, win_t = loaded if loaded is not None else self._load(self.records[index])
        to_unit = self.normalizer.to_unit
        arrays = {
            key: value.astype(np.float32)
            if key == "mask"
            else to_unit(value, win_in if key == "input" else win_t)
            for key, value in raw.items()
        }
        return arrays, win_in, win_t

    def _simulate_misalignment(self, arrays: dict[str, np.ndarray], index: int) -> None:
        assert self.misalign is not None
        split = _split_stream(self.records[index].split)
        rng = np.random.default_rng((self.seed, _MISALIGN_STREAM, split, index))
        max_px = float(rng.uniform(0.5, 1.0)) * self.misalign.max_px
        disp = random_smooth_displacement(
            arrays["target"].shape, max_px, rng, control_points=self.misalign.control_points
        )
        arrays.setdefault("aligned_target", arrays["target"])
        arrays["target"] = warp_image(arrays["target"], disp, order=1)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """Item ``index``, or ``(epoch, index)`` to pick the epoch's augmentation explicitly.

        The tuple form lets a sampler carry the epoch to DataLoader workers, which hold their
        own copy of the dataset (so :meth:`set_epoch` on the main process cannot reach
        persistent workers).
        """
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        rec = self.records[index]
        arrays, win_in, _ = self.load_unit(index)
        if self.target_from_aligned:
            arrays["target"] = arrays["aligned_target"].copy()
        if self.misalign is not None:
            self._simulate_misalignment(arrays, index)
        if self.augment is not None or self.crop_size is not None:
            rng = np.random.default_rng((self.seed, _AUGMENT_STREAM, epoch, index))
            if self.augment is not None:
                arrays = self.augment(arrays, rng)
            if self.crop_size is not None:
                arrays = random_crop(arrays, self.crop_size, rng)
        if "mask" not in arrays:
            arrays["mask"] = np.ones_like(arrays["input"])
        item: dict = {
            key: torch.from_numpy(
                np.ascontiguousarray(
                    value if key == "mask" else self.normalizer.unit_to_output(value),
                    dtype=np.float32,
                )
            )[None]
            for key, value in arrays.items()
        }
        item["name"] = rec.name
        item["index"] = index
        item["window"] = torch.tensor([win_in.lo, win_in.hi], dtype=torch.float64)
        return item
