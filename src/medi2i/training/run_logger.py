"""The run's metric files and TensorBoard events (:class:`RunLogger`).

What the trainer logs, and the names, are told in :mod:`medi2i.run.scalars`: the step
scalars (D's outputs and accuracy, the parts of G's loss and their shares, gradient norms and
clip rates, learning rates, EMA decay, images/s), their epoch means ``train_*`` and the
validation metrics ``val_*``. The logger adds the row keys (``step``, ``epoch``, ``time``).

:class:`RunLogger` writes ``metrics/steps.jsonl``, ``metrics/epochs.jsonl``,
``metrics/epochs.csv`` and TensorBoard events (``tensorboard/``) in the run directory, at the
paths of :class:`~medi2i.run.layout.RunLayout`; it is a no-op on non-zero DDP ranks
(``enabled=False``).

Rules: non-finite values are written to the JSON files as ``null`` (strict JSON) and to the CSV
as ``nan`` / ``inf``; the epoch files are rewritten atomically; a missing TensorBoard is warned
about once per process and the files are still written.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import numbers
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from medi2i.run.layout import RunLayout
from medi2i.run.scalars import EPOCH, STEP, TIME, train_name, val_name
from medi2i.utils.atomic import atomic_write_text
from medi2i.utils.jsonsafe import json_safe
from medi2i.viz import save_rgb_png

logger = logging.getLogger(__name__)

__all__ = ["RunLogger"]

_RESERVED_STEP_KEYS = frozenset({STEP, EPOCH, TIME})
_RESERVED_EPOCH_KEYS = frozenset({EPOCH, TIME})
_tb_warned = False


def _tb_value(value: Any) -> float | None:
    """Scalar -> float for TensorBoard, or None for values TensorBoard cannot plot (strings)."""
    if isinstance(value, Tensor):
        return float(value.item())
    if isinstance(value, (numbers.Real, np.generic)) and not isinstance(value, (str, bytes)):
        return float(value)
    return None


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def _epoch_tag(key: str) -> str:
    """TensorBoard tag of an epoch scalar: ``val_x -> val/x``, ``train_x -> train/x``."""
    for group, name in (("val", val_name(key)), ("train", train_name(key))):
        if name:
            return f"{group}/{name}"
    return f"epoch/{key}"


def _open_summary_writer(log_dir: Path, purge_step: int | None) -> Any | None:
    """A TensorBoard ``SummaryWriter``, or None (warned once) when TensorBoard is unavailable."""
    global _tb_warned
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as exc:  # ImportError, or a broken tensorboard install
        if not _tb_warned:
            logger.warning("TensorBoard unavailable (%s); logging to JSONL/CSV only", exc)
            _tb_warned = True
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


class RunLogger:
    """Write the run's metrics to ``run_dir/metrics`` (JSONL + CSV) and ``run_dir/tensorboard``.

    Files:

    * ``metrics/steps.jsonl`` — one JSON object per :meth:`log_step`:
      ``{"step", "epoch", "time", <scalars>}``, appended and flushed immediately.
    * ``metrics/epochs.jsonl`` and ``metrics/epochs.csv`` — one row per :meth:`log_epoch`
      (``{"epoch", "time", <scalars>}``), both rewritten atomically each epoch from all rows, so
      the CSV header is always the union of the keys seen so far (in first-seen order).
    * ``tensorboard/`` — event files: steps under ``train_step/<key>``; epochs under
      ``val/<rest>`` (``val_*`` keys), ``train/<rest>`` (``train_*``) or ``epoch/<key>``, at
      ``global_step=epoch``; images under their tag.

    Resuming into an existing run directory: earlier epoch rows are read back from
    ``epochs.jsonl`` and an epoch logged again replaces its old row and every later one. Pass
    ``purge_step`` (the first step the resumed run will log) to drop step records and TensorBoard
    events at or after it, as :class:`~torch.utils.tensorboard.SummaryWriter` does.

    ``time`` is the Unix wall-clock time in seconds. String values (such as ``best_metric``) go to
    the JSON/CSV files but not to TensorBoard.

    Args:
        run_dir: the run directory (created if missing).
        tensorboard: also write TensorBoard events; if False, or if TensorBoard cannot be
            imported (a warning is logged once), only the JSONL/CSV files are written.
        enabled: False on non-zero DDP ranks: every method is a no-op and nothing is created.
        purge_step: on resume, the first step the resumed run logs (see above); None keeps
            everything.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        tensorboard: bool = True,
        enabled: bool = True,
        purge_step: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        layout = RunLayout(self.run_dir)
        self.metrics_dir = layout.metrics
        self.steps_path = layout.steps
        self.epochs_jsonl_path = layout.epochs
        self.epochs_csv_path = layout.epochs_csv
        self.tensorboard_dir = layout.tensorboard
        self._writer: Any | None = None
        self._steps_file: io.TextIOBase | None = None
        self._epoch_rows: list[dict[str, Any]] = []
        self._closed = False
        if not enabled:
            return
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_steps_file(purge_step)
        self._epoch_rows = self._read_epoch_rows()
        self._steps_file = self.steps_path.open("a", encoding="utf-8")
        if tensorboard:
            self._writer = _open_summary_writer(self.tensorboard_dir, purge_step)
        logger.debug(
            "RunLogger(%s): tensorboard=%s, %d earlier epoch rows",
            self.run_dir,
            self._writer is not None,
            len(self._epoch_rows),
        )

    # ---- set-up helpers -------------------------------------------------------------------

    def _prepare_steps_file(self, purge_step: int | None) -> None:
        """On resume, drop step records at/after ``purge_step`` and any torn last line."""
        if not self.steps_path.exists():
            return
        text = self.steps_path.read_text(encoding="utf-8")
        if purge_step is None and (not text or text.endswith("\n")):
            return
        kept = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s: dropping an unreadable line (torn write?)", self.steps_path)
                continue
            step = record.get(STEP) if isinstance(record, dict) else None
            if purge_step is None or (isinstance(step, int) and step < purge_step):
                kept.append(line)
        atomic_write_text(self.steps_path, "".join(line + "\n" for line in kept))

    def _read_epoch_rows(self) -> list[dict[str, Any]]:
        if not self.epochs_jsonl_path.exists():
            return []
        rows = []
        for line in self.epochs_jsonl_path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s: skipping an unreadable line", self.epochs_jsonl_path)
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"RunLogger({self.run_dir}) is closed")

    # ---- logging --------------------------------------------------------------------------

    def log_step(self, step: int, epoch: int, scalars: Mapping[str, float]) -> None:
        """Record one training step's (smoothed) scalars.

        Args:
            step: global optimiser step.
            epoch: current epoch.
            scalars: key -> value (numbers; strings are kept in the JSONL only).

        Raises:
            ValueError: if a key is ``step``, ``epoch`` or ``time``.
            RuntimeError: after :meth:`close`.
        """
        if not self.enabled:
            return
        self._check_open()
        clash = _RESERVED_STEP_KEYS.intersection(scalars)
        if clash:
            raise ValueError(f"log_step: reserved key(s) {sorted(clash)} in scalars")
        record: dict[str, Any] = {STEP: int(step), EPOCH: int(epoch), TIME: time.time()}
        record.update({k: json_safe(v) for k, v in scalars.items()})
        assert self._steps_file is not None
        self._steps_file.write(json.dumps(record, allow_nan=False) + "\n")
        self._steps_file.flush()
        if self._writer is not None:
            for key, value in scalars.items():
                number = _tb_value(value)
                if number is not None:
                    self._writer.add_scalar(f"train_step/{key}", number, int(step))

    def log_epoch(self, epoch: int, scalars: Mapping[str, float]) -> None:
        """Record one epoch's scalars (train means, validation metrics, best so far, timing).

        Args:
            epoch: the epoch; a row with this epoch or a later one (from an interrupted run) is
                replaced.
            scalars: key -> value (numbers, or strings such as ``best_metric``).

        Raises:
            ValueError: if a key is ``epoch`` or ``time``.
            RuntimeError: after :meth:`close`.
        """
        if not self.enabled:
            return
        self._check_open()
        clash = _RESERVED_EPOCH_KEYS.intersection(scalars)
        if clash:
            raise ValueError(f"log_epoch: reserved key(s) {sorted(clash)} in scalars")
        row: dict[str, Any] = {EPOCH: int(epoch), TIME: time.time()}
        row.update({k: json_safe(v) for k, v in scalars.items()})
        self._epoch_rows = [
            r for r in self._epoch_rows if not (isinstance(r.get(EPOCH), int) and r[EPOCH] >= epoch)
        ]
        self._epoch_rows.append(row)
        self._write_epoch_files()
        if self._writer is not None:
            for key, value in scalars.items():
                number = _tb_value(value)
                if number is not None:
                    self._writer.add_scalar(_epoch_tag(key), number, int(epoch))
            self._writer.flush()

    def _write_epoch_files(self) -> None:
        header: dict[str, None] = {}
        for row in self._epoch_rows:
            header.update(dict.fromkeys(row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(header), lineterminator="\n")
        writer.writeheader()
        for row in self._epoch_rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})
        jsonl = "".join(json.dumps(row, allow_nan=False) + "\n" for row in self._epoch_rows)
        atomic_write_text(self.epochs_jsonl_path, jsonl)
        atomic_write_text(self.epochs_csv_path, buffer.getvalue())

    def log_images(
        self, tag: str, rgb: np.ndarray, step: int, *, save_png: Path | None = None
    ) -> None:
        """Record an RGB image (e.g. a sample grid) in TensorBoard and optionally as PNG.

        Args:
            tag: TensorBoard tag, e.g. ``"samples/val"``.
            rgb: ``(H, W, 3)`` uint8 image.
            step: global step (or epoch) to file it under.
            save_png: also write the image to this path (atomically).

        Raises:
            ValueError: if ``rgb`` is not ``(H, W, 3)`` uint8.
            RuntimeError: after :meth:`close`.
        """
        if not self.enabled:
            return
        self._check_open()
        arr = np.asarray(rgb)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"log_images: expected (H, W, 3) uint8, got {arr.dtype} {arr.shape}")
        if self._writer is not None:
            self._writer.add_image(tag, arr, int(step), dataformats="HWC")
            self._writer.flush()
        if save_png is not None:
            save_rgb_png(save_png, arr)

    def flush(self) -> None:
        """Flush the step file and TensorBoard events."""
        if not self.enabled or self._closed:
            return
        if self._steps_file is not None:
            self._steps_file.flush()
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close every file; calling it again does nothing."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self._steps_file is not None:
            self._steps_file.close()
            self._steps_file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.run_dir)!r}, enabled={self.enabled})"
