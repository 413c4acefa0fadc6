"""Inference speed: ``medi2i predict``'s start-up and per-image time, at 256 px and 2048 px tiled.

Each setting runs in a fresh process (:func:`_common.predict_probe`) that imports medi2i,
loads the run and predicts ``--repeats`` images of the split (resized to the size when they
differ) through :class:`medi2i.Predictor`, as ``medi2i predict`` does: intensity check,
normalisation, G (in tiles of at most 1024 px, the default, above that size), mapping back.
Reported per setting: import and load seconds (the start-up), the first call (it pays one-off
allocations) and the median of the following calls (the per-image time), images/s, and the
process's peak resident memory. Settings: each ``--sizes`` side without TTA in each
``--precisions`` (``bf16`` runs G's convolutions in bfloat16: about half the time on a CPU with
native bfloat16), and with the ``--tta`` set in the first precision.

A last row times the command a user types, ``medi2i predict --run RUN --input FILE --output
DIR``, as a whole (process start to exit, one 256 px image): what a first try costs.

Goals on a 2-core CPU: at most 0.15 s per 256 x 256 image after start-up, at most 4 s for a
2048 x 2048 image (no TTA). JSON to ``benchmarks/results/predict.json``.

Usage::

    python benchmarks/bench_predict.py --run RUN [--data runs/benchmark] [--repeats 10]
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from _common import machine_info, predict_probe, write_report
from medi2i.inference.tiling import DEFAULT_TILE
from medi2i.inference.tta import DEFAULT_TTA

logger = logging.getLogger("bench_predict")

#: Seconds per image the issue of speed sets as goals on this CPU, by image side (no TTA).
GOALS_S = {256: 0.15, 2048: 4.0}


def summarise(
    probe: dict[str, Any], *, size: int, tta: str, precision: str = "fp32"
) -> dict[str, Any]:
    """One setting's row: start-up, first call, median per image, images/s, memory."""
    seconds = probe["seconds"]
    steady = seconds[1:] or seconds
    per_image = statistics.median(steady)
    row = {
        "size": size,
        "tta": tta or "none",
        "precision": precision,
        "import_s": round(probe["import_s"], 3),
        "load_s": round(probe["load_s"], 3),
        "first_call_s": round(seconds[0], 4),
        "per_image_s": round(per_image, 4),
        "per_image_spread_s": [round(min(steady), 4), round(max(steady), 4)],
        "images_per_s": round(1.0 / per_image, 2) if per_image > 0 else None,
        "calls": len(seconds),
        "peak_rss_mb": round(probe["peak_rss_mb"], 1),
        "finite": probe["finite"],
        "threads": probe["threads"],
    }
    goal = GOALS_S.get(size) if not tta else None
    if goal is not None:
        row["goal_s"] = goal
        row["goal_met"] = per_image <= goal
    return row


def cli_wall(run: Path, source: Path) -> float:
    """Seconds of one ``medi2i predict`` command, process start to exit."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "medi2i", "predict", "--run", str(run)]
        cmd += ["--input", str(source), "--output", out, "--no-progress"]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"medi2i predict failed:\n{done.stderr}")
    return seconds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--run", type=Path, required=True, help="run directory or checkpoint")
    parser.add_argument("--data", type=Path, default=Path("runs/benchmark"), help="images")
    parser.add_argument("--split", default="test")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 2048])
    parser.add_argument("--repeats", type=int, default=10, help="calls per setting at 256 px")
    parser.add_argument(
        "--large-repeats", type=int, default=3, help="calls per setting above 1024 px"
    )
    parser.add_argument("--tta", default=",".join(DEFAULT_TTA), help="TTA set ('' = skip)")
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=["fp32", "bf16"],
        default=["fp32", "bf16"],
        help="G's precisions timed without TTA (TTA in the first)",
    )
    parser.add_argument("--no-cli", action="store_true", help="skip the whole-command timing")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/predict.json"))
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    folder = args.data / args.split / "input"
    sources = sorted(p for p in folder.glob("*") if p.is_file())
    if not sources:
        raise SystemExit(f"bench_predict: no images in {folder}")
    rows = []
    for size in args.sizes:
        repeats = args.repeats if size <= 1024 else args.large_repeats
        settings = [("", precision) for precision in args.precisions]
        if args.tta:
            settings.append((args.tta, args.precisions[0]))
        for tta, precision in settings:
            probe = predict_probe(
                args.run,
                sources[:repeats],
                size=size,
                tile=DEFAULT_TILE,
                tta=tta,
                repeats=repeats,
                precision=precision,
            )
            rows.append(summarise(probe, size=size, tta=tta, precision=precision))
            logger.warning("%s", rows[-1])
    report: dict[str, Any] = {
        "benchmark": "predict",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/bench_predict.py", *(argv or sys.argv[1:])]),
        "machine": machine_info(torch.device("cpu")),
        "run": str(args.run),
        "settings": rows,
    }
    if not args.no_cli:
        report["cli_one_image_s"] = round(cli_wall(args.run, sources[0]), 2)
    write_report(args.out, report)
    for row in rows:
        start_up = row["import_s"] + row["load_s"]
        line = (
            f"{row['size']:>5} px {row['precision']} tta {row['tta']:<15} start-up "
            f"{start_up:.2f} s | first "
            f"{row['first_call_s']:.3f} s | per image {row['per_image_s']:.3f} s "
            f"({row['images_per_s']} img/s) | peak {row['peak_rss_mb']:.0f} MB"
        )
        if "goal_s" in row:
            line += f" | goal {row['goal_s']} s: {'met' if row['goal_met'] else 'MISSED'}"
        print(line)
    if "cli_one_image_s" in report:
        print(f"medi2i predict, one 256 px image, whole command: {report['cli_one_image_s']} s")
    print(f"-> {args.out}")
    return report


if __name__ == "__main__":
    main()
