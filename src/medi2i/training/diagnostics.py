"""Training diagnostics: running means, run logs, the epoch line, sample grids, progress.

What the trainer logs (names produced by :mod:`medi2i.losses`):
``D_real`` / ``D_fake`` (mean D output on real / fake), ``D_acc``, the weighted parts of G's loss
``w_recon``, ``w_gan``, ``w_fm``, ``w_smooth`` and their shares ``share_*`` (percent), gradient
norms before clipping ``grad_norm_{G,R,D}`` and clip rates ``clip_rate_{G,R,D}`` (fraction of
steps where clipping fired, in ``[0, 1]``), learning rates, EMA decay, images/s, and validation
metrics ``val_*``.

Pieces:

* :class:`RunningMeans` accumulates 0-dim tensors on their device, so the step loop never waits
  for the accelerator; one host transfer reads all means at logging time.
* :class:`RunLogger` writes ``metrics/steps.jsonl``, ``metrics/epochs.jsonl``,
  ``metrics/epochs.csv`` and TensorBoard events (``tensorboard/``) in the run directory; it is a
  no-op on non-zero DDP ranks (``enabled=False``).
* :func:`epoch_summary_line` formats the one-line console summary of an epoch.
* :func:`sample_grid` builds the ``input | output | target | |error| | lung`` preview grid.
* :class:`ProgressBar` is a thin :mod:`tqdm` wrapper with an ETA.

Non-finite values are written to the JSON files as ``null`` (strict JSON) and to the CSV as
``nan`` / ``inf``.
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
import torch
from torch import Tensor
from tqdm.auto import tqdm

from medi2i.losses import PART_NAMES
from medi2i.run.layout import RunLayout
from medi2i.utils.atomic import atomic_write_text
from medi2i.utils.jsonsafe import json_safe
from medi2i.viz import make_grid, overlay_mask, save_rgb_png, to_uint8

logger = logging.getLogger(__name__)

__all__ = [
    "ProgressBar",
    "RunLogger",
    "RunningMeans",
    "epoch_summary_line",
    "sample_grid",
]

_RESERVED_STEP_KEYS = frozenset({"step", "epoch", "time"})
_RESERVED_EPOCH_KEYS = frozenset({"epoch", "time"})
_tb_warned = False


# --------------------------------------------------------------------------------------------
# Running means without host syncs
# --------------------------------------------------------------------------------------------


class RunningMeans:
    """Accumulate scalars per key (sum + count) on their device, without host syncs.

    ``add`` only launches device-side additions (no ``.item()``, no ``float(tensor)``), so calling
    it every step keeps the step loop asynchronous. Keys may appear in some steps only: each key
    has its own count. Tensor sums are kept in float32 on the tensor's device; Python numbers are
    summed on the host.

    Example::

        means = RunningMeans()
        for batch in loader:
            ...
            means.add(parts)                 # dict of 0-dim tensors
            if step % log_every == 0:
                logger_.log_step(step, epoch, means.means())
                means.reset()
    """

    def __init__(self) -> None:
        self._sums: dict[str, Tensor | float] = {}
        self._counts: dict[str, int] = {}

    def add(self, values: Mapping[str, Tensor | float]) -> None:
        """Add one observation per key.

        Args:
            values: key -> one-element tensor (any device/dtype; detached here) or Python number.

        Raises:
            ValueError: if a tensor has more than one element (checked from its shape only).
            TypeError: if a value is neither a tensor nor a real number.
        """
        for key, value in values.items():
            if isinstance(value, Tensor):
                if value.numel() != 1:
                    raise ValueError(
                        f"RunningMeans.add: {key!r} must be a one-element tensor, "
                        f"got shape {tuple(value.shape)}"
                    )
                term: Tensor | float = value.detach().reshape(()).to(torch.float32)
            elif isinstance(value, numbers.Real):
                term = float(value)
            else:
                raise TypeError(
                    f"RunningMeans.add: {key!r} must be a tensor or a number, "
                    f"got {type(value).__name__}"
                )
            previous = self._sums.get(key)
            # Out-of-place sums: never alias (and later modify) a caller's tensor.
            self._sums[key] = term if previous is None else previous + term
            self._counts[key] = self._counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        """Return the mean of every key seen since the last :meth:`reset`.

        All tensor sums on one device are stacked and read with a single ``.tolist()``: one host
        transfer per device (normally one in all).

        Returns:
            ``{key: mean}`` in first-seen order (non-finite means stay ``nan`` / ``inf``).
        """
        result: dict[str, float] = {}
        by_device: dict[torch.device, list[str]] = {}
        for key, total in self._sums.items():
            if isinstance(total, Tensor):
                by_device.setdefault(total.device, []).append(key)
            else:
                result[key] = total / self._counts[key]
        for keys in by_device.values():
            sums = torch.stack([self._sums[k] for k in keys]).tolist()  # type: ignore[misc]
            for key, total in zip(keys, sums):
                result[key] = total / self._counts[key]
        return {key: result[key] for key in self._sums}

    def counts(self) -> dict[str, int]:
        """Return how many values each key has received since the last :meth:`reset`."""
        return dict(self._counts)

    def reset(self) -> None:
        """Forget every key."""
        self._sums.clear()
        self._counts.clear()

    def __len__(self) -> int:
        return len(self._sums)

    def __contains__(self, key: object) -> bool:
        return key in self._sums

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._counts})"


# --------------------------------------------------------------------------------------------
# Run logger: JSONL, CSV, TensorBoard
# --------------------------------------------------------------------------------------------


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
    for prefix in ("val", "train"):
        if key.startswith(prefix + "_") and len(key) > len(prefix) + 1:
            return f"{prefix}/{key[len(prefix) + 1 :]}"
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
            step = record.get("step") if isinstance(record, dict) else None
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
        record: dict[str, Any] = {"step": int(step), "epoch": int(epoch), "time": time.time()}
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
        row: dict[str, Any] = {"epoch": int(epoch), "time": time.time()}
        row.update({k: json_safe(v) for k, v in scalars.items()})
        self._epoch_rows = [
            r
            for r in self._epoch_rows
            if not (isinstance(r.get("epoch"), int) and r["epoch"] >= epoch)
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
        """Record an RGB image (e.g. a :func:`sample_grid`) in TensorBoard and optionally as PNG.

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


# --------------------------------------------------------------------------------------------
# Console summary
# --------------------------------------------------------------------------------------------


def _num(value: Any) -> str:
    """Compact number: ~3 significant digits, plain notation for everyday magnitudes."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(x):
        return str(x)
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 1e4 or a < 1e-3:
        return f"{x:.2e}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _pct(value: Any, *, scale: float = 1.0) -> str:
    try:
        x = float(value) * scale
    except (TypeError, ValueError):
        return str(value)
    return f"{x:.0f}%" if math.isfinite(x) else str(x)


def _duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def epoch_summary_line(
    epoch: int, epochs: int, scalars: Mapping[str, float], *, seconds: float
) -> str:
    """Format one console line summarising an epoch; missing keys are simply left out.

    Example::

        epoch 3/10 | 41s 12.5 img/s | G 0.532 (grad recon 61% gan 14% fm 25%) | D_real 0.710
        D_fake 0.320 acc 0.830 | gradG 3.10 clipG 12% gradD 28.4 clipD 88% | val psnr 31.2
        (lung 32.0) ssim 0.941 (lung 0.950) | best psnr_mask 32.0@3

    (one line in reality). Shares are in percent: the gradient shares ``gshare_*`` ("grad") when
    they were measured, else the loss-value shares ``share_*`` ("value"); a share of exactly 0
    (a part that is off) is not shown; clip rates (``clip_rate_*``) and ``D_acc`` are fractions in
    ``[0, 1]``; clip rates are shown in percent.

    Args:
        epoch: the epoch just finished, as it should be shown.
        epochs: the total number of epochs.
        scalars: the epoch's values; reads ``loss_G``, ``gshare_{recon,gan,fm,smooth}`` (else
            ``share_{recon,gan,fm,smooth}``),
            ``D_real``, ``D_fake``, ``D_acc``, ``grad_norm_{G,R,D}``, ``clip_rate_{G,R,D}``,
            ``val_psnr``, ``val_psnr_mask``, ``val_ssim``, ``val_ssim_mask``, ``best_metric``,
            ``best_value``, ``best_epoch``, ``images_per_s``.
        seconds: the epoch's wall time.

    Returns:
        The line, without a trailing newline.
    """
    s = scalars
    parts = [f"epoch {epoch}/{epochs}"]

    timing = _duration(seconds)
    if "images_per_s" in s:
        timing += f" {_num(s['images_per_s'])} img/s"
    parts.append(timing)

    # What drives G is each term's gradient on G's output (gshare_*), not its share of the
    # loss value (share_*): a GAN term at chance holds a large, nearly constant value while
    # pulling little. The value shares are shown only when no gradient share was measured.
    kind = "gshare" if any(f"gshare_{n}" in s for n in PART_NAMES) else "share"
    shares = [
        f"{name} {_pct(s[f'{kind}_{name}'])}"
        for name in PART_NAMES
        if f"{kind}_{name}" in s and _is_nonzero(s[f"{kind}_{name}"])
    ]
    if "loss_G" in s or shares:
        g = f"G {_num(s['loss_G'])}" if "loss_G" in s else "G"
        label = "grad " if kind == "gshare" else "value "
        parts.append(f"{g} ({label}{' '.join(shares)})" if shares else g)

    d = [f"{key} {_num(s[key])}" for key in ("D_real", "D_fake") if key in s]
    if "D_acc" in s:
        d.append(f"acc {_num(s['D_acc'])}")
    if d:
        parts.append(" ".join(d))

    grads = []
    for net in ("G", "R", "D"):
        if f"grad_norm_{net}" in s:
            grads.append(f"grad{net} {_num(s[f'grad_norm_{net}'])}")
        if f"clip_rate_{net}" in s:
            grads.append(f"clip{net} {_pct(s[f'clip_rate_{net}'], scale=100.0)}")
    if grads:
        parts.append(" ".join(grads))

    val = []
    for metric in ("psnr", "ssim"):
        whole, lung = s.get(f"val_{metric}"), s.get(f"val_{metric}_mask")
        if whole is not None and lung is not None:
            val.append(f"{metric} {_num(whole)} (lung {_num(lung)})")
        elif whole is not None:
            val.append(f"{metric} {_num(whole)}")
        elif lung is not None:
            val.append(f"{metric} lung {_num(lung)}")
    if val:
        parts.append("val " + " ".join(val))

    if "best_value" in s:
        best = f"best {s.get('best_metric', 'metric')} {_num(s['best_value'])}"
        if "best_epoch" in s:
            best += f"@{_int_or_num(s['best_epoch'])}"
        parts.append(best)
    return " | ".join(parts)


def _is_nonzero(value: Any) -> bool:
    try:
        return float(value) != 0.0
    except (TypeError, ValueError):
        return True


def _int_or_num(value: Any) -> str:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(x)) if math.isfinite(x) and x == int(x) else _num(x)


# --------------------------------------------------------------------------------------------
# Sample grids
# --------------------------------------------------------------------------------------------

_ERROR_GAIN = 4.0
"""|output − target| is multiplied by this (after normalising to [0, 1]) to make it visible."""


def _check_images(t: object, name: str) -> tuple[int, ...]:
    if not isinstance(t, Tensor) or t.ndim != 4 or t.shape[1] != 1:
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"sample_grid: {name} must be a (N, 1, H, W) tensor, got {shape}")
    return tuple(t.shape)


def _to_numpy_images(t: Tensor, n: int) -> np.ndarray:
    """First ``n`` images of (N, 1, H, W) -> float32 numpy (n, H, W) (bf16/fp16/bool safe)."""
    return t[:n, 0].detach().to(device="cpu", dtype=torch.float32).numpy()


def sample_grid(
    input: Tensor,
    output: Tensor,
    target: Tensor,
    mask: Tensor | None,
    *,
    value_range: tuple[float, float] = (0.0, 1.0),
    max_rows: int = 4,
) -> np.ndarray:
    """Preview grid, one row per sample: input | output | target | |error| | lung overlay.

    The error column shows ``|output − target|`` relative to the value range, multiplied by
    4 and clipped (black = perfect). The last column tints the mask (``> 0.5`` = inside) over the
    output; it is left out when ``mask`` is None.

    Args:
        input: network input, (N, 1, H, W), any device/dtype.
        output: G's output, same shape.
        target: the target, same shape.
        mask: lung / ROI mask (N, 1, H, W) (bool or float), or None.
        value_range: ``(lo, hi)`` of the images (``(0, 1)`` or ``(-1, 1)``).
        max_rows: at most this many samples (the first ones).

    Returns:
        ``(H_grid, W_grid, 3)`` uint8 RGB image with column labels.

    Raises:
        ValueError: on shapes other than (N, 1, H, W), mismatched shapes, ``max_rows < 1`` or an
            empty value range.
    """
    lo, hi = (float(v) for v in value_range)
    if hi == lo:
        raise ValueError(f"sample_grid: value_range must not be empty, got {value_range}")
    if max_rows < 1:
        raise ValueError(f"sample_grid: max_rows must be >= 1, got {max_rows}")
    shape = _check_images(input, "input")
    for name, t in (("output", output), ("target", target), ("mask", mask)):
        if t is not None and _check_images(t, name) != shape:
            raise ValueError(
                f"sample_grid: {name} has shape {tuple(t.shape)}, input has {shape}; "
                "expected the same (N, 1, H, W)"
            )
    if shape[0] == 0:
        raise ValueError("sample_grid: no samples (N = 0)")
    n = min(shape[0], max_rows)
    x, y_hat, y = (_to_numpy_images(t, n) for t in (input, output, target))
    m = _to_numpy_images(mask, n) if mask is not None else None

    labels = ["input", "output", "target", f"|error| x{_ERROR_GAIN:g}"]
    if m is not None:
        labels.append("lung")
    rows = []
    for i in range(n):
        output_u8 = to_uint8(y_hat[i], lo, hi)
        error = np.abs(y_hat[i] - y[i]) / abs(hi - lo) * _ERROR_GAIN
        row = [to_uint8(x[i], lo, hi), output_u8, to_uint8(y[i], lo, hi), to_uint8(error)]
        if m is not None:
            row.append(overlay_mask(output_u8, m[i] > 0.5))
        rows.append(row)
    return make_grid(rows, labels=labels)


# --------------------------------------------------------------------------------------------
# Progress bar
# --------------------------------------------------------------------------------------------


class ProgressBar:
    """A tqdm progress bar with an ETA for a step loop.

    It is disabled when ``enabled=False`` (non-zero DDP ranks, ``--quiet``) and, by tqdm's own
    rule, when the output stream is not a terminal (CI logs, redirected output), so logs are
    not flooded with carriage returns.

    Args:
        total: number of steps expected (None: no ETA).
        desc: text in front of the bar, e.g. ``"epoch 3/10"``.
        enabled: False disables the bar entirely.
        unit: what one update counts.
        leave: keep the finished bar on screen.
    """

    def __init__(
        self,
        total: int | None,
        *,
        desc: str = "",
        enabled: bool = True,
        unit: str = "step",
        leave: bool = False,
    ) -> None:
        self._bar = tqdm(
            total=total,
            desc=desc or None,
            unit=unit,
            leave=leave,
            dynamic_ncols=True,
            disable=None if enabled else True,
        )

    @property
    def disabled(self) -> bool:
        """Whether the bar is not being drawn."""
        return bool(self._bar.disable)

    def update(self, n: int = 1, **postfix_floats: float) -> None:
        """Advance by ``n`` steps and, if given, show ``key=value`` numbers after the bar.

        Pass host floats (reading device tensors here would wait for the device each step).
        """
        if self._bar.disable:
            return
        if postfix_floats:
            self._bar.set_postfix({k: _num(v) for k, v in postfix_floats.items()}, refresh=False)
        self._bar.update(n)

    def write(self, line: str) -> None:
        """Print a line (e.g. the epoch summary) without breaking the bar."""
        tqdm.write(line)

    def close(self) -> None:
        """Close the bar."""
        self._bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
