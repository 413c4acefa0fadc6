"""Forward + backward time of G + R + D (one training-like step without the optimiser).

One iteration: ``y_hat = G(x)``, ``field = R(y_hat, y)``, ``warp(y_hat, field)`` vs ``y`` (L1),
``D`` on the fake and on the real image (all scales, logits and features), then one backward of
the summed loss through all three networks. D is unconditional, as with R on by default.
Also timed: G alone (forward + backward). The median over ``--iters`` iterations after
``--warmup`` is reported, in seconds per iteration.

Usage::

    python benchmarks/bench_models.py --size 256 --batch 4 --iters 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from _common import machine_info, sync, write_report
from medi2i.config import DiscriminatorConfig, GeneratorConfig, RegistrationConfig
from medi2i.models import (
    build_discriminator,
    build_generator,
    build_registration,
    count_parameters,
    warp,
)

logger = logging.getLogger("bench_models")


def _time(
    steps: dict[str, Callable[[], None]], warmup: int, iters: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds of each step per iteration; steps alternate so that load affects all alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(iters):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print a one-line result and write the JSON report.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The report written to ``--out-json``.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="square image side (px)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iters", type=int, default=5, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    parser.add_argument("--preset", choices=["small", "large"], default="small", help="G preset")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out-json", type=Path, default=Path("benchmarks/results/models.json"), help="report"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    g = build_generator(GeneratorConfig(preset=args.preset)).to(device).train()
    r = build_registration(RegistrationConfig(enabled=True)).to(device).train()
    d = build_discriminator(DiscriminatorConfig(enabled=True), conditional=False).to(device)
    d.train()
    x = torch.rand(args.batch, 1, args.size, args.size, device=device)
    y = torch.rand(args.batch, 1, args.size, args.size, device=device)

    def full_step() -> None:
        for net in (g, r, d):
            net.zero_grad(set_to_none=True)
        y_hat = g(x)
        loss = (warp(y_hat, r(y_hat, y)) - y).abs().mean()
        for logits, features in d(y_hat) + d(y):
            loss = loss + logits.square().mean() + sum(f.abs().mean() for f in features)
        loss.backward()

    def g_step() -> None:
        g.zero_grad(set_to_none=True)
        (g(x) - y).abs().mean().backward()

    times = _time({"G+R+D": full_step, "G": g_step}, args.warmup, args.iters, device)
    report = {
        "benchmark": "models forward+backward",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "size": args.size,
        "batch": args.batch,
        "warmup": args.warmup,
        "iters": args.iters,
        "g_preset": args.preset,
        "params": {
            "G": count_parameters(g),
            "R": count_parameters(r),
            "D": count_parameters(d),
        },
        "seconds_per_iter": {name: statistics.median(t) for name, t in times.items()},
        "all_seconds": times,
    }
    write_report(args.out_json, report)
    print(
        f"G({args.preset})+R+D forward+backward, {args.batch}x1x{args.size}x{args.size} on "
        f"{device}: {report['seconds_per_iter']['G+R+D']:.3f} s/iter "
        f"(G alone {report['seconds_per_iter']['G']:.3f} s/iter) -> {args.out_json}"
    )
    return report


if __name__ == "__main__":
    main()
