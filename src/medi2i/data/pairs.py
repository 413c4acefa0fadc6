"""Paired-dataset discovery: which files make up each pair of a split.

Two ways to describe a dataset:

* **Folder layout** ``ROOT/{train,val,test}/{input,target,mask,aligned}/NAME.ext``: files pair
  by ``NAME`` (the file name without its image suffix, so ``a.dcm`` pairs with ``a.png``).
  ``mask`` and ``aligned`` folders are optional.
* **CSV manifest** with columns ``split,input,target`` and optionally ``mask,aligned`` (empty
  cell = none; extra columns are kept as metadata and ignored); relative paths are relative to
  the manifest's folder.

:func:`discover_pairs` turns either into :class:`PairRecord` objects. Only names and paths
are checked here (images are read by :class:`~medi2i.data.dataset.PairedImageDataset`). Every
problem found - missing folders or columns, names without a partner, missing files, duplicate
names, unknown split names, an empty split - is collected and raised together as one
:class:`DatasetError` listing all offending names, not just the first;
:class:`MissingSplitError` marks a split that does not exist or holds no pairs.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medi2i.data.io import is_image_file

__all__ = [
    "ROLES",
    "SPLITS",
    "DatasetError",
    "MissingSplitError",
    "PairRecord",
    "discover_layout",
    "discover_pairs",
    "image_stem",
    "read_manifest",
]

SPLITS = ("train", "val", "test")
ROLES = ("input", "target", "mask", "aligned")
_MAX_LISTED = 40


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
