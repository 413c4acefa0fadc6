"""Checkpoints: atomic saves that refuse non-finite weights, clear load errors, RNG capture.

A checkpoint is one ``torch.save`` file holding everything needed to resume a run exactly::

    {
      "format": "medi2i-checkpoint-v1",          # checked on load
      "medi2i_version", "torch_version",          # code that wrote it
      "created": "2025-01-01T12:00:00+00:00",    # UTC, ISO 8601
      "git_commit": "<sha>" | None,              # best effort
      "epoch": int, "step": int,                 # progress (optimiser steps done)
      "model":  {"G": state_dict, "R": state_dict?, "D": state_dict?},
      "ema":    {"G": EMA.state_dict()},          # same keys as model["G"]
      "optim":  {"G": state_dict, "R"?: ..., "D"?: ...},
      "sched":  {"G": state_dict, ...},
      "scaler": GradScaler state_dict | None,
      "rng":    capture_rng_state(),
      "config": dict,                             # the resolved config
      "best":   {"metric": str, "value": float, "epoch": int},
      "normalizer": dict,                         # intensity mapping, needed by predict
      "intensity_profile": dict,                  # the training inputs' intensities, which
                                                  # predict checks new images against
    }

:func:`checkpoint_payload` adds the metadata keys; :class:`CheckpointManager` writes ``last.pt``,
``best.pt`` and ``epoch_XXXX.pt`` where :class:`~medi2i.run.layout.RunLayout` puts them. This
module is the file format only: training writes it, inference and evaluation read it, and it
imports neither. What a training run restores beyond the file (RNG states, a pretrained G) is
in :mod:`medi2i.training.state`.

Trust: :func:`load_checkpoint` first tries ``torch.load(weights_only=True)``, which cannot run
code; everything medi2i itself stores (tensors, numbers, strings, lists, dicts - the RNG states
are converted to such types) loads that way. A file that needs full unpickling is loaded with
``weights_only=False`` only when ``trusted=True`` (the default, meant for your own run
directories; a warning is logged); **never load a checkpoint from an untrusted source with
trusted=True** - unpickling can execute arbitrary code.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import pickle
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from medi2i.run.layout import RunLayout
from medi2i.utils.atomic import atomic_path
from medi2i.utils.version import __version__

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKED_SECTIONS",
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "CheckpointManager",
    "checkpoint_payload",
    "find_nonfinite",
    "load_checkpoint",
    "save_checkpoint",
    "state_dict_problems",
    "torch_load_checked",
]

CHECKPOINT_FORMAT = "medi2i-checkpoint-v1"

#: Sections of a checkpoint scanned for non-finite tensors before saving.
CHECKED_SECTIONS = ("model", "ema", "optim")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, corrupt or not a medi2i checkpoint."""


# payload, validation, save / load
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    """HEAD of the git repository this package's source is tracked in, else None."""
    here = Path(__file__).resolve().parents[1]  # the medi2i package folder
    try:
        tracked = subprocess.run(
            ["git", "ls-files", "--error-unmatch", "__init__.py"],
            cwd=here,
            capture_output=True,
            timeout=5,
            check=False,
        )
        if tracked.returncode != 0:  # not a source checkout (e.g. installed in site-packages)
            return None
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    return commit if head.returncode == 0 and commit else None


def checkpoint_payload(**parts: Any) -> dict:
    """A checkpoint dict: ``parts`` plus the format tag and provenance metadata.

    Adds ``format``, ``medi2i_version``, ``torch_version``, ``created`` (UTC ISO 8601) and
    ``git_commit`` (``git rev-parse HEAD`` of the source checkout, None when unavailable; this
    never fails).

    Args:
        **parts: the checkpoint's content (layout in the module docstring).

    Returns:
        A new dict; ``parts`` come after the metadata and may not override ``format``.

    Raises:
        ValueError: when ``parts`` contains a ``format`` other than :data:`CHECKPOINT_FORMAT`.
    """
    if parts.get("format", CHECKPOINT_FORMAT) != CHECKPOINT_FORMAT:
        raise ValueError(f"format must be {CHECKPOINT_FORMAT!r}, got {parts['format']!r}")
    meta = {
        "format": CHECKPOINT_FORMAT,
        "medi2i_version": str(__version__),
        "torch_version": str(torch.__version__),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
    }
    return {**meta, **parts}


def _iter_tensors(obj: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _iter_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _iter_tensors(value, f"{prefix}.{i}" if prefix else str(i))


def find_nonfinite(state: Mapping, sections: tuple[str, ...] = CHECKED_SECTIONS) -> list[str]:
    """Dotted keys of the floating-point tensors holding NaN or Inf in ``state``'s ``sections``.

    Only the weights, EMA and optimiser states are scanned by default: the places a diverged
    step leaves non-finite values, and that would poison a resumed run.

    Args:
        state: a checkpoint dict.
        sections: the top-level keys to scan (missing ones are skipped).

    Returns:
        E.g. ``["model.G.head.weight", "optim.G.state.3.exp_avg"]``; empty when all finite.
    """
    bad = []
    for section in sections:
        if section not in state:
            continue
        for key, tensor in _iter_tensors(state[section], section):
            if (tensor.is_floating_point() or tensor.is_complex()) and not bool(
                torch.isfinite(tensor).all()
            ):
                bad.append(key)
    return bad


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write a checkpoint atomically, refusing non-finite weights.

    The file is written to a temporary file in the same folder, fsync'ed and renamed over
    ``path`` (:func:`medi2i.utils.atomic.atomic_path`): a crash or kill mid-save leaves the
    previous file intact. A ``state`` without the metadata gets it from
    :func:`checkpoint_payload` (the caller's dict is not modified).

    Args:
        path: destination file (parent folders are created).
        state: the checkpoint dict (layout in the module docstring).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: when a tensor in ``model``/``ema``/``optim`` is NaN or Inf (nothing is
            written; the message names every offending key), or the format tag is foreign.
        CheckpointError: the disk is full (the previous file at ``path`` is kept).
    """
    path = Path(path)
    if "format" not in state:
        state = checkpoint_payload(**state)
    elif state["format"] != CHECKPOINT_FORMAT:
        raise ValueError(f"format must be {CHECKPOINT_FORMAT!r}, got {state['format']!r}")
    bad = find_nonfinite(state)
    if bad:
        shown = ", ".join(bad[:20]) + (f" (+{len(bad) - 20} more)" if len(bad) > 20 else "")
        raise ValueError(f"refusing to save {path}: non-finite values in {shown}")
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except Exception as exc:
        # torch's writer reports a full disk as a bare RuntimeError ("file write failed",
        # "basic_ios::clear: iostream error"): ask the file system what happened.
        free = _free_bytes(path.parent)
        full = (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or (
            free is not None and free < _FULL_DISK_BYTES
        )
        if not full:
            raise
        kept = f"; the previous {path.name} is intact" if path.is_file() else ""
        raise CheckpointError(
            f"could not save {path}: no space left on the device ({_mib(free)} free){kept}. "
            "Free some space, then continue with --resume."
        ) from exc
    logger.debug("saved checkpoint %s", path)
    return path


_FULL_DISK_BYTES = 64 * 2**20
"""Free space below which a failed write is reported as a full disk."""


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _mib(value: int | None) -> str:
    return "unknown space" if value is None else f"{value / 2**20:.0f} MiB"


def torch_load_checked(path: Path, map_location: Any, trusted: bool) -> Any:
    """``torch.load`` with every failure turned into a :class:`CheckpointError`."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses files needing arbitrary unpickling (and some corrupt ones).
        if not trusted:
            raise CheckpointError(
                f"{path}: cannot be loaded safely (weights_only=True): {exc}. Load it with "
                "trusted=True only if you trust its source."
            ) from exc
        first_error: Exception = exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, zipfile errors, ...
        raise CheckpointError(
            f"{path}: not a readable checkpoint (corrupt or truncated?): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: not a readable checkpoint (corrupt or truncated?): "
            f"{type(exc).__name__}: {exc} (safe load: {first_error})"
        ) from exc
    logger.warning("%s needed full unpickling (weights_only=False); trusted source assumed", path)
    return obj


def state_dict_problems(sd: Mapping[str, Any], model: torch.nn.Module) -> list[str]:
    """What keeps ``sd`` from loading into ``model`` strictly, one line per problem.

    Args:
        sd: a state dict (e.g. a network's weights read from a checkpoint).
        model: the network it should load into.

    Returns:
        ``missing key: K``, ``unexpected key: K``, ``shape mismatch: K: checkpoint (..) vs model
        (..)`` and ``not a tensor: K (type)`` lines; empty when it fits.
    """
    expected = model.state_dict()
    problems = [f"missing key: {k}" for k in expected if k not in sd]
    problems += [f"unexpected key: {k}" for k in sd if k not in expected]
    for key, value in sd.items():
        if key in expected and isinstance(value, torch.Tensor):
            if value.shape != expected[key].shape:
                problems.append(
                    f"shape mismatch: {key}: checkpoint {tuple(value.shape)} vs model "
                    f"{tuple(expected[key].shape)}"
                )
        elif key in expected:
            problems.append(f"not a tensor: {key} ({type(value).__name__})")
    return problems


def load_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", *, trusted: bool = True
) -> dict:
    """Load and check a medi2i checkpoint.

    Args:
        path: the checkpoint file.
        map_location: passed to :func:`torch.load` (default: everything on the CPU).
        trusted: allow full unpickling for files that the safe loader refuses (see the module
            docstring's trust note).

    Returns:
        The checkpoint dict.

    Raises:
        CheckpointError: (a ``ValueError``) naming the file, when it is missing, corrupt,
            truncated, or not a medi2i checkpoint (no matching ``format`` tag).
    """
    path = Path(path)
    state = torch_load_checked(path, map_location, trusted)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path}: not a medi2i checkpoint (expected format {CHECKPOINT_FORMAT!r}, "
            f"found {found!r})"
        )
    return state


# --------------------------------------------------------------------------------------------
# run-directory manager
# --------------------------------------------------------------------------------------------


def _copy_atomic(src: Path, dest: Path) -> None:
    """Make ``dest`` an independent, atomically written copy of ``src``.

    A copy, not a hard link: linked names share one inode, so one damaged file (a disk error,
    a tool that edits in place) would take every name with it and leave no fallback.
    """
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


class CheckpointManager:
    """The checkpoints of one run: ``RUN_DIR/checkpoints/{last,best,epoch_XXXX}.pt``.

    Args:
        run_dir: the run directory.
        keep_every: also keep ``epoch_XXXX.pt`` every this many epochs (0 = never).

    Raises:
        ValueError: negative ``keep_every``.
    """

    def __init__(self, run_dir: str | os.PathLike, *, keep_every: int = 0):
        if keep_every < 0:
            raise ValueError(f"keep_every must be >= 0, got {keep_every}")
        self.layout = RunLayout(Path(run_dir))
        self.dir = self.layout.checkpoints
        self.keep_every = keep_every

    def last_path(self) -> Path:
        """``checkpoints/last.pt``."""
        return self.layout.last_checkpoint

    def best_path(self) -> Path:
        """``checkpoints/best.pt``."""
        return self.layout.best_checkpoint

    def epoch_path(self, epoch: int) -> Path:
        """``checkpoints/epoch_XXXX.pt`` (zero-padded to 4 digits)."""
        return self.layout.epoch_checkpoint(epoch)

    def save(self, state: dict, *, epoch: int, is_best: bool) -> list[Path]:
        """Write ``last.pt``, plus ``best.pt`` and ``epoch_XXXX.pt`` when due.

        ``state`` is serialised once (to ``last.pt``); the others are independent atomic copies
        of it, so that a damaged file leaves the others readable.

        Args:
            state: the checkpoint dict.
            epoch: the epoch number used for ``epoch_XXXX.pt`` and ``keep_every``.
            is_best: also write ``best.pt``.

        Returns:
            The paths written, ``last.pt`` first.

        Raises:
            ValueError: non-finite weights (nothing is written; see :func:`save_checkpoint`).
        """
        last = save_checkpoint(self.last_path(), state)
        written = [last]
        if is_best:
            _copy_atomic(last, self.best_path())
            written.append(self.best_path())
        if self.keep_every and epoch % self.keep_every == 0:
            _copy_atomic(last, self.epoch_path(epoch))
            written.append(self.epoch_path(epoch))
        logger.info("saved checkpoint(s): %s", ", ".join(p.name for p in written))
        return written

    def remove_partial_files(self) -> list[Path]:
        """Delete the temporary files that a save killed mid-write leaves (``.NAME.*.tmp.pt``).

        Call it only when no save is in progress (at the start of a run or a resume).

        Returns:
            The files removed.
        """
        removed = []
        if self.dir.is_dir():
            for path in sorted(self.dir.glob(".*.tmp*.pt")):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
        if removed:
            logger.info(
                "removed %d partial checkpoint file(s) left by an interrupted save: %s",
                len(removed),
                ", ".join(p.name for p in removed),
            )
        return removed

    def load_latest(self, map_location: Any = "cpu") -> tuple[Path, dict]:
        """The newest readable checkpoint: ``last.pt``, else the most recent other one.

        When ``last.pt`` is missing or unreadable (truncated, corrupt), the other checkpoints
        (``best.pt``, ``epoch_XXXX.pt``) are read one at a time and the readable one with the
        highest training step is used, named in a warning: continuing from an older state
        loses the steps since, which is better than losing the run.

        Returns:
            ``(path, state)``.

        Raises:
            CheckpointError: no checkpoint can be read (every reason is listed).
        """
        problems = []
        try:
            return self.last_path(), load_checkpoint(self.last_path(), map_location)
        except CheckpointError as exc:
            problems.append(str(exc))
        chosen: tuple[Path, dict] | None = None
        for path in sorted(self.dir.glob("*.pt")) if self.dir.is_dir() else []:
            if path == self.last_path() or path.name.startswith("."):
                continue
            try:
                state = load_checkpoint(path, map_location)
            except CheckpointError as exc:
                problems.append(str(exc))
                continue
            if chosen is None or int(state.get("step") or 0) > int(chosen[1].get("step") or 0):
                chosen = (path, state)  # only the newest is kept in memory
        if chosen is None:
            raise CheckpointError(f"no readable checkpoint in {self.dir}: " + "; ".join(problems))
        path, state = chosen
        logger.warning(
            "%s; continuing from %s (epoch %s, step %s) instead",
            problems[0],
            path.name,
            state.get("epoch"),
            state.get("step"),
        )
        return path, state


# --------------------------------------------------------------------------------------------
# pretrained generator
# --------------------------------------------------------------------------------------------
