"""The training step against the machine's limit: FLOPs, achieved GFLOP/s, overheads, data.

For each mode (G, G+R, G+D, G+R+D) of the base config (``configs/demo.yaml``: the demo's crop,
batch and networks) a real :class:`~medi2i.training.trainer.Trainer` is built on the benchmark's
training split and its ``train_step`` timed on batches loaded beforehand (``--steps`` timed
rounds after ``--warmup``, medians). Measured in the same run:

* **the machine's fp32 matmul GFLOP/s** (``torch.mm`` of 1024x1024 matrices, the same
  threads, timed in every round);
* **FLOPs per image** of each mode's step (``torch.utils.flop_counter``: the convolutions and
  matrix products of the whole step, forward and backward; element-wise work such as the warp,
  the losses' filters and the fitted R's updates is not counted) and the GFLOP/s the step
  achieves, as a share of the matmul figure (the roofline);
* **the share of step time outside the networks**: one minus the time of a bare step that only
  runs the mode's network passes forward and backward on the same batch (G; R's field and the
  warp; D on real and fake for D's update, then D on G's output - and on the warped output for
  feature matching - for G's), relative to medi2i's step (losses' extra work, clipping and its
  statistics, gradient shares, the finite check, optimisers, EMA, Python);
* **the cost of the method**: each mode's step time over G's, and over a whole run of the base
  config's phases (the demo trains G+R for three quarters of the run and G+R+D for the last
  quarter, so a run's training steps cost the phases' epoch-weighted mean of their modes' ratios);
* **a plain reference**: the same G and D trained by a minimal pix2pix loop written here (L1 +
  LSGAN, conditional D, Adam, no EMA, no R, no statistics); medi2i's G+D step over it;
* **the data pipeline**: training images per second the loader delivers with the config's
  worker count, over what the G+R+D step consumes;
* **an option's effect** (``--variant K=V``, repeatable): each mode's step is also built with
  those overrides and timed in the same rounds; its time over the base step's (an A/B that
  survives the machine's drift, e.g. ``--variant train.amp=bf16``).

Timings are interleaved: every timed thing (each mode's step, its bare step, the reference, the
matmul) runs once per round, in an order rotated each round, and each ratio (a mode over G, a
step over its bare step, GFLOP/s over the matmul rate) is the median of its per-round ratios. A
machine whose speed drifts by tens of percent over minutes (shared or throttled CPUs) then moves
both sides of a ratio alike. Take the timings with no other load on the machine all the same
(``load_average_1min_at_start`` in the JSON says how quiet it was). Usage::

    python benchmarks/bench_step.py                      # about 2 minutes on 2 cores
    python benchmarks/bench_step.py --quick              # tiny crops, a few steps: seconds
    python benchmarks/bench_step.py --set data.crop_size=256 --out benchmarks/results/s256.json
    python benchmarks/bench_step.py --modes G G+R+D --variant train.amp=bf16
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
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
from medi2i.training.phases import Phase, plan_phases
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
MATMUL_REPEATS = 4


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved_seconds(
    fns: dict[str, Callable[[], Any]], warmup: int, rounds: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds of each callable, once per round, in an order rotated every round.

    Round ``r`` starts at the ``r``-th callable (modulo their number), so none always runs
    first or after the same neighbour, and a slow drift of the machine's speed reaches every
    callable's round-``r`` time alike: ratios are best taken round by round
    (:func:`median_ratio`).
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(_timed(fns[name], device))
    return times


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median of the round-by-round ratios of two interleaved series."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def _matmul(device: torch.device) -> tuple[Callable[[], Any], float]:
    """A callable of ``MATMUL_REPEATS`` fp32 matrix products and their FLOPs."""
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device)

    def run() -> None:
        for _ in range(MATMUL_REPEATS):
            torch.mm(a, b)

    return run, 2.0 * MATMUL_SIZE**3 * MATMUL_REPEATS


def _batches(trainer: Trainer, count: int) -> list[dict]:
    batches, loader = [], iter(trainer.train_loader)
    while len(batches) < count:
        try:
            batches.append(next(loader))
        except StopIteration:
            loader = iter(trainer.train_loader)
    return batches


def _bare_step(trainer: Trainer, batch: dict) -> Callable[[], None]:
    """The mode's network passes forward and backward on ``batch``, nothing else.

    The passes are the training step's: G; R's field and the warp; with D, D's update pass on
    the target and G's output (detached), then G's pass through a frozen D on G's output - and
    on the warped output when feature matching compares D's features in the target's frame.
    """
    device = trainer.device
    x, y, mask = (batch[k].to(device) for k in ("input", "target", "mask"))
    g, d = trainer.G, trainer.D
    nets = [g] + ([d] if d is not None else [])
    fm_in_target_frame = (
        trainer.R is not None
        and not trainer.d_in_target_frame
        and trainer.cfg.loss.feat_match_weight > 0
    )

    def d_score(images: list[torch.Tensor]) -> torch.Tensor:
        cond = torch.cat([x] * len(images)) if trainer.d_conditional else None
        return sum(logits.square().mean() for logits, _ in d(torch.cat(images), cond))

    def step() -> None:
        for net in nets:
            net.zero_grad(set_to_none=True)
        y_hat = g(x)
        pred = y_hat
        if trainer.R is not None:
            # a fitted R registers a detached copy; a learnt R reads G's output with its graph
            fitted = not trainer.r_learnt
            pred = warp(
                y_hat, trainer.R(y_hat.detach(), y, mask) if fitted else trainer.R(y_hat, y)
            )
        loss = (pred - y).abs().mean()
        if d is not None:
            judged = pred if trainer.d_in_target_frame else y_hat
            d_score([y, judged.detach()]).backward()
            d.requires_grad_(False).eval()  # as the G step calls it: no power iteration
            loss = loss + d_score([judged, pred] if fm_in_target_frame else [judged])
            d.requires_grad_(True).train()
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


def prepare_mode(
    name: str, overrides: list[str], args: argparse.Namespace, run_root: Path
) -> tuple[Trainer, dict[str, int], dict[str, Callable[[], Any]]]:
    """One mode's trainer, its images and FLOPs per step, and what the benchmark times of it:
    ``step`` (medi2i's training step, on the next of the batches loaded beforehand), ``bare``
    (:func:`_bare_step`) and, for G+D, ``reference`` (:func:`_reference_step`)."""
    cfg = load_config(args.config, [*overrides, *MODES[name]])
    trainer = Trainer(cfg, run_root / name, DistContext())
    batches = _batches(trainer, args.warmup + args.steps + 1)
    counter = FlopCounterMode(display=False)
    with counter:
        trainer.train_step(batches[0])
    queue = itertools.cycle(batches[1:])
    fns = {"step": lambda: trainer.train_step(next(queue)), "bare": _bare_step(trainer, batches[0])}
    if name == "G+D":
        fns["reference"] = _reference_step(trainer, batches[0])
    info = {"images": batches[0]["input"].shape[0], "flops": counter.get_total_flops()}
    return trainer, info, fns


def summarise_mode(
    name: str, info: dict[str, int], times: dict[str, list[float]], matmul_flops: float
) -> dict[str, Any]:
    """A mode's figures from the interleaved times; every ratio is a median of per-round ones."""
    step, bare = times[f"{name}/step"], times[f"{name}/bare"]
    step_s, flops, images = statistics.median(step), info["flops"], info["images"]
    result: dict[str, Any] = {
        "images_per_step": images,
        "step_seconds_median": step_s,
        "step_seconds": step,
        "images_per_second": images / step_s,
        "gflop_per_image": flops / images / 1e9,
        "achieved_gflops": flops / step_s / 1e9,
        # the step's GFLOP/s over the matmul's of the same round
        "roofline_share": median_ratio(times["matmul"], step) * flops / matmul_flops,
        "bare_network_step_seconds": statistics.median(bare),
        "outside_networks_share": max(0.0, 1.0 - median_ratio(bare, step)),
    }
    if "G/step" in times:
        result["step_over_G"] = median_ratio(step, times["G/step"])
    if f"{name}/variant" in times:
        result["variant_step_seconds_median"] = statistics.median(times[f"{name}/variant"])
        result["variant_over_step"] = median_ratio(times[f"{name}/variant"], step)
    if f"{name}/reference" in times:
        result["pix2pix_reference_step_seconds"] = statistics.median(times[f"{name}/reference"])
        result["ratio_to_pix2pix_reference"] = median_ratio(step, times[f"{name}/reference"])
    return result


def schedule_cost(modes: dict[str, dict], phases: tuple[Phase, ...]) -> dict[str, Any] | None:
    """A run's training-step time over G's when it trains in ``phases``.

    Every epoch has the same number of steps, so the run's ratio is the mean of its phases'
    mode ratios (``step_over_G``) weighted by their epochs. None when a phase's mode was not
    measured.
    """
    parts, ratio = [], 0.0
    total = sum(phase.end - phase.start for phase in phases)
    for phase in phases:
        name = "+".join(n for n in ("G", "R", "D") if n in phase)
        if "step_over_G" not in modes.get(name, {}):
            return None
        share = (phase.end - phase.start) / total
        ratio += share * modes[name]["step_over_G"]
        parts.append({"mode": name, "epochs": [phase.start + 1, phase.end], "share": share})
    return {"phases": parts, "step_over_G": ratio}


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
    parser.add_argument(
        "--steps", type=int, default=10, help="timed rounds: one step of each mode per round"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument(
        "--variant",
        dest="variant",
        action="append",
        default=[],
        metavar="K=V",
        help="also time each mode's step with these overrides, in the same rounds (A/B)",
    )
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
        "variant": args.variant,
        "modes": {},
    }
    matmul, matmul_flops = _matmul(device)
    fns: dict[str, Callable[[], Any]] = {"matmul": matmul}
    with tempfile.TemporaryDirectory(prefix="bench_step_") as tmp:
        prepared = {}
        for name in args.modes:
            logger.info("mode %s: building", name)
            trainer, info, mode_fns = prepare_mode(name, overrides, args, Path(tmp))
            prepared[name] = (trainer, info)
            fns.update({f"{name}/{part}": fn for part, fn in mode_fns.items()})
            if args.variant:
                logger.info("mode %s: building the variant %s", name, " ".join(args.variant))
                other, other_info, other_fns = prepare_mode(
                    name, [*overrides, *args.variant], args, Path(tmp) / "variant"
                )
                prepared[f"{name}/variant"] = (other, other_info)
                fns[f"{name}/variant"] = other_fns["step"]
        logger.info("timing %d rounds of %s", args.steps, ", ".join(fns))
        times = interleaved_seconds(fns, args.warmup, args.steps, device)
        for name, (trainer, info) in prepared.items():
            if name.endswith("/variant"):
                mode = report["modes"][name.split("/")[0]]
                mode["variant_images_per_step"] = info["images"]
            else:
                report["modes"][name] = summarise_mode(name, info, times, matmul_flops)
            trainer.logger.close()
        report["data"] = measure_data(args, overrides, Path(tmp))
    report["matmul_gflops"] = matmul_flops / statistics.median(times["matmul"]) / 1e9
    modes = report["modes"]
    # the phases as the base config plans them: the same overrides, without COMMON's
    # phases=null that lets every timed step train every network
    base = load_config(args.config, [f"data.root={args.data}", *args.overrides])
    report["schedule"] = schedule_cost(modes, plan_phases(base))
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
    if report.get("variant"):
        variant = " ".join(report["variant"])
        lines.append("")
        for name, m in report["modes"].items():
            lines.append(
                f"{name} with {variant}: {m['variant_step_seconds_median']:.3f} s/step, "
                f"{m['variant_over_step']:.2f} x the base step"
            )
    gd = report["modes"].get("G+D", {})
    if "ratio_to_pix2pix_reference" in gd:
        lines.append(
            f"\nG+D step / minimal pix2pix step (same G and D): "
            f"{gd['ratio_to_pix2pix_reference']:.2f}"
        )
    schedule = report.get("schedule")
    if schedule and len(schedule["phases"]) > 1:
        plan = ", ".join(
            f"{p['mode']} epochs {p['epochs'][0]}-{p['epochs'][1]}" for p in schedule["phases"]
        )
        lines.append(f"a run of the config's phases ({plan}): {schedule['step_over_G']:.2f} x G")
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
