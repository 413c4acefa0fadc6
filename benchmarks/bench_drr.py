"""Time the DRR bone-suppression benchmark generator and write the result as JSON.

Usage::

    python benchmarks/bench_drr.py --count 600 --size 256
    python benchmarks/bench_drr.py --count 60 --size 512 --out-json benchmarks/results/drr512.json

The benchmark is written to a temporary folder (deleted afterwards unless ``--keep DIR`` is
given). The reported time covers everything a user waits for: loading the CT, building the
projection volume, rendering, PNG writing, manifest, preview and ``benchmark.json``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import tempfile
import time
from pathlib import Path

from _common import machine_info, write_report
from medi2i.data.drr import DRRSettings, generate_benchmark

logger = logging.getLogger("medi2i.benchmarks.drr")

TARGET_SECONDS_600_AT_256 = 180.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: arguments (default: ``sys.argv[1:]``).

    Returns:
        The parsed options.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=600, help="pairs to generate (600)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (256)")
    parser.add_argument("--seed", type=int, default=0, help="benchmark seed (0)")
    parser.add_argument(
        "--out-json",
        default="benchmarks/results/drr.json",
        help="where to write the timing JSON (benchmarks/results/drr.json)",
    )
    parser.add_argument("--keep", default=None, help="generate into this folder and keep it")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return parser.parse_args(argv)


def run(count: int, size: int, seed: int, out_dir: Path) -> dict[str, object]:
    """Generate one benchmark and time it.

    Args:
        count: number of pairs.
        size: image side in pixels.
        seed: benchmark seed.
        out_dir: output folder (must be new or empty).

    Returns:
        The timing record.
    """
    settings = DRRSettings(size=size, count=count, seed=seed)
    machine = machine_info()  # before the run, which would load the CPU itself
    start = time.perf_counter()
    summary = generate_benchmark(out_dir, settings)
    seconds = time.perf_counter() - start
    record: dict[str, object] = {
        "benchmark": "drr_generation",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "count": count,
        "size": size,
        "seconds": round(seconds, 3),
        "setup_seconds": summary["timing"]["setup_seconds"],
        "pairs_per_second": round(count / seconds, 3),
        "ms_per_pair_excluding_setup": round(
            1000.0 * (seconds - summary["timing"]["setup_seconds"]) / count, 2
        ),
        "machine": machine,
        "medi2i_version": summary["medi2i_version"],
        "settings": summary["settings"],
    }
    if count == 600 and size == 256:
        record["target_seconds"] = TARGET_SECONDS_600_AT_256
        record["meets_target"] = seconds <= TARGET_SECONDS_600_AT_256
    return record


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its JSON; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    if args.keep:
        record = run(args.count, args.size, args.seed, Path(args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="medi2i-bench-drr-") as tmp:
            record = run(args.count, args.size, args.seed, Path(tmp) / "bench")
    out_json = Path(args.out_json)
    write_report(out_json, record)
    print(
        f"{record['count']} pairs of {record['size']}x{record['size']} in "
        f"{record['seconds']:.1f} s ({record['pairs_per_second']:.2f} pairs/s) -> {out_json}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
