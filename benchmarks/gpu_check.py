"""The GPU path in one bounded check: AMP training, DDP, R1 under fp16, predict throughput.

Parts, each recorded in the report as ``pass``, ``fail`` or ``skipped`` with the reason (a
failure is recorded and the other parts still run):

* ``training_fp32``, ``training_bf16``, ``training_fp16`` - the ``configs/gpu-large.yaml``
  setup (the large G, the fitted R, D) trained in this process by the project's ``Trainer``
  for one epoch of ``--steps`` steps with ``train.amp`` ``off``, ``bf16`` and ``fp16``, R1 on
  (``loss.r1_weight`` = ``--r1-weight``, lazy at the config's interval). Each reports the
  median and mean time of ``Trainer.train_step`` after ``--warmup`` steps (the device
  synchronised around each step), the images/s that median gives, the images/s logged in
  ``steps.jsonl`` (data loading and logging included), the peak GPU memory
  (``torch.cuda.max_memory_allocated``, validation and checkpointing included) and whether
  every logged loss stayed finite with no skipped step, the pass condition.
* ``r1_fp16`` - the raw R1 penalty of the fp16 run (``r1`` in ``steps.jsonl``) against the fp32
  run's: it passes when every value is finite and none is flushed to zero (exactly 0, or a
  median below 1e-3 of the fp32 run's) while the fp32 run's are not. The first R1 step sees the
  same weights and batch in both runs, so their relative difference there is the precision's
  own effect.
* ``predict``, ``predict_bf16``, ``predict_fp16`` - ``medi2i.Predictor`` on the fp32 run's
  checkpoint (else another trained run's) with G in fp32, bf16 and fp16 (``precision``; fp16
  only on a GPU): start-up (checkpoint to a ready G on the device) apart from the per-image time
  (median after a first, warm-up image) at 256x256, and one 2048x2048 image predicted in tiles
  (the default tile), timed on its second pass. Inputs are test images resized in their stored
  units.
* ``ddp_1``, ``ddp_2`` - ``torchrun --standalone --nproc_per_node=N -m medi2i train`` in a
  subprocess on the same setup in the config's precision for ``--ddp-steps`` steps, passing
  when it exits 0 with its summary written and every logged loss finite; throughput is the
  median logged images/s (over every rank) after the warm-up. With N = 1 medi2i runs without a
  process group (the launcher only); N = 2 wraps the networks in DDP (NCCL on CUDA, gloo on the
  CPU) and needs two CUDA devices on a GPU.

Data: ``--data`` (default ``runs/benchmark``, built by ``medi2i data drr --out runs/benchmark``);
when it is missing a small DRR benchmark (64 pairs of 256x256) is built in the work folder.
Runs go to ``--work`` (default: a temporary folder, removed at the end).

Time: with the defaults the check takes under 8 minutes on one GPU. ``--time-limit`` bounds
it: a training run stops stepping at ``--run-seconds`` or at the limit (its numbers then cover
the steps taken, and the report says so), a torchrun is stopped at ``--ddp-timeout`` or at the
limit, and a part that would start with under 10 s left is skipped.

``--dry-run`` runs every part at tiny sizes: a tiny G and D, 2 steps, a 64-px DRR benchmark of
20 pairs (unless ``--data`` names one), prediction at 64 px and of one 256-px image in 128-px
tiles. With ``--device cpu`` it proves the script without a GPU: fp16 (and with it the R1
check) is skipped, since it needs CUDA, and ``ddp_2`` runs two gloo processes.

Output: a JSON report (``--out``) with the card's name, driver and CUDA versions, the torch
version, each part's numbers and status, and a Markdown table on stdout. Exit status 0 when
every part that ran passed, 1 otherwise, 2 for bad arguments.

Usage::

    python benchmarks/gpu_check.py                          # one GPU, under 8 minutes
    python benchmarks/gpu_check.py --data runs/benchmark --steps 200 -v
    python benchmarks/gpu_check.py --device cpu --dry-run --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import io
import json
import logging
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import machine_info, sync, write_report
from medi2i.config import Config
from medi2i.run.layout import RunLayout
from medi2i.run.scalars import (
    D_FAKE_LOSS,
    D_GAN,
    D_REAL_LOSS,
    IMAGES_PER_S,
    LOSS_D,
    LOSS_G,
    PART_NAMES,
    R1,
    RECON_DSSIM,
    RECON_L1,
    STEP,
    W_R1,
    weighted_key,
)
from medi2i.utils.formatting import significant
from medi2i.utils.jsonsafe import json_safe

logger = logging.getLogger("gpu_check")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "gpu-large.yaml"
DEFAULT_DATA = Path("runs/benchmark")

PASS, FAIL, SKIPPED = "pass", "fail", "skipped"
AMP_NAMES = {"off": "fp32", "bf16": "bf16", "fp16": "fp16"}
"""``train.amp`` value -> the precision's name in the part names (``training_fp32``, ...)."""
PART_ORDER = (
    "data",
    "training_fp32",
    "training_bf16",
    "training_fp16",
    "r1_fp16",
    "predict",
    "predict_bf16",
    "predict_fp16",
    "ddp_1",
    "ddp_2",
)
LOSS_KEYS = frozenset(
    {LOSS_G, LOSS_D, D_GAN, D_REAL_LOSS, D_FAKE_LOSS, RECON_L1, RECON_DSSIM, R1, W_R1}
    | set(PART_NAMES)
    | {weighted_key(part) for part in PART_NAMES}
)
"""The logged scalars that are losses (or parts of one): each must stay finite."""
FLUSH_RATIO = 1e-3
"""An fp16 R1 median below this fraction of the fp32 run's counts as flushed to zero."""
MIN_PART_SECONDS = 10.0
"""A part that would start with less time left than this is skipped."""
NEEDS_CUDA = "needs CUDA (train.amp=fp16 runs on CUDA devices only)"

#: A tiny G and D for --dry-run (as the tests' TINY_NETS): well under a second per CPU step.
TINY_OVERRIDES = (
    "data.batch_size=2",
    "data.num_workers=0",
    "data.pin_memory=false",
    "model.G.preset=small",
    "model.G.base_channels=8",
    "model.G.channel_mults=[1,2]",
    "model.G.res_blocks=1",
    "model.G.attention=false",
    "model.D.base_channels=8",
    "model.D.num_scales=1",
    "model.D.n_layers=2",
)


@dataclass(frozen=True)
class Sizes:
    """How much each part does: the defaults of a GPU check, or the tiny ones of --dry-run."""

    steps: int
    warmup: int
    ddp_steps: int
    drr_size: int
    drr_count: int
    val_images: int
    predict_size: int
    predict_large: int
    predict_images: int
    tile: int | None
    """Prediction tile side; None = the Predictor's default."""
    overrides: tuple[str, ...]


def resolve_sizes(args: argparse.Namespace) -> Sizes:
    """The sizes of this check: the options given, else the defaults of its kind."""
    dry = args.dry_run

    def pick(value: int | None, full: int, tiny: int) -> int:
        return value if value is not None else (tiny if dry else full)

    return Sizes(
        steps=pick(args.steps, 300, 2),
        warmup=pick(args.warmup, 20, 1),
        ddp_steps=pick(args.ddp_steps, 40, 2),
        drr_size=64 if dry else 256,
        drr_count=20 if dry else 64,
        val_images=2 if dry else 16,
        predict_size=64 if dry else 256,
        predict_large=256 if dry else 2048,
        predict_images=pick(args.predict_images, 32, 4),
        tile=128 if dry else None,
        overrides=TINY_OVERRIDES if dry else (),
    )


class Clock:
    """The check's time limit."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = float(limit_s)
        self.start = time.perf_counter()
        self.deadline = self.start + self.limit_s

    def left(self) -> float:
        """Seconds left before the limit (negative once past it)."""
        return self.deadline - time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since the check started."""
        return time.perf_counter() - self.start


class _OutOfTime(Exception):
    """Raised inside a training run to stop it stepping once its time is spent."""


# ----------------------------------------------------------------------------------------------
# records
# ----------------------------------------------------------------------------------------------


def skipped(reason: str) -> dict[str, Any]:
    """A part that did not run, and why."""
    return {"status": SKIPPED, "reason": reason}


def failed(exc: BaseException, **extra: Any) -> dict[str, Any]:
    """A part that raised: the error and the end of its traceback."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    logger.warning("%s", text)
    return {
        "status": FAIL,
        "reason": f"{type(exc).__name__}: {exc}",
        "traceback": text[-3000:],
        **extra,
    }


def judged(record: dict[str, Any], reason: str | None) -> dict[str, Any]:
    """``record`` headed by its status: ``fail`` with ``reason``, or ``pass`` without one."""
    return {"status": PASS if reason is None else FAIL, "reason": reason, **record}


def exit_status(parts: dict[str, dict[str, Any]]) -> int:
    """0 when every part that ran passed, else 1 (skipped parts do not count)."""
    return 1 if any(p.get("status") == FAIL for p in parts.values()) else 0


def free_memory(device: torch.device) -> None:
    """Release what a finished part left behind (its networks, the CUDA cache)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def read_steps(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics/steps.jsonl`` (none when it is missing)."""
    path = RunLayout(run_dir).steps
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def nonfinite_losses(rows: list[dict[str, Any]]) -> list[str]:
    """``step N: key`` for every logged loss that is not finite (``null`` in the file)."""
    bad = []
    for row in rows:
        for key in sorted(LOSS_KEYS & row.keys()):
            value = row[key]
            if value is None or not math.isfinite(float(value)):
                bad.append(f"step {row.get(STEP)}: {key}")
    return bad


def logged_throughput(rows: list[dict[str, Any]], warmup: int) -> float | None:
    """Median logged images/s over the rows after the first ``warmup`` (all when fewer)."""
    values = [row[IMAGES_PER_S] for row in rows if row.get(IMAGES_PER_S) is not None]
    kept = values[warmup:] if len(values) > warmup else values
    return _median(kept)


def r1_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The logged raw R1 penalties of a run: how many, finite, zero, first, median, range."""
    values = [row[R1] for row in rows if R1 in row]
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    steps = [row.get(STEP) for row in rows if R1 in row]
    return {
        "count": len(values),
        "finite": len(finite),
        "zeros": sum(1 for v in finite if v == 0.0),
        "first": values[0] if values else None,
        "median": _median(finite),
        "min": min(finite) if finite else None,
        "max": max(finite) if finite else None,
        "steps": steps,
    }


def r1_verdict(reference: dict[str, Any] | None, half: dict[str, Any] | None) -> tuple[str, str]:
    """Whether the fp16 run's R1 penalties (``half``) are finite and not flushed to zero.

    Args:
        reference: :func:`r1_summary` of the fp32 run, or None when it has none.
        half: :func:`r1_summary` of the fp16 run, or None.

    Returns:
        ``(status, reason)``: ``pass`` or ``fail`` and the evidence in words.
    """
    if not half or not half.get("count"):
        return FAIL, "the fp16 run logged no R1 penalty"
    if half["finite"] < half["count"]:
        return (
            FAIL,
            f"{half['count'] - half['finite']} of {half['count']} fp16 R1 values not finite",
        )
    ref_ok = bool(
        reference and reference.get("count") and not reference.get("zeros") and reference["median"]
    )
    if half["zeros"]:
        zeros = f"{half['zeros']} of {half['count']} fp16 R1 values are 0"
        if ref_ok:
            return FAIL, f"{zeros} while the fp32 run's are not"
        if reference and reference.get("zeros"):
            return PASS, f"{zeros}, as the fp32 run's are: no flush to tell"
        return FAIL, f"{zeros} (no fp32 run to compare with)"
    if not ref_ok:
        return PASS, "fp16 R1 finite and nonzero; no nonzero fp32 R1 to compare with"
    ratio = half["median"] / reference["median"]
    if ratio < FLUSH_RATIO:
        return FAIL, (
            f"fp16 R1 flushed towards zero: median {half['median']:.3g} against fp32 "
            f"{reference['median']:.3g}"
        )
    return PASS, f"fp16 R1 finite and nonzero; median {ratio:.3g} x the fp32 run's"


# ----------------------------------------------------------------------------------------------
# machine
# ----------------------------------------------------------------------------------------------


def _nvidia_driver() -> str | None:
    """The NVIDIA driver version from ``nvidia-smi``, or None where it cannot be asked."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def gpu_info(device: torch.device) -> dict[str, Any]:
    """The card, its driver and the CUDA/cuDNN versions (null fields without CUDA)."""
    available = torch.cuda.is_available()
    info: dict[str, Any] = {
        "name": None,
        "driver": None,
        "cuda_driver_api": None,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if available else None,
        "torch": torch.__version__,
        "cuda_available": available,
        "device_count": torch.cuda.device_count() if available else 0,
    }
    if device.type != "cuda":
        return info
    props = torch.cuda.get_device_properties(device)
    info.update(
        name=torch.cuda.get_device_name(device),
        capability=f"{props.major}.{props.minor}",
        total_memory_gib=props.total_memory / 2**30,
        driver=_nvidia_driver(),
        bf16_supported=torch.cuda.is_bf16_supported(),
        tf32_convolutions=torch.backends.cudnn.allow_tf32,
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
    )
    with contextlib.suppress(Exception):  # the CUDA driver API version, e.g. 12040 -> 12.4
        version = int(torch._C._cuda_getDriverVersion())
        info["cuda_driver_api"] = f"{version // 1000}.{version % 1000 // 10}"
    return info


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


def prepare_data(args: argparse.Namespace, sizes: Sizes, work: Path) -> dict[str, Any]:
    """The dataset the runs train on: ``--data`` (or ``runs/benchmark``), else a built DRR one.

    A dry run without ``--data`` always builds its tiny benchmark.
    """
    from medi2i.data.io import read_image

    wanted = args.data if args.data is not None else None if args.dry_run else DEFAULT_DATA
    record: dict[str, Any] = {"status": PASS, "asked": None if wanted is None else str(wanted)}
    if wanted is not None and Path(wanted).is_dir():
        root = Path(wanted).resolve()
        record.update(root=str(root), built=False)
    else:
        from medi2i.data.drr import DRRSettings, generate_benchmark

        root = work / "drr"
        settings = DRRSettings(size=sizes.drr_size, count=sizes.drr_count, preview_count=0)
        logger.info(
            "%s: building a DRR benchmark of %d pairs of %d px in %s",
            "dry run" if wanted is None else f"no dataset at {wanted}",
            settings.count,
            settings.size,
            root,
        )
        start = time.perf_counter()
        summary = generate_benchmark(root, settings)
        record.update(
            root=str(root),
            built=True,
            drr_settings={"size": settings.size, "count": settings.count},
            counts=summary.get("counts"),
            seconds=time.perf_counter() - start,
        )
    first = sorted((root / "train" / "input").glob("*"))
    if first:
        record["image_shape"] = list(read_image(first[0])[0].shape)
    return record


# ----------------------------------------------------------------------------------------------
# training in this process
# ----------------------------------------------------------------------------------------------


def run_overrides(args: argparse.Namespace, sizes: Sizes, data_root: str, device: str) -> list:
    """The overrides every run of the check shares, on top of ``--config``."""
    return [
        f"data.root={data_root}",
        f"train.device={device}",
        "train.epochs=1",
        "train.checkpoint_every=0",
        "train.save_every_steps=0",
        # the config's warm-up spans 2 of 100 epochs; one epoch reaches the full rate too
        "optim.warmup_epochs=0.2",
        f"loss.r1_weight={args.r1_weight}",
        "eval.sample_count=0",
        "eval.test_at_end=false",
        f"eval.max_val_images={sizes.val_images}",
        "logging.log_every=1",
        "logging.tensorboard=false",
        "logging.progress=false",
        *sizes.overrides,
        *args.set,
    ]


def train_part(
    cfg: Config, run_dir: Path, device: torch.device, sizes: Sizes, cutoff: float
) -> dict[str, Any]:
    """Train ``cfg`` with the project's Trainer, timing each ``train_step``; its record."""
    from medi2i.training.distributed import init_distributed
    from medi2i.training.trainer import Trainer

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    trainer = Trainer(cfg, run_dir, init_distributed(cfg.train.device))
    setup_s = time.perf_counter() - start
    times: list[float] = []
    inner = trainer.train_step

    def timed_step(batch: dict) -> dict:
        if times and time.perf_counter() > cutoff:
            raise _OutOfTime
        sync(device)
        t0 = time.perf_counter()
        stats = inner(batch)
        sync(device)
        times.append(time.perf_counter() - t0)
        return stats

    trainer.train_step = timed_step  # the instance's step: fit() calls it for every batch
    stopped = None
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            trainer.fit()
    except _OutOfTime:
        stopped = f"time spent after {len(times)} of {sizes.steps} steps"
        logger.warning("%s: %s", run_dir.name, stopped)
        trainer.logger.close()
        trainer.save(is_best=False, epoch_end=False)  # last.pt, for the predict part
    finally:
        for line in printed.getvalue().splitlines():
            logger.info("%s: %s", run_dir.name, line)
    wall_s = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    rows = read_steps(run_dir)
    warm = min(sizes.warmup, max(len(times) - 1, 0))
    measured = times[warm:]
    median = _median(measured)
    batch = cfg.data.batch_size
    bad = nonfinite_losses(rows)
    record: dict[str, Any] = {
        "amp": cfg.train.amp,
        "steps": len(times),
        "steps_asked": sizes.steps,
        "stopped": stopped,
        "warmup_steps": warm,
        "batch_size": batch,
        "image_shape": list(trainer.train_set.image_shape),
        "step_s_median": median,
        "step_s_mean": statistics.fmean(measured) if measured else None,
        "images_per_s": batch / median if median else None,
        "images_per_s_logged": logged_throughput(rows, warm),
        "peak_memory_gib": peak / 2**30 if peak is not None else None,
        "setup_s": setup_s,
        "wall_s": wall_s,
        "logged_rows": len(rows),
        "losses_finite": not bad and trainer.skipped_steps == 0,
        "nonfinite_losses": bad[:20],
        "skipped_steps": trainer.skipped_steps,
        "grad_scale": trainer.scaler.get_scale() if trainer.scaler.is_enabled() else None,
        "r1": r1_summary(rows),
        "run_dir": str(run_dir),
    }
    del trainer.train_step  # the closure refers to the trainer: break the cycle
    if len(times) <= sizes.warmup:
        return judged(record, f"{len(times)} steps ran: none after the {sizes.warmup} warm-up")
    if not record["losses_finite"]:
        skips = record["skipped_steps"]
        return judged(record, f"non-finite losses ({len(bad)} logged, {skips} steps skipped)")
    return judged(record, None)


def r1_part(parts: dict[str, dict[str, Any]], r1_weight: float) -> dict[str, Any]:
    """The R1 check from the fp32 and fp16 runs' logs."""
    half, full = parts.get("training_fp16"), parts.get("training_fp32")
    if r1_weight <= 0:
        return skipped("R1 is off (--r1-weight 0)")
    if half is None:
        return skipped("the fp16 run was not asked for (--amp)")
    if half["status"] == SKIPPED:
        return skipped(half["reason"])
    ref = full.get("r1") if full is not None else None
    logged = half.get("r1")
    if half["status"] == FAIL and not (logged or {}).get("count"):
        status, reason = FAIL, f"the fp16 run failed before logging R1: {half['reason']}"
    else:
        status, reason = r1_verdict(ref, logged)
    record: dict[str, Any] = {"status": status, "reason": reason, "fp32": ref, "fp16": logged}
    first_ref, first_half = (ref or {}).get("first"), (logged or {}).get("first")
    if first_ref and first_half is not None:  # same weights and batch: precision alone
        record["first_step_relative_difference"] = abs(first_half - first_ref) / abs(first_ref)
    return record


# ----------------------------------------------------------------------------------------------
# prediction
# ----------------------------------------------------------------------------------------------


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` (stored units) resized bilinearly to ``size`` x ``size``."""
    if image.shape == (size, size):
        return image
    tensor = torch.from_numpy(image.astype(np.float32))[None, None]
    out = torch.nn.functional.interpolate(
        tensor, size=(size, size), mode="bilinear", align_corners=False
    )
    return out[0, 0].numpy()


PREDICT_PARTS = {"predict": "fp32", "predict_bf16": "bf16", "predict_fp16": "fp16"}
"""The prediction parts and the precision G runs in (``Predictor(precision=...)``)."""


def predict_part(
    run_dir: Path, data_root: Path, device: torch.device, sizes: Sizes, precision: str = "fp32"
) -> dict:
    """Predictor start-up, per-image time at the small size and one large tiled image."""
    from medi2i.data.io import read_image
    from medi2i.inference import Predictor

    sources: list[Path] = []
    for split in ("test", "val", "train"):
        sources = sorted((data_root / split / "input").glob("*"))[: sizes.predict_images]
        if sources:
            break
    if not sources:
        return {"status": FAIL, "reason": f"no input image under {data_root}"}
    images = []
    for path in sources:
        array, meta = read_image(path)
        images.append((_resized(array, sizes.predict_size), meta.stored_dtype, path.name))
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    kwargs = {"tile": sizes.tile} if sizes.tile is not None else {}
    sync(device)
    start = time.perf_counter()
    predictor = Predictor.from_run(
        run_dir, device=device, intensity_check="warn", precision=precision, **kwargs
    )
    sync(device)
    startup_s = time.perf_counter() - start
    problems: list[str] = []

    def predict(image: np.ndarray, dtype: str, name: str) -> float:
        sync(device)
        t0 = time.perf_counter()
        out = predictor(image, stored_dtype=dtype, source=name)
        sync(device)
        seconds = time.perf_counter() - t0
        if out.shape != image.shape or not np.isfinite(out).all():
            problems.append(
                f"{name} {image.shape[0]}px: shape {out.shape}, finite "
                f"{bool(np.isfinite(out).all())}"
            )
        return seconds

    per_image = [predict(*images[k % len(images)]) for k in range(max(sizes.predict_images, 2))]
    large = _resized(images[0][0], sizes.predict_large)
    large_first = predict(large, images[0][1], f"{images[0][2]} (large)")
    large_s = predict(large, images[0][1], f"{images[0][2]} (large)")
    steady = per_image[1:]
    median = _median(steady)
    record: dict[str, Any] = {
        "checkpoint": str(predictor.loaded.checkpoint),
        "device": str(device),
        "precision": precision,
        "tile": predictor.tile,
        "overlap": predictor.overlap,
        "startup_s": startup_s,
        "size": sizes.predict_size,
        "images": len(per_image),
        "first_image_s": per_image[0],
        "image_s_median": median,
        "images_per_s": 1.0 / median if median else None,
        "large_size": sizes.predict_large,
        "large_tiled": predictor.tile is not None and sizes.predict_large > predictor.tile,
        "large_first_s": large_first,
        "large_s": large_s,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "problems": problems,
    }
    return judged(record, "; ".join(problems[:5]) if problems else None)


# ----------------------------------------------------------------------------------------------
# DDP through torchrun
# ----------------------------------------------------------------------------------------------


def ddp_part(
    nproc: int,
    backend: str,
    config: Path,
    overrides: list[str],
    run_dir: Path,
    sizes: Sizes,
    timeout: float,
) -> dict[str, Any]:
    """``torchrun --nproc_per_node=nproc -m medi2i train`` in a subprocess; its record."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "medi2i",
        "train",
        "--config",
        str(config),
        "--out",
        str(run_dir),
        *overrides,
    ]
    logger.info("ddp: %s", " ".join(cmd))
    start = time.perf_counter()
    # its own session, so that a timeout stops torchrun's worker processes with it
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    timed_out = False
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
    wall_s = time.perf_counter() - start
    rows = read_steps(run_dir)
    warm = min(sizes.warmup, max(len(rows) - 1, 0))
    bad = nonfinite_losses(rows)
    summary_written = RunLayout(run_dir).summary.is_file()
    record: dict[str, Any] = {
        "nproc_per_node": nproc,
        # one process runs without a process group; more join one (NCCL on CUDA, else gloo)
        "process_group": backend if nproc > 1 else None,
        "command": " ".join(cmd[1:]),
        "returncode": proc.returncode,
        "wall_s": wall_s,
        "steps_asked": sizes.ddp_steps,
        "logged_rows": len(rows),
        "warmup_steps": warm,
        "images_per_s_logged": logged_throughput(rows, warm),
        "summary_written": summary_written,
        "losses_finite": not bad,
        "nonfinite_losses": bad[:20],
        "run_dir": str(run_dir),
    }
    if timed_out:
        reason = f"stopped after {timeout:.0f} s (--ddp-timeout or --time-limit)"
    elif proc.returncode != 0:
        reason = f"exit status {proc.returncode}"
    elif not summary_written or len(rows) < sizes.ddp_steps:
        reason = f"incomplete run: {len(rows)} of {sizes.ddp_steps} steps logged"
    elif bad:
        reason = f"non-finite losses ({len(bad)} logged)"
    else:
        reason = None
    if reason is not None:
        record["output_tail"] = (output or "")[-4000:]
    return judged(record, reason)


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------


def _gib(value: float | None) -> str:
    return significant(value, 3, missing="")


def markdown(report: dict[str, Any]) -> str:
    """The parts as one Markdown table, headed by the device."""
    gpu = report["gpu"]
    where = gpu["name"] or report["settings"]["device"]
    lines = [
        f"GPU check on {where} (torch {gpu['torch']}, CUDA {gpu['cuda_runtime']}, "
        f"driver {gpu['driver']}){' - dry run' if report['settings']['dry_run'] else ''}",
        "",
        "| part | status | images/s | median step (ms) | peak memory (GiB) | notes |",
        "|---|---|---|---|---|---|",
    ]
    for name, part in report["parts"].items():
        ips, step, mem, notes = "", "", "", part.get("reason") or ""
        if name.startswith("training_") and part["status"] != SKIPPED:
            ips = significant(part.get("images_per_s"), 4, missing="")
            seconds = part.get("step_s_median")
            step = significant(seconds * 1e3 if seconds else None, 4, missing="")
            mem = _gib(part.get("peak_memory_gib"))
            logged = significant(part.get("images_per_s_logged"), 4)
            notes = notes or f"{part['steps']} steps, losses finite, logged {logged} img/s"
            if part.get("stopped"):
                notes += f"; {part['stopped']}"
        elif name.startswith("ddp_") and part["status"] != SKIPPED:
            ips = significant(part.get("images_per_s_logged"), 4, missing="")
            group = part["process_group"] or "no process group"
            notes = notes or f"{part['logged_rows']} steps in {part['wall_s']:.0f} s ({group})"
        elif name in PREDICT_PARTS and part["status"] != SKIPPED:
            ips = significant(part.get("images_per_s"), 4, missing="")
            mem = _gib(part.get("peak_memory_gib"))
            notes = notes or (
                f"{part['size']} px; start-up {significant(part['startup_s'], 3)} s; "
                f"{part['large_size']} px tiled {significant(part['large_s'], 3)} s"
            )
        elif name == "r1_fp16" and part["status"] != SKIPPED:
            ref, half = part.get("fp32") or {}, part.get("fp16") or {}
            notes += (
                f" (median fp32 {significant(ref.get('median'), 3)}, "
                f"fp16 {significant(half.get('median'), 3)})"
            )
        elif name == "data" and part["status"] == PASS:
            notes = f"{'built' if part['built'] else 'read'} {part['root']}"
        notes = " ".join(notes.split()).replace("|", "\\|")
        lines.append(f"| {name} | {part['status']} | {ips} | {step} | {mem} | {notes} |")
    lines += ["", f"result: {'PASS' if report['exit_status'] == 0 else 'FAIL'}"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options; bad ones exit with status 2."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the GPU setup")
    parser.add_argument(
        "--data", type=Path, help=f"dataset root (default {DEFAULT_DATA}; built when missing)"
    )
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, ... or cpu")
    parser.add_argument("--dry-run", action="store_true", help="every part at tiny sizes")
    parser.add_argument("--steps", type=int, help="steps per precision (default 300; dry 2)")
    parser.add_argument("--warmup", type=int, help="steps left out of the timing (default 20)")
    parser.add_argument(
        "--amp", nargs="+", choices=list(AMP_NAMES), default=list(AMP_NAMES), help="precisions"
    )
    parser.add_argument("--r1-weight", type=float, default=1.0, help="loss.r1_weight (0 = off)")
    parser.add_argument("--ddp-steps", type=int, help="steps of each torchrun (default 40)")
    parser.add_argument("--no-ddp", action="store_true", help="skip the torchrun parts")
    parser.add_argument("--predict-images", type=int, help="images timed (default 32; dry 4)")
    parser.add_argument("--run-seconds", type=float, default=75.0, help="stepping per run")
    parser.add_argument("--ddp-timeout", type=float, default=90.0, help="seconds per torchrun")
    parser.add_argument("--time-limit", type=float, default=420.0, help="seconds for the check")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override"
    )
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temp folder)")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/gpu_check.json"), help="JSON report"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    args = parser.parse_args(argv)
    for name in ("steps", "ddp_steps", "predict_images"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.warmup is not None and args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    for name in ("run_seconds", "ddp_timeout", "time_limit"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    if not args.r1_weight >= 0:
        parser.error(f"--r1-weight must be >= 0, got {args.r1_weight}")
    if not args.config.is_file():
        parser.error(f"--config {args.config}: no such file")
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError) as exc:
        parser.error(f"--device {args.device!r}: {exc}")
    if device.type not in ("cuda", "cpu"):
        parser.error(f"--device must be cuda[:N] or cpu, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available here; on the CPU run --device cpu --dry-run")
    from medi2i.config import ConfigError, load_config

    try:  # the config and every override, checked before anything runs
        load_config(args.config, run_overrides(args, resolve_sizes(args), "data", args.device))
    except ConfigError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every part, write the JSON report, print the table; returns the exit status."""
    args = parse_args(argv)
    level = (
        logging.DEBUG if args.verbose >= 2 else logging.INFO if args.verbose else logging.WARNING
    )
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from medi2i.utils.log import setup_logging

    setup_logging(args.verbose)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    sizes = resolve_sizes(args)
    clock = Clock(args.time_limit)
    config = args.config.resolve()
    work_given = args.work is not None
    work = args.work.resolve() if work_given else Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "benchmark": "GPU path check",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "gpu": gpu_info(device),
        "settings": {
            "device": str(device),
            "dry_run": args.dry_run,
            "config": str(config),
            "amp": args.amp,
            "r1_weight": args.r1_weight,
            "time_limit_s": args.time_limit,
            "run_seconds": args.run_seconds,
            "ddp_timeout_s": args.ddp_timeout,
            "work": str(work) if work_given else None,
            **asdict(sizes),
        },
    }
    parts: dict[str, dict[str, Any]] = {}
    try:
        run_checks(args, sizes, device, config, work, clock, parts)
    finally:
        if not work_given:
            shutil.rmtree(work, ignore_errors=True)
    report["parts"] = {name: parts[name] for name in PART_ORDER if name in parts}
    report["exit_status"] = exit_status(parts)
    report["wall_s"] = clock.elapsed()
    write_report(args.out, json_safe(report))
    print(markdown(report))
    print(f"-> {args.out}")
    return report["exit_status"]


def run_checks(
    args: argparse.Namespace,
    sizes: Sizes,
    device: torch.device,
    config: Path,
    work: Path,
    clock: Clock,
    parts: dict[str, dict[str, Any]],
) -> None:
    """Run the parts in order into ``parts``; every failure is recorded, none raised."""
    from medi2i.config import load_config

    def done(name: str, part: dict[str, Any]) -> None:
        parts[name] = part
        reason = f" - {part['reason']}" if part.get("reason") else ""
        print(f"{name}: {part['status']}{reason}", flush=True)

    def out_of_time() -> dict[str, Any] | None:
        if clock.left() < MIN_PART_SECONDS:
            return skipped(f"time limit of {args.time_limit:.0f} s reached")
        return None

    try:
        done("data", prepare_data(args, sizes, work))
    except Exception as exc:  # recorded: nothing else can run
        done("data", failed(exc))
        return
    root = parts["data"]["root"]
    cuda = device.type == "cuda"

    trained: dict[str, Path] = {}
    for amp in args.amp:
        name = f"training_{AMP_NAMES[amp]}"
        if amp == "fp16" and not cuda:
            done(name, skipped(NEEDS_CUDA))
            continue
        if (late := out_of_time()) is not None:
            done(name, late)
            continue
        run_dir = work / name
        overrides = run_overrides(args, sizes, root, str(device))
        # quoted: YAML reads a bare off as false
        overrides += [f'train.amp="{amp}"', f"train.steps_per_epoch={sizes.steps}"]
        logger.info("%s: %d steps", name, sizes.steps)
        cutoff = min(time.perf_counter() + args.run_seconds, clock.deadline)
        try:
            done(name, train_part(load_config(config, overrides), run_dir, device, sizes, cutoff))
        except Exception as exc:  # a failed run is a result: keep what it logged
            rows = read_steps(run_dir)
            done(
                name,
                failed(
                    exc,
                    run_dir=str(run_dir),
                    nonfinite_losses=nonfinite_losses(rows)[:20],
                    r1=r1_summary(rows),
                ),
            )
        free_memory(device)
        checkpoints = RunLayout(run_dir).checkpoints
        if checkpoints.is_dir() and any(checkpoints.glob("*.pt")):
            trained[name] = run_dir

    done("r1_fp16", r1_part(parts, args.r1_weight))

    for name, precision in PREDICT_PARTS.items():
        if precision == "fp16" and not cuda:
            done(name, skipped("fp16 needs a GPU"))
        elif (late := out_of_time()) is not None:
            done(name, late)
        elif not trained:
            done(name, skipped("no training run left a checkpoint"))
        else:
            source = trained.get("training_fp32") or next(iter(trained.values()))
            logger.info("%s: %s", name, source.name)
            try:
                done(name, predict_part(source, Path(root), device, sizes, precision))
            except Exception as exc:
                done(name, failed(exc))
            free_memory(device)

    for nproc in (1, 2):
        name = f"ddp_{nproc}"
        if args.no_ddp:
            done(name, skipped("--no-ddp"))
            continue
        visible = torch.cuda.device_count() if cuda else 0
        if cuda and visible < nproc:
            done(name, skipped(f"needs {nproc} CUDA devices ({visible} visible)"))
            continue
        if (late := out_of_time()) is not None:
            done(name, late)
            continue
        overrides = run_overrides(args, sizes, root, "cuda" if cuda else "cpu")
        backend = "nccl" if cuda else "gloo"  # as medi2i.training.distributed chooses
        overrides.append(f"train.steps_per_epoch={sizes.ddp_steps}")
        logger.info("%s: torchrun, %d steps", name, sizes.ddp_steps)
        timeout = max(1.0, min(args.ddp_timeout, clock.left()))
        try:
            done(name, ddp_part(nproc, backend, config, overrides, work / name, sizes, timeout))
        except Exception as exc:
            done(name, failed(exc))


if __name__ == "__main__":
    sys.exit(main())
