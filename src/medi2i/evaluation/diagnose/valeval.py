"""Per-image validation evaluation of a run's best EMA generator, cached in the run directory
(``RUN/diagnose/val``): the numbers the paired intervals of the comparisons rest on."""

from __future__ import annotations

import csv
import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medi2i.evaluation.runs import finite_or_none, resolve_data_paths
from medi2i.run.layout import RunLayout

log = logging.getLogger(__package__)  # one logger for the package: medi2i.evaluation.diagnose


_CACHE_FILE = "cache.json"


@dataclass
class PerImageMetrics:
    """One run's best EMA generator evaluated per image on the validation split.

    Attributes:
        run: the run directory.
        checkpoint: the checkpoint evaluated.
        epoch: its epoch (None if unknown).
        reference: what the outputs were compared with (``aligned_target`` or ``target``).
        units: the value range the metrics were computed in.
        names: image names, one per row of ``values``.
        values: metric -> per-image values (NaN where undefined).
        cached: True when read back from ``RUN/diagnose/val`` instead of evaluated now.
    """

    run: str
    checkpoint: str
    epoch: int | None
    reference: str
    units: str
    names: list[str]
    values: dict[str, np.ndarray]
    cached: bool = False

    def column(self, metric: str) -> np.ndarray:
        """Per-image values of ``metric`` (``*_mask`` falls back to the whole image when the
        masked column is absent or all NaN)."""
        col = self.values.get(metric)
        if (col is None or not np.isfinite(col).any()) and metric.endswith("_mask"):
            col = self.values.get(metric[: -len("_mask")])
        return col if col is not None else np.full(len(self.names), np.nan)


def _cache_key(checkpoint: Path, data_root: str | Path | None) -> dict[str, Any]:
    from medi2i.utils.version import __version__

    stat = checkpoint.stat()
    return {
        "checkpoint": checkpoint.name,
        "mtime_ns": stat.st_mtime_ns,
        "size": stat.st_size,
        "weights": "ema",
        "split": "val",
        "data_root": None if data_root is None else str(data_root),
        "medi2i_version": __version__,
    }


def _read_eval(folder: Path, run_dir: Path, cached: bool) -> PerImageMetrics:
    """Model rows of ``metrics.csv`` and the provenance in ``summary.json`` of an evaluation."""
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    names: list[str] = []
    columns: dict[str, list[float]] = {}
    with (folder / "metrics.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row.get("method") != "model":
                continue
            names.append(row["name"])
            for key, text in row.items():
                if key in ("name", "method"):
                    continue
                try:
                    value = float(text) if text not in ("", None) else math.nan
                except ValueError:
                    value = math.nan
                columns.setdefault(key, []).append(value)
    epoch = summary.get("epoch")
    return PerImageMetrics(
        run=str(run_dir),
        checkpoint=str(summary.get("checkpoint", "")),
        epoch=int(epoch) if finite_or_none(epoch) is not None else None,
        reference=str(summary.get("reference", "")),
        units=str(summary.get("units", "")),
        names=names,
        values={k: np.asarray(v, dtype=np.float64) for k, v in columns.items()},
        cached=cached,
    )


def evaluate_val_per_image(
    run_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    device: str = "cpu",
    refresh: bool = False,
) -> PerImageMetrics:
    """Per-image validation metrics of a run's best EMA generator, cached in the run directory.

    Evaluates with :func:`medi2i.evaluation.evaluate.evaluate_split` (against the aligned target
    when the dataset has one) into ``RUN/diagnose/val/`` (``metrics.csv``, ``summary.json``) and
    records in ``cache.json`` which checkpoint (name, modification time, size) and data root the
    numbers belong to; a later call with the same key reads them back instead of evaluating.
    A run directory that cannot be written to is evaluated into a temporary folder.

    Args:
        run_dir: the run (its ``best.pt``, else ``last.pt``).
        data_root: where the dataset is now (default: the run's ``data.root``, relative paths
            looked up from here and from the run's folders).
        device: where G runs.
        refresh: evaluate even when the cache matches.

    Returns:
        The per-image metrics.

    Raises:
        FileNotFoundError: the run has no checkpoint.
        ValueError: unreadable checkpoint.
        medi2i.data.pairs.DatasetError: the validation split cannot be read.
    """
    from medi2i.evaluation.evaluate import evaluate_split
    from medi2i.inference.loading import load_generator, resolve_checkpoint

    run_dir = Path(run_dir)
    checkpoint = resolve_checkpoint(run_dir)
    key = _cache_key(checkpoint, data_root)
    folder = RunLayout(run_dir).diagnose_val
    cache = folder / _CACHE_FILE
    if not refresh and cache.is_file():
        try:
            if json.loads(cache.read_text(encoding="utf-8")) == key:
                result = _read_eval(folder, run_dir, cached=True)
                log.info("%s: validation metrics read from %s", run_dir.name, folder)
                return result
        except (OSError, ValueError, KeyError) as exc:
            log.warning("%s: unreadable cache (%s); evaluating again", folder, exc)
    gen = load_generator(checkpoint, weights="ema", device=device)
    cfg = resolve_data_paths(gen.config, run_dir, data_root)

    def run_eval(out: Path) -> PerImageMetrics:
        evaluate_split(
            gen, out_dir=out, split="val", config=cfg, bootstrap=200, worst_k=0, progress=False
        )
        return _read_eval(out, run_dir, cached=False)

    try:
        folder.mkdir(parents=True, exist_ok=True)
        result = run_eval(folder)
        cache.write_text(json.dumps(key, indent=2) + "\n", encoding="utf-8")
    except PermissionError as exc:
        log.warning("%s: cannot write (%s); evaluating without a cache", folder, exc)
        with tempfile.TemporaryDirectory() as tmp:
            result = run_eval(Path(tmp))
    log.info("%s: evaluated %d validation images", run_dir.name, len(result.names))
    return result
