"""The training step against the machine's limit: FLOPs, achieved GFLOP/s, overheads, data.

For each mode (G, G+R, G+D, G+R+D) of the base config (``configs/demo.yaml``: the demo's crop,
batch and networks) a real :class:`~medi2i.training.trainer.Trainer` is built on the benchmark's
training split and its ``train_step`` timed on batches loaded beforehand (median of ``--steps``
after ``--warmup``). Measured in the same run:

* **the machine's fp32 matmul GFLOP/s** (``torch.mm`` of 1024x1024 matrices, the same threads);
* **FLOPs per image** of each mode's step (``torch.utils.flop_counter``: the convolutions and
  matrix products of the whole step, forward and backward; element-wise work such as the warp,
  the losses' filters and the fitted R's updates is not counted) and the GFLOP/s the step
  achieves, as a share of the matmul figure (the roofline);
* **the share of step time outside the networks**: one minus the time of a bare step that only
  runs the same networks forward and backward on the same batch (G; R's field and the warp; D
  on real and fake), relative to medi2i's step (losses' extra work, clipping and its statistics,
  gradient shares, the finite check, optimisers, EMA, Python);
* **the cost of the method**: each mode's step time over G's;
* **a plain reference**: the same G and D trained by a minimal pix2pix loop written here (L1 +
  LSGAN, conditional D, Adam, no EMA, no R, no statistics); medi2i's G+D step over it;
* **the data pipeline**: training images per second the loader delivers with the config's
  worker count, over what the G+R+D step consumes.

Timings are taken with no other load on the machine (``load_average_1min_at_start`` in the
JSON says how quiet it was). Usage::

    python benchmarks/bench_step.py                      # ~4 minutes on 2 cores
    python benchmarks/bench_step.py --quick              # tiny crops, a few steps: seconds
    python benchmarks/bench_step.py --set data.crop_size=256 --out benchmarks/results/s256.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from _common import machine_info, sync, write_report
from medi2i.config import load_config
from medi2i.models import build_discriminator, build_generator, warp
from medi2i.training.distributed import DistContext
from medi2i.training.trainer import Trainer
from medi2i.utils.log import setup_logging

logger = logging.getLogger("bench_step")

REPO = Path(__file__).resolve().parent.parent

MODES: dict[str, tuple[str, ...]] = {
    "G": ("model.R.enabled=false", "model.D.enabled=false"),
    "G+R": ("model.D.enabled=false",),
    "G+D": ("model.R.enabled=false",),
    "G+R+D": (),
}
"""Overrides that make each mode from the base config (G+R+D)."""

# Every network of a mode trains in every timed step: the base config's phases (the demo's D
# joins late) would leave D out of the first epoch's steps.
COMMON = (
    "logging.tensorboard=false",
    "logging.progress=false",
    "eval.test_at_end=false",
    "train.phases=null",
)
QUICK = ("data.crop_size=32", "data.batch_size=2")

MATMUL_SIZE = 1024


def _median_seconds(fn: Callable[[], Any], warmup: int, repeats: int, device) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def matmul_gflops(device: torch.device, repeats: int = 10) -> float:
    """The machine's fp32 matrix-multiply rate with the current threads (median, GFLOP/s)."""
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device)
    seconds = statistics.median(_median_seconds(lambda: a @ b, 3, repeats, device))
    return 2 * MATMUL_SIZE**3 / seconds / 1e9


def _batches(trainer: Trainer, count: int) -> list[dict]:
    batches, loader = [], iter(trainer.train_loader)
    while len(batches) < count:
        try:
            batches.append(next(loader))
        except StopIteration:
            loader = iter(trainer.train_loader)
    return batches


def _bare_step(trainer: Trainer, batch: dict) -> Callable[[], None]:
    """The mode's networks forward and backward on ``batch``, nothing else."""
    device = trainer.device
    x, y, mask = (batch[k].to(device) for k in ("input", "target", "mask"))
    nets = [trainer.G] + ([trainer.D] if trainer.D is not None else [])

    def step() -> None:
        for net in nets:
            net.zero_grad(set_to_none=True)
        y_hat = trainer.G(x)
        pred = y_hat
        if trainer.R is not None:
            field = trainer.R(y_hat, y) if trainer.r_learnt else trainer.R(y_hat.detach(), y, mask)
            pred = warp(y_hat, field)
        loss = (pred - y).abs().mean()
        if trainer.D is not None:
            cond = torch.cat([x, x]) if trainer.d_conditional else None
            for logits, _ in trainer.D(torch.cat([y, y_hat]), cond):
                loss = loss + logits.square().mean()
        loss.backward()

    return step


def _reference_step(trainer: Trainer, batch: dict) -> Callable[[], None]:
    """A minimal pix2pix step with fresh copies of the mode's G and D architectures."""
    cfg, device = trainer.cfg, trainer.device
    lo, hi = cfg.data.normalization.output_range
    g = build_generator(cfg.model.G, output_range=(lo, hi)).to(device)
    d = build_discriminator(cfg.model.D, conditional=True).to(device)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    x, y = batch["input"].to(device), batch["target"].to(device)

    def step() -> None:
        fake = g(x)
        opt_d.zero_grad(set_to_none=True)
        d_loss = sum(
            (r - 1).square().mean() + f.square().mean()
            for (r, _), (f, _) in zip(d(y, x), d(fake.detach(), x))
        )
        d_loss.backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        d.requires_grad_(False)
        g_loss = 100 * F.l1_loss(fake, y) + sum((f - 1).square().mean() for f, _ in d(fake, x))
        g_loss.backward()
        d.requires_grad_(True)
        opt_g.step()

    return step


def measure_mode(
    name: str, overrides: list[str], args: argparse.Namespace, run_root: Path
) -> dict[str, Any]:
    """Step time, FLOPs, overhead and (for G+D) the pix2pix reference of one mode."""
    cfg = load_config(args.config, [*overrides, *MODES[name]])
    trainer = Trainer(cfg, run_root / name, DistContext())
    batches = _batches(trainer, args.warmup + args.steps + 1)
    images = batches[0]["input"].shape[0]
    counter = FlopCounterMode(display=False)
    with counter:
        trainer.train_step(batches[0])
    flops = counter.get_total_flops()
    queue = iter(batches[1:])
    times = _median_seconds(
        lambda: trainer.train_step(next(queue)), args.warmup, args.steps, trainer.device
    )
    step_s = statistics.median(times)
    bare_s = statistics.median(
        _median_seconds(_bare_step(trainer, batches[0]), 2, args.steps, trainer.device)
    )
    result: dict[str, Any] = {
        "images_per_step": images,
        "step_seconds_median": step_s,
        "step_seconds": times,
        "images_per_second": images / step_s,
        "gflop_per_image": flops / images / 1e9,
        "achieved_gflops": flops / step_s / 1e9,
        "bare_network_step_seconds": bare_s,
        "outside_networks_share": max(0.0, 1.0 - bare_s / step_s),
    }
    if name == "G+D":
        ref = statistics.median(
            _median_seconds(_reference_step(trainer, batches[0]), 2, args.steps, trainer.device)
        )
        result["pix2pix_reference_step_seconds"] = ref
        result["ratio_to_pix2pix_reference"] = step_s / ref
    trainer.logger.close()
    return result


def measure_data(args: argparse.Namespace, overrides: list[str], run_root: Path) -> dict:
    """Training images per second the loader delivers with the config's workers."""
    cfg = load_config(args.config, [*overrides, *MODES["G"]])
    trainer = Trainer(cfg, run_root / "data", DistContext())
    loader = iter(trainer.train_loader)
    next(loader)  # workers started, first batch out
    count, start = 0, time.perf_counter()
    for _ in range(args.steps * 2):
        try:
            batch = next(loader)
        except StopIteration:
            loader = iter(trainer.train_loader)
            batch = next(loader)
        count += batch["input"].shape[0]
    seconds = time.perf_counter() - start
    trainer.logger.close()
    return {
        "num_workers": cfg.data.num_workers,
        "images": count,
        "images_per_second": count / seconds,
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print a table and write the JSON report.

    Returns:
        The report.
    """
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--data", default=str(REPO / "runs" / "benchmark"), help="data.root")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--quick", action="store_true", help="tiny crops and batches")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default all)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/step.json")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [*COMMON, f"data.root={args.data}", *(QUICK if args.quick else ()), *args.overrides]
    device = torch.device("cpu")
    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "training step",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "config": args.config,
        "overrides": overrides,
        "steps": args.steps,
        "warmup": args.warmup,
        "matmul_gflops": matmul_gflops(device),
        "modes": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench_step_") as tmp:
        for name in args.modes:
            logger.info("mode %s", name)
            report["modes"][name] = measure_mode(name, overrides, args, Path(tmp))
        report["data"] = measure_data(args, overrides, Path(tmp))
    modes = report["modes"]
    if "G" in modes:
        for result in modes.values():
            result["step_over_G"] = (
                result["step_seconds_median"] / modes["G"]["step_seconds_median"]
            )
    for result in modes.values():
        result["roofline_share"] = result["achieved_gflops"] / report["matmul_gflops"]
    if "G+R+D" in modes:
        report["data"]["over_training_consumption"] = (
            report["data"]["images_per_second"] / modes["G+R+D"]["images_per_second"]
        )
    report["seconds"] = time.perf_counter() - started
    write_report(args.out, report)
    print(format_table(report))
    print(f"-> {args.out}")
    return report


def format_table(report: dict) -> str:
    """The report as a Markdown table."""
    lines = [
        f"matmul fp32: {report['matmul_gflops']:.1f} GFLOP/s "
        f"({report['machine'].get('torch_threads')} threads)",
        "",
        "| mode | s/step | img/s | GFLOP/img | GFLOP/s | roofline | outside nets | x G |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in report["modes"].items():
        over_g = m.get("step_over_G")
        lines.append(
            f"| {name} | {m['step_seconds_median']:.3f} | {m['images_per_second']:.2f} | "
            f"{m['gflop_per_image']:.2f} | {m['achieved_gflops']:.1f} | "
            f"{100 * m['roofline_share']:.0f}% | {100 * m['outside_networks_share']:.0f}% | "
            f"{'' if over_g is None else f'{over_g:.2f}'} |"
        )
    gd = report["modes"].get("G+D", {})
    if "ratio_to_pix2pix_reference" in gd:
        lines.append(
            f"\nG+D step / minimal pix2pix step (same G and D): "
            f"{gd['ratio_to_pix2pix_reference']:.2f}"
        )
    data = report.get("data", {})
    if data:
        extra = data.get("over_training_consumption")
        lines.append(
            f"data: {data['images_per_second']:.1f} img/s with {data['num_workers']} worker(s)"
            + ("" if extra is None else f", {extra:.1f}x what G+R+D consumes")
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
