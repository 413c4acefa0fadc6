"""Paired datasets: discovery, validation and loading of (input, target, mask[, aligned]).

Two ways to describe a dataset:

* **Folder layout** ``ROOT/{train,val,test}/{input,target,mask,aligned}/NAME.ext``: files pair
  by ``NAME`` (the file name without its image suffix, so ``a.dcm`` pairs with ``a.png``).
  ``mask`` and ``aligned`` folders are optional.
* **CSV manifest** with columns ``split,input,target`` and optionally ``mask,aligned`` (empty
  cell = none; extra columns are kept as metadata and ignored); relative paths are relative to
  the manifest's folder.

Every problem found while building a split - missing partners, missing files, unreadable
files, size mismatches, an empty split - is collected and raised together as one
:class:`DatasetError` listing all offending names, not just the first.

Each item is a dict of tensors shaped (1, H, W): ``input``, ``target``, ``mask`` (0/1; all
ones without a mask file) and ``aligned_target`` when the dataset has aligned targets (or
simulates misalignment), plus ``name``, ``index`` and ``window`` (the normalisation window
``[lo, hi]`` needed to write results back in the input's units). With
``data.train_target: aligned`` the train split's ``target`` is its aligned target (then
misaligned by ``data.misalign`` when that applies to the train split).

:func:`resolve_pairs` decides whether the training pairs count as misaligned
(``data.pairs``).
"""

from __future__ import annotations

import csv
import logging
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medi2i.config import Config, MaskConfig, MisalignConfig
from medi2i.data.deform import random_smooth_displacement, warp_image
from medi2i.data.io import ImageIOError, ImageMeta, is_image_file, read_image
from medi2i.data.normalization import Normalizer, Window
from medi2i.data.transforms import PairedAugment, random_crop

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
ROLES = ("input", "target", "mask", "aligned")
_MAX_LISTED = 40
# Salts that keep the random streams of different purposes apart.
_AUGMENT_STREAM, _MISALIGN_STREAM = 1, 2


def _split_stream(split: str) -> int:
    """A stable integer for a split name, the same in every process and Python run.

    Python's ``hash()`` of a string is salted per interpreter (``PYTHONHASHSEED``), so it
    would give a pair a different misalignment in every run and in spawned DataLoader workers.
    """
    return zlib.crc32(split.encode("utf-8"))


class DatasetError(ValueError):
    """A dataset cannot be used; ``problems`` lists every offending file or name."""

    def __init__(self, what: str, problems: Sequence[str]):
        self.problems = list(problems)
        shown = self.problems[:_MAX_LISTED]
        more = len(self.problems) - len(shown)
        lines = [f"{what} ({len(self.problems)} problem{'s' * (len(self.problems) != 1)}):"]
        lines += [f"  - {p}" for p in shown]
        if more:
            lines.append(f"  ... and {more} more")
        super().__init__("\n".join(lines))


class MissingSplitError(DatasetError):
    """The requested split does not exist or holds no pairs (callers may treat it as optional)."""


@dataclass(frozen=True)
class PairRecord:
    """One pair's files."""

    name: str
    split: str
    input: Path
    target: Path
    mask: Path | None = None
    aligned: Path | None = None


# ---------------------------------------------------------------------------------------------
# discovery
# ---------------------------------------------------------------------------------------------


def image_stem(path: Path) -> str:
    """File name without its image suffix (``a.nii.gz`` -> ``a``, ``b.png`` -> ``b``)."""
    name = path.name
    lower = name.lower()
    for suffix in (".nii.gz", ".nii", ".dcm", ".dicom", ".png", ".tiff", ".tif", ".npy"):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _scan_folder(folder: Path, problems: list[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir() or not is_image_file(path):
            continue
        stem = image_stem(path)
        if stem in files:
            problems.append(f"{folder}: two files named {stem!r}: {files[stem].name}, {path.name}")
            continue
        files[stem] = path
    return files


def discover_layout(root: str | Path, split: str) -> list[PairRecord]:
    """Pairs of ``ROOT/SPLIT/{input,target,mask,aligned}/`` matched by name.

    Raises:
        DatasetError: missing folders, names without a partner, an empty split.
    """
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise MissingSplitError(
            f"dataset {root}", [f"split folder {split_dir} not found (expected {split_dir}/input)"]
        )
    problems: list[str] = []
    found: dict[str, dict[str, Path]] = {}
    for role in ROLES:
        folder = split_dir / role
        if folder.is_dir():
            found[role] = _scan_folder(folder, problems)
        elif role in ("input", "target"):
            problems.append(f"folder {folder} is missing")
    if "input" not in found or "target" not in found:
        raise DatasetError(f"dataset {root} split {split!r}", problems)
    names = sorted(set().union(*(set(v) for v in found.values())))
    records = []
    for name in names:
        missing = [role for role in found if name not in found[role]]
        if missing:
            have = [role for role in found if name in found[role]]
            problems.append(f"{name}: has {', '.join(have)} but no {', '.join(missing)}")
            continue
        records.append(
            PairRecord(
                name=name,
                split=split,
                input=found["input"][name],
                target=found["target"][name],
                mask=found.get("mask", {}).get(name),
                aligned=found.get("aligned", {}).get(name),
            )
        )
    if not records and not problems:
        raise MissingSplitError(
            f"dataset {root} split {split!r}", [f"no image pairs in {split_dir}"]
        )
    if problems:
        raise DatasetError(f"dataset {root} split {split!r}", problems)
    return records


def read_manifest(manifest: str | Path, split: str) -> list[PairRecord]:
    """Pairs of one split from a CSV manifest (``split,input,target[,mask][,aligned]``).

    Raises:
        DatasetError: missing columns, unknown split names, missing files, duplicate names,
            an empty split.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise DatasetError(f"manifest {manifest}", ["file not found"])
    base = manifest.parent
    with manifest.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = set(reader.fieldnames or [])
        missing_cols = {"split", "input", "target"} - columns
        if missing_cols:
            raise DatasetError(
                f"manifest {manifest}",
                [
                    f"missing column(s) {', '.join(sorted(missing_cols))}; "
                    f"found {', '.join(reader.fieldnames or []) or 'none'}"
                ],
            )
        rows = list(reader)
    problems: list[str] = []
    records: list[PairRecord] = []
    seen: dict[str, int] = {}

    def resolve(line: int, row: dict, role: str) -> Path | None:
        value = (row.get(role) or "").strip()
        if not value:
            if role in ("input", "target"):
                problems.append(f"line {line}: empty {role!r}")
            return None
        path = Path(value)
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            problems.append(f"line {line}: {role} file {value!r} not found")
        return path

    for line, row in enumerate(rows, start=2):
        row_split = (row.get("split") or "").strip()
        if row_split not in SPLITS:
            problems.append(f"line {line}: split {row_split!r} is not one of {', '.join(SPLITS)}")
            continue
        if row_split != split:
            continue
        paths = {role: resolve(line, row, role) for role in ROLES}
        if paths["input"] is None or paths["target"] is None:
            continue
        name = image_stem(paths["input"])
        if name in seen:
            problems.append(f"line {line}: input name {name!r} already used on line {seen[name]}")
            continue
        seen[name] = line
        records.append(
            PairRecord(
                name, split, paths["input"], paths["target"], paths["mask"], paths["aligned"]
            )
        )
    if not records and not problems:
        raise MissingSplitError(f"manifest {manifest} split {split!r}", ["no rows"])
    if problems:
        raise DatasetError(f"manifest {manifest} split {split!r}", problems)
    return records


def discover_pairs(
    split: str, *, root: str | Path | None = None, manifest: str | Path | None = None
) -> list[PairRecord]:
    """Records of one split from a manifest (when given) or the folder layout under ``root``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if manifest is not None:
        return read_manifest(manifest, split)
    if root is None:
        raise ValueError("set data.root (folder layout) or data.manifest (CSV)")
    return discover_layout(root, split)


# ---------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# dataset
# ---------------------------------------------------------------------------------------------

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
        records: the pairs (from :func:`discover_pairs`).
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


# ---------------------------------------------------------------------------------------------
# building from the config
# ---------------------------------------------------------------------------------------------


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
