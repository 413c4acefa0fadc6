"""Read a training run directory back: its config, summary, test metrics and metric logs.

A run directory is what :func:`medi2i.training.trainer.train` writes::

    RUN_DIR/config.yaml             resolved config
    RUN_DIR/summary.json            mode, epochs, steps, best {metric, value, epoch}, wall_seconds,
                                    pairs {misaligned, reason}, D_conditional, instabilities
    RUN_DIR/test_metrics.json       EMA model and identity-baseline means on the test split
    RUN_DIR/metrics/epochs.jsonl    one JSON object per epoch (train_* means, val_*, lr_*)
    RUN_DIR/metrics/steps.jsonl     one JSON object per logged step
    RUN_DIR/checkpoints/best.pt     (and last.pt)

Only one of ``config.yaml``, ``summary.json`` or ``metrics/epochs.jsonl`` is needed for a
directory to count as a run (an interrupted run has no summary yet; a synthetic one may have no
checkpoint); every other file is optional and its absence is recorded, not fatal. JSON ``null``
(how the trainer writes non-finite numbers) is read as NaN. A truncated last line of a JSONL
file (a run killed mid-write) is skipped with a warning.

Logged keys are named by :mod:`medi2i.run.scalars`. Reading a key is tolerant
(:meth:`RunRecord.series`: a key no row has gives an empty series), for keys whose absence is
legitimate (D's keys in a run without D, gradient shares with ``logging.gshare_every: 0``); a
reader that cannot do its job without a key asks :meth:`RunRecord.require_series`, which raises
:class:`MissingScalarError` naming the run, the file and the key.

Decisions about a run (which is better, whether it is still improving) use its **validation**
metrics (:meth:`RunRecord.decision_metrics`); the test split is held out for reporting
(:meth:`RunRecord.final_metrics`), since choosing by it would leak it into the choice.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medi2i.run.layout import RUN_MARKERS, RunLayout
from medi2i.run.scalars import (
    BEST_EPOCH,
    BEST_VALUE,
    EPOCH,
    EPOCH_SECONDS,
    STEP,
    val_name,
)

log = logging.getLogger(__name__)

__all__ = [
    "MissingScalarError",
    "RunRecord",
    "cfg_get",
    "finite_or_none",
    "load_run",
    "resolve_data_paths",
    "run_label",
    "run_mode",
]


def cfg_get(config: dict, dotted: str, default: Any = None) -> Any:
    """A value of a nested config dict by dotted key (``"loss.gan_weight"``), or ``default``."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def run_mode(config: dict, summary: dict | None = None) -> str:
    """``G``, ``G+R``, ``G+D`` or ``G+R+D``: from the summary when it says, else the config."""
    if summary and isinstance(summary.get("mode"), str):
        return summary["mode"]
    mode = "G"
    if cfg_get(config, "model.R.enabled", False):
        mode += "+R"
    if cfg_get(config, "model.D.enabled", False):
        mode += "+D"
    return mode


def run_label(config: dict, summary: dict | None = None) -> str:
    """A short description of what was trained, e.g. ``"G+D fm=2.0 gan=1.0"``.

    The loss weights are shown only when D is on (they mean nothing without it); an R1 penalty
    is shown when it is on.
    """
    mode = run_mode(config, summary)
    if "D" not in mode.split("+"):
        return mode
    parts = [mode]
    fm = cfg_get(config, "loss.feat_match_weight")
    gan = cfg_get(config, "loss.gan_weight")
    if fm is not None:
        parts.append(f"fm={float(fm)}")
    if gan is not None:
        parts.append(f"gan={float(gan)}")
    r1 = cfg_get(config, "loss.r1_weight")
    if r1:
        parts.append(f"r1={float(r1)}")
    return " ".join(parts)


def _nan_for_none(obj: Any) -> Any:
    """JSON ``null`` -> NaN, recursively (the trainer writes non-finite numbers as null)."""
    if obj is None:
        return math.nan
    if isinstance(obj, dict):
        return {k: _nan_for_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_for_none(v) for v in obj]
    return obj


def _read_json(path: Path, problems: list[str]) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problems.append(f"{path.name}: unreadable ({exc})")
        log.warning("%s: unreadable JSON (%s); ignored", path, exc)
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path.name}: not a JSON object")
        return {}
    return data


def _read_jsonl(path: Path, problems: list[str]) -> list[dict]:
    if not path.is_file():
        return []
    rows: list[dict] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            problems.append(f"{path.name} line {number}: not JSON ({exc})")
            log.warning("%s line %d: not JSON (%s); skipped", path, number, exc)
            continue
        if isinstance(row, dict):
            rows.append(_nan_for_none(row))
    return rows


def _read_yaml(path: Path, problems: list[str]) -> dict:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        problems.append(f"{path.name}: unreadable ({exc})")
        log.warning("%s: unreadable YAML (%s); ignored", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def finite_or_none(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is absent, not numeric, NaN or infinite."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


class MissingScalarError(ValueError):
    """A reader needs a logged key that no row of the run's log has."""


@dataclass
class RunRecord:
    """Everything a run directory records, read back as plain Python data.

    Attributes:
        path: the run directory.
        name: the directory's name (unique handle in reports).
        label: what was trained, e.g. ``"G+D fm=2.0 gan=1.0"`` (see :func:`run_label`).
        mode: ``G``, ``G+R``, ``G+D`` or ``G+R+D``.
        config: the resolved config as a nested dict (``{}`` when ``config.yaml`` is missing).
        summary: ``summary.json`` (``{}`` when missing, e.g. an interrupted run).
        test_metrics: ``test_metrics.json``, else the summary's ``test`` entry, else ``{}``.
        epochs: rows of ``metrics/epochs.jsonl`` (NaN for null values).
        steps: rows of ``metrics/steps.jsonl``.
        problems: unreadable files or lines that were skipped.
    """

    path: Path
    name: str
    label: str
    mode: str
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    test_metrics: dict = field(default_factory=dict)
    epochs: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    # ---------------------------------------------------------------- what was trained

    @property
    def has_D(self) -> bool:
        """Whether the run trained a discriminator."""
        return "D" in self.mode.split("+")

    @property
    def has_R(self) -> bool:
        """Whether the run trained a registration network."""
        return "R" in self.mode.split("+")

    def cfg(self, dotted: str, default: Any = None) -> Any:
        """A config value by dotted key (see :func:`cfg_get`)."""
        return cfg_get(self.config, dotted, default)

    @property
    def gan_mode(self) -> str:
        """``lsgan``, ``hinge`` or ``bce`` (default ``lsgan``, the trainer's default)."""
        return str(self.cfg("loss.gan_mode", "lsgan"))

    @property
    def has_checkpoint(self) -> bool:
        """Whether ``checkpoints/best.pt`` or ``checkpoints/last.pt`` exists."""
        layout = RunLayout(self.path)
        return layout.best_checkpoint.is_file() or layout.last_checkpoint.is_file()

    @property
    def config_path(self) -> Path:
        """``config.yaml`` of the run (it may not exist for a partial run)."""
        return RunLayout(self.path).config

    @property
    def pairs(self) -> dict[str, Any]:
        """Whether the training pairs were misaligned, and whether G's loss saw it.

        Read from the summary's ``pairs`` entry when the trainer wrote one, else from the
        config: ``data.pairs`` (``aligned`` / ``misaligned``), else simulated misalignment of
        the training split (``data.misalign.max_px > 0``); ``auto`` without simulated
        misalignment is decided from the data at training time, so it is unknown here.
        ``data.train_target: aligned`` trains G against the aligned target, so misaligned
        pairs then never reach the loss.

        Returns:
            ``{"misaligned": bool | None, "reason": str, "source": "summary" | "config" |
            "unknown", "train_target": str, "loss_misaligned": bool | None}``;
            ``loss_misaligned`` is whether G's loss compares against misaligned targets.
        """
        train_target = str(self.cfg("data.train_target", "target"))
        misaligned: bool | None = None
        entry = self.summary.get("pairs")
        if isinstance(entry, dict) and isinstance(entry.get("misaligned"), bool):
            misaligned = entry["misaligned"]
            reason = str(entry.get("reason") or "recorded by the trainer")
            source = "summary"
        else:
            choice = self.cfg("data.pairs")
            max_px = finite_or_none(self.cfg("data.misalign.max_px")) or 0.0
            splits = self.cfg("data.misalign.splits", ["train"]) or []
            source = "config"
            if choice in ("aligned", "misaligned"):
                misaligned = choice == "misaligned"
                reason = f"data.pairs={choice}"
            elif max_px > 0 and "train" in splits:
                misaligned = True
                reason = f"simulated misalignment, data.misalign.max_px={max_px:g}"
            else:
                source = "unknown"
                reason = (
                    "not logged (no 'pairs' in summary.json; data.pairs="
                    f"{choice or 'auto'} is decided from the data at training time)"
                )
        loss_misaligned = None if misaligned is None else misaligned and train_target != "aligned"
        return {
            "misaligned": misaligned,
            "reason": reason,
            "source": source,
            "train_target": train_target,
            "loss_misaligned": loss_misaligned,
        }

    @property
    def d_conditional(self) -> tuple[bool | None, str]:
        """Whether D was conditioned on the input, and where that comes from.

        The summary's ``D_conditional`` when written; else the config's
        ``model.D.conditional``: ``yes`` / ``no``, or ``auto``, resolved as the trainer of the
        run's era did - a config with ``data.pairs`` (the current trainer) makes D
        unconditional when R is on or the pairs are misaligned, an older one only when R is on.

        Returns:
            ``(conditional, source)``; ``(None, why)`` for a run without D or an unknown case.
        """
        if not self.has_D:
            return None, "no discriminator"
        value = self.summary.get("D_conditional")
        if isinstance(value, bool):
            return value, "summary.json"
        choice = self.cfg("model.D.conditional")
        if choice in ("yes", "no"):
            return choice == "yes", f"config model.D.conditional={choice}"
        if choice not in (None, "auto") or not self.config:
            return None, "not logged"
        if self.cfg("data.pairs") is not None:
            misaligned = self.pairs["misaligned"]
            if misaligned is None and not self.has_R:
                return None, "not logged (auto, and the pairs' alignment is unknown)"
            if self.has_R and self.cfg("model.D.frame") == "target":
                return True, "config auto: D judges the warped output with the input"
            conditional = not self.has_R and not misaligned
            return conditional, "config auto: conditional only with R off and aligned pairs"
        return not self.has_R, "config auto (older trainer): conditional whenever R is off"

    @property
    def instabilities(self) -> list[dict[str, Any]] | None:
        """Loss jumps the trainer detected (``summary.json`` ``instabilities``), None if absent."""
        value = self.summary.get("instabilities")
        if not isinstance(value, list):
            return None
        return [dict(v) for v in value if isinstance(v, dict)]

    # ---------------------------------------------------------------- progress

    @property
    def epochs_done(self) -> int:
        """Number of finished epochs (from the epoch log, else the summary)."""
        if self.epochs:
            return int(max(e.get(EPOCH, 0) for e in self.epochs))
        return int(self.summary.get("epochs", 0) or 0)

    @property
    def steps_per_epoch(self) -> float | None:
        """Optimiser steps per epoch (config, else summary steps / epochs), None if unknown."""
        spe = finite_or_none(self.cfg("train.steps_per_epoch"))
        if spe and spe > 0:
            return spe
        steps = finite_or_none(self.summary.get("steps"))
        epochs = finite_or_none(self.summary.get("epochs"))
        if steps and epochs:
            return steps / epochs
        return None

    @property
    def best(self) -> dict:
        """``{"metric", "value", "epoch"}`` of the best checkpoint (summary, else epoch log)."""
        best = self.summary.get("best")
        if isinstance(best, dict) and best.get("epoch") is not None:
            return dict(best)
        if self.epochs and BEST_EPOCH in self.epochs[-1]:
            last = self.epochs[-1]
            return {
                "metric": self.cfg("eval.best_metric", "psnr_mask"),
                "value": last.get(BEST_VALUE, math.nan),
                "epoch": last.get(BEST_EPOCH),
            }
        return {}

    @property
    def wall_seconds(self) -> float | None:
        """Training wall time (summary, else the sum of epoch times), None if unknown."""
        wall = finite_or_none(self.summary.get("wall_seconds"))
        if wall is not None:
            return wall
        times = [finite_or_none(e.get(EPOCH_SECONDS)) for e in self.epochs]
        times = [t for t in times if t is not None]
        return float(sum(times)) if times else None

    # ---------------------------------------------------------------- metrics

    def series(self, key: str, *, source: str = "epochs") -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of one logged value, rows lacking it skipped.

        Args:
            key: the log key (``val_psnr_mask``, ``train_D_real`` in the epoch log; ``D_real``,
                ``lr_G`` in the step log).
            source: ``epochs`` (x = epoch number) or ``steps`` (x = fractional epoch,
                step / steps-per-epoch, or the step number when that is unknown).

        Returns:
            Two float arrays of equal length (possibly empty); y may hold NaN.
        """
        rows, xkey = self._log(source)
        pairs = [
            (float(r[xkey]), float(v))
            for r in rows
            if xkey in r and (v := _finite_or_nan(r.get(key))) is not None
        ]
        if not pairs:
            return np.zeros(0), np.zeros(0)
        x, y = (np.asarray(v, dtype=np.float64) for v in zip(*pairs))
        if source == "steps" and self.steps_per_epoch:
            x = x / self.steps_per_epoch
        return x, y

    def require_series(self, key: str, *, source: str = "epochs") -> tuple[np.ndarray, np.ndarray]:
        """:meth:`series` of a key the caller cannot do without.

        A key that some row holds, even as null (NaN), is logged; one that no row holds was
        never written, or is written under another name, and reading on would turn a finding
        into "not logged".

        Raises:
            MissingScalarError: no row of the log has ``key`` (the message names the run, the
                file and the key).
        """
        rows, _ = self._log(source)
        if not any(key in row for row in rows):
            layout = RunLayout(self.path)
            path = layout.epochs if source == "epochs" else layout.steps
            raise MissingScalarError(
                f"run {self.name} ({self.path}): no row of {path.relative_to(self.path)} "
                f"has the key {key!r} ({len(rows)} rows read)"
            )
        return self.series(key, source=source)

    def _log(self, source: str) -> tuple[list[dict], str]:
        """The rows of one log and their x key."""
        if source == "epochs":
            return self.epochs, EPOCH
        if source == "steps":
            return self.steps, STEP
        raise ValueError(f"source must be 'epochs' or 'steps', got {source!r}")

    def has_key(self, key: str, *, source: str = "epochs") -> bool:
        """Whether any row of the log has a finite value for ``key``."""
        _, y = self.series(key, source=source)
        return bool(np.isfinite(y).any())

    def final_metrics(self) -> tuple[dict[str, float], str]:
        """The run's final metrics for a report, and where they come from.

        For reporting only: the test split must not steer decisions (use
        :meth:`decision_metrics`), so a caller showing these should label their source.

        Returns:
            ``(metrics, source)``: the test split's EMA metrics (``source`` = ``"test"``) when
            the run was tested, else the last epoch's validation metrics with the ``val_``
            prefix removed (``"val, epoch N"``), else ``({}, "none")``.
        """
        model = self.test_metrics.get("model")
        if isinstance(model, dict) and model:
            return {k: float(v) for k, v in _nan_for_none(model).items()}, "test"
        for row in reversed(self.epochs):
            if vals := _val_metrics(row):
                return vals, f"val, epoch {int(row.get(EPOCH, 0))}"
        return {}, "none"

    def decision_metrics(self) -> tuple[dict[str, float], str]:
        """The validation metrics decisions rest on: those of the best epoch, else the last.

        The best epoch is the one whose checkpoint (``best.pt``) was kept, so these are the
        numbers of the weights a comparison evaluates. The test split is never used here.

        Returns:
            ``(metrics, source)``: the ``val_`` metrics (prefix removed) of the best epoch
            (``source`` = ``"val, best epoch N"``), else of the last validated epoch
            (``"val, last epoch N"``), else ``({}, "none")``.
        """
        best = finite_or_none(self.best.get("epoch"))
        if best is not None:
            metrics = self.val_metrics(int(best))
            if metrics:
                return metrics, f"val, best epoch {int(best)}"
        for row in reversed(self.epochs):
            if vals := _val_metrics(row):
                return vals, f"val, last epoch {int(row.get(EPOCH, 0))}"
        return {}, "none"

    def val_metrics(self, epoch: int | None = None) -> dict[str, float]:
        """Validation metrics (``val_`` prefix removed) of ``epoch`` (default: the last one)."""
        for row in reversed(self.epochs):
            if epoch is not None and int(row.get(EPOCH, -1)) != epoch:
                continue
            if vals := _val_metrics(row):
                return vals
        return {}

    def identity_metrics(self) -> dict[str, float] | None:
        """The identity baseline (input taken as the prediction) on the test split, if known."""
        ident = self.test_metrics.get("identity")
        if isinstance(ident, dict) and ident:
            return {k: float(v) for k, v in _nan_for_none(ident).items()}
        return None


def _val_metrics(row: dict) -> dict[str, float]:
    """The ``val_`` values of an epoch row, keyed by metric (prefix removed)."""
    return {name: float(v) for k, v in row.items() if (name := val_name(k)) is not None}


def _finite_or_nan(value: Any) -> float | None:
    """A number (NaN allowed) or None when the value is absent or not numeric."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def resolve_data_paths(cfg: Any, run_path: str | Path, data_root: str | Path | None) -> Any:
    """A run's config with ``data.root`` / ``data.manifest`` usable from here.

    ``data_root`` replaces the root when given. Otherwise relative paths are taken against the
    current directory (as the trainer did) and, when that does not exist, against the run
    directory and its parents (runs are often kept under the folder training ran in).

    Args:
        cfg: a :class:`medi2i.config.Config` (any pydantic model with a ``data`` section).
        run_path: the run directory.
        data_root: where the dataset is now, or None.

    Returns:
        A copy of ``cfg`` with the data paths replaced.
    """
    run_path = Path(run_path)
    data = cfg.data
    root, manifest = data.root, data.manifest

    def locate(path: str | None) -> str | None:
        if path is None or Path(path).is_absolute() or Path(path).exists():
            return path
        for base in (run_path, *run_path.resolve().parents):
            if (base / path).exists():
                log.info("found %s under %s", path, base)
                return str(base / path)
        return path

    if data_root is not None:
        root = str(data_root)
        if manifest is not None and not Path(manifest).exists():
            candidate = Path(data_root) / Path(manifest).name
            manifest = str(candidate) if candidate.exists() else None
    else:
        root, manifest = locate(root), locate(manifest)
    return cfg.model_copy(
        update={"data": data.model_copy(update={"root": root, "manifest": manifest})}
    )


def load_run(run_dir: str | Path) -> RunRecord:
    """Read a run directory.

    Args:
        run_dir: a directory written by the trainer.

    Returns:
        The run's record; missing optional files leave their fields empty.

    Raises:
        ValueError: ``run_dir`` is not a directory, or holds none of ``config.yaml``,
            ``summary.json``, ``metrics/epochs.jsonl``.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise ValueError(f"{path}: not a directory (expected a training run directory)")
    layout = RunLayout(path)
    if not layout.is_run():
        raise ValueError(
            f"{path}: not a run directory (expected at least one of {', '.join(RUN_MARKERS)})"
        )
    problems: list[str] = []
    config = _read_yaml(layout.config, problems)
    summary = _read_json(layout.summary, problems)
    test_metrics = _read_json(layout.test_metrics, problems)
    if not test_metrics and isinstance(summary.get("test"), dict):
        test_metrics = summary["test"]
    epochs = _read_jsonl(layout.epochs, problems)
    steps = _read_jsonl(layout.steps, problems)
    record = RunRecord(
        path=path,
        name=path.resolve().name or str(path),
        label=run_label(config, summary),
        mode=run_mode(config, summary),
        config=config,
        summary=summary,
        test_metrics=test_metrics,
        epochs=epochs,
        steps=steps,
        problems=problems,
    )
    log.debug(
        "run %s: %s, %d epochs, %d step rows, test=%s",
        record.name,
        record.label,
        len(epochs),
        len(steps),
        bool(test_metrics),
    )
    return record
