"""Tiled against whole-image prediction: agreement, accuracy, and the memory that tiling bounds.

Agreement and accuracy: every one of the first ``--images`` images of a split (normalised, as
``medi2i evaluate`` feeds them) is predicted whole and in tiles of each ``--tiles`` size with
``--overlap``; each tiling's mean and largest absolute difference to the whole-image
prediction (in units of the data range) and its lung PSNR / HFEN against the reference are
reported, with the paired difference to whole-image prediction. G's GroupNorm statistics are
taken over the extent G is given, so the two are expected to differ; this measures by how much
and which is closer to the truth.

Memory: for each ``--memory-size`` (a side in px), a fresh process predicts one image of that
size (a test input resized, in its stored units, through :class:`medi2i.Predictor` as
``medi2i predict`` does) with the default tile and, with ``--memory-whole``, whole; its peak
resident memory and seconds are reported.

Usage::

    python benchmarks/bench_tiling.py --run RUN --data runs/benchmark --split val --images 16
    python benchmarks/bench_tiling.py --run RUN --images 0 --memory-size 2048 4096
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
from pathlib import Path

import numpy as np
import torch

from _common import load_run_split, machine_info, predict_probe, write_report
from medi2i.inference import Predictor
from medi2i.inference.tiling import DEFAULT_TILE
from medi2i.metrics import compute_metrics, reference_key

logger = logging.getLogger("bench_tiling")

METRICS = ("psnr", "hfen")


def agreement(args: argparse.Namespace, device: torch.device) -> dict:
    """Whole-image against tiled predictions of the split's first images."""
    loaded, dataset, data_range = load_run_split(
        args.run, args.data, args.split, weights=args.weights, device=device
    )
    n = min(args.images, len(dataset))
    settings = {"whole": None, **{f"tile {t}": t for t in args.tiles}}
    predictors = {
        name: Predictor(loaded, tile=tile, overlap=args.overlap, batch_size=4, device=device)
        for name, tile in settings.items()
    }
    scores: dict[str, dict[str, list[float]]] = {name: {} for name in settings}
    gaps: dict[str, dict[str, list[float]]] = {name: {"mean": [], "max": []} for name in settings}
    reference = None
    for index in range(n):
        item = dataset[index]
        reference = reference or reference_key(item)
        x, ref, mask = item["input"][None], item[reference][None], item["mask"][None]
        preds = {name: p.predict_normalised(x).cpu() for name, p in predictors.items()}
        for name, pred in preds.items():
            values = compute_metrics(pred, ref, data_range=data_range, mask=mask, include=METRICS)
            for key, value in values.items():
                scores[name].setdefault(key, []).append(float(value[0]))
            gap = (pred - preds["whole"]).abs() / data_range
            gaps[name]["mean"].append(float(gap.mean()))
            gaps[name]["max"].append(float(gap.max()))
        logger.warning("image %d/%d done", index + 1, n)
    rows = {}
    for name in settings:
        diff = {
            key: float(np.mean(np.asarray(scores[name][key]) - np.asarray(scores["whole"][key])))
            for key in scores[name]
        }
        rows[name] = {
            "tile": settings[name],
            "overlap": args.overlap if settings[name] else None,
            "metrics": {key: float(np.mean(v)) for key, v in scores[name].items()},
            "diff_vs_whole": diff,
            "lung_psnr_improved": int(
                np.sum(
                    np.asarray(scores[name]["psnr_mask"]) > np.asarray(scores["whole"]["psnr_mask"])
                )
            ),
            "mean_abs_gap_to_whole": float(np.mean(gaps[name]["mean"])),
            "max_abs_gap_to_whole": float(np.max(gaps[name]["max"])),
        }
    return {
        "run": str(loaded.checkpoint),
        "split": args.split,
        "images": n,
        "image_shape": list(dataset[0]["input"].shape[-2:]) if n else None,
        "reference": reference,
        "gap_units": "fraction of the data range",
        "settings": rows,
    }


def memory(args: argparse.Namespace) -> list[dict]:
    """Peak memory and time of one large image, each setting in a fresh process."""
    source = sorted((Path(args.data) / args.split / "input").glob("*"))[0]
    results = []
    for size in args.memory_size:
        for tile in [DEFAULT_TILE] + ([0] if args.memory_whole else []):
            probe = predict_probe(args.run, [source], size=size, tile=tile)
            result = {
                "seconds": probe["seconds"][0],
                "peak_rss_mb": probe["peak_rss_mb"],
                "finite": probe["finite"],
                "size": size,
                "tile": tile or None,
            }
            results.append(result)
            logger.warning("memory %s", result)
    return results


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print a table and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run directory or checkpoint")
    parser.add_argument("--data", default="runs/benchmark", help="dataset root (folder layout)")
    parser.add_argument("--split", default="val", help="validation: tiling is a choice")
    parser.add_argument("--images", type=int, default=16, help="first N images; 0 = skip")
    parser.add_argument("--tiles", type=int, nargs="+", default=[128, 192])
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--memory-size", type=int, nargs="*", default=[], help="sides (px)")
    parser.add_argument("--memory-whole", action="store_true", help="also whole (slow, big)")
    parser.add_argument("--weights", choices=["ema", "online"], default="ema")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out-json", type=Path, default=Path("benchmarks/results/tiling.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    report: dict = {
        "benchmark": "tiled vs whole-image prediction",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "default_tile": DEFAULT_TILE,
    }
    if args.images > 0:
        report["agreement"] = agreement(args, device)
        print(
            f"{'setting':12s} {'lung PSNR':>9s} {'d vs whole':>10s} {'lung HFEN':>9s} "
            f"{'mean gap':>9s} {'max gap':>8s} {'improved':>8s}"
        )
        for name, row in report["agreement"]["settings"].items():
            print(
                f"{name:12s} {row['metrics']['psnr_mask']:9.2f} "
                f"{row['diff_vs_whole']['psnr_mask']:+10.3f} {row['metrics']['hfen_mask']:9.4f} "
                f"{row['mean_abs_gap_to_whole']:9.5f} {row['max_abs_gap_to_whole']:8.4f} "
                f"{row['lung_psnr_improved']:5d}/{report['agreement']['images']}"
            )
    if args.memory_size:
        report["memory"] = memory(args)
        for row in report["memory"]:
            print(
                f"{row['size']}x{row['size']} tile {row['tile']}: peak {row['peak_rss_mb']:.0f} MB,"
                f" {row['seconds']:.1f} s, finite {row['finite']}"
            )
    write_report(args.out_json, report)
    print(f"-> {args.out_json}")
    return report


if __name__ == "__main__":
    main()
