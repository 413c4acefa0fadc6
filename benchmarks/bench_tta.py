"""Cost and gain of test-time augmentation (TTA) sets on the benchmark's test split.

For each TTA set, every one of the first ``--images`` test images (already normalised, as
``medi2i evaluate`` feeds them) is predicted with :meth:`Predictor.predict_normalised`, timed
(seconds per image, TTA sets interleaved image by image so that machine load affects all
alike), and scored against the aligned target (PSNR, SSIM, HFEN, GMSD; whole image and inside
the lung mask). The gain of a set is its paired difference to the plain prediction
(``identity``), with the number of images it improved.

Usage::

    python benchmarks/bench_tta.py --run /tmp/exp_demo1 --data runs/benchmark --images 8
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from _common import load_run_split, machine_info, sync, write_report
from medi2i.inference import Predictor
from medi2i.metrics import compute_metrics, reference_key

logger = logging.getLogger("bench_tta")

TTA_SETS: dict[str, list[str]] = {
    "identity": ["identity"],
    "identity+vflip": ["identity", "vflip"],
    "identity+hflip": ["identity", "hflip"],
    "identity+shift": ["identity", "shift"],
    "identity+vflip+shift": ["identity", "vflip", "shift"],
    "identity+hflip+vflip": ["identity", "hflip", "vflip"],
}
METRICS = ("psnr", "ssim", "hfen", "gmsd")


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print a table and write the JSON report.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The report written to ``--out-json``.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="/tmp/exp_demo1", help="run directory or checkpoint")
    parser.add_argument("--data", default="runs/benchmark", help="dataset root (folder layout)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, default=8, help="first N images of the split")
    parser.add_argument("--weights", choices=["ema", "online"], default="ema")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4, help="Predictor batch_size")
    parser.add_argument(
        "--out-json", type=Path, default=Path("benchmarks/results/tta.json"), help="report"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    device = torch.device(args.device)
    loaded, dataset, data_range = load_run_split(
        args.run, args.data, args.split, weights=args.weights, device=device
    )
    n = min(args.images, len(dataset))
    predictors = {
        name: Predictor(loaded, tta=names, batch_size=args.batch, device=device)
        for name, names in TTA_SETS.items()
    }
    items = [dataset[i] for i in range(n)]
    reference = reference_key(items[0])
    _ = predictors["identity"].predict_normalised(items[0]["input"][None])  # warm-up

    seconds: dict[str, list[float]] = {name: [] for name in TTA_SETS}
    scores: dict[str, dict[str, list[float]]] = {name: {} for name in TTA_SETS}
    for index, item in enumerate(items):
        x = item["input"][None]
        ref, mask = item[reference][None], item["mask"][None]
        for name, predictor in predictors.items():
            sync(device)
            start = time.perf_counter()
            pred = predictor.predict_normalised(x)
            sync(device)
            seconds[name].append(time.perf_counter() - start)
            values = compute_metrics(
                pred.cpu(), ref, data_range=data_range, mask=mask, include=METRICS
            )
            for key, value in values.items():
                scores[name].setdefault(key, []).append(float(value[0]))
        logger.warning("image %d/%d done", index + 1, n)

    base = scores["identity"]
    sets = {}
    for name in TTA_SETS:
        mine = scores[name]
        gain = {}
        for key, values in mine.items():
            diff = np.asarray(values) - np.asarray(base[key])
            better = diff > 0 if key.startswith(("psnr", "ssim")) else diff < 0
            gain[key] = {
                "mean_diff": float(diff.mean()),
                "images_improved": int(better.sum()),
            }
        sets[name] = {
            "transforms": predictors[name].tta_names,
            "forward_passes": len(predictors[name].transforms),
            "seconds_per_image": statistics.median(seconds[name]),
            "seconds_per_image_all": seconds[name],
            "relative_cost": statistics.median(seconds[name])
            / statistics.median(seconds["identity"]),
            "metrics": {key: float(np.mean(values)) for key, values in mine.items()},
            "gain_vs_identity": gain,
        }
    report = {
        "benchmark": "test-time augmentation cost and gain",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "run": str(loaded.checkpoint),
        "weights": loaded.weights,
        "epoch": loaded.epoch,
        "data": args.data,
        "split": args.split,
        "images": n,
        "image_shape": list(items[0]["input"].shape[-2:]),
        "reference": reference,
        "data_range": data_range,
        "batch_size": args.batch,
        "sets": sets,
    }
    write_report(args.out_json, report)

    print(f"TTA on {n} {args.split} images of {args.data} ({loaded.checkpoint}), vs {reference}")
    print(
        f"{'set':24s} {'passes':>6s} {'s/image':>8s} {'x cost':>7s} {'psnr':>7s} {'dPSNR':>7s}"
        f" {'lung dPSNR':>10s} {'dSSIM':>8s} {'dHFEN_lung':>10s} {'improved':>8s}"
    )
    for name, s in sets.items():
        g = s["gain_vs_identity"]
        print(
            f"{name:24s} {s['forward_passes']:6d} {s['seconds_per_image']:8.2f} "
            f"{s['relative_cost']:7.2f} {s['metrics']['psnr']:7.2f} "
            f"{g['psnr']['mean_diff']:+7.3f} {g['psnr_mask']['mean_diff']:+10.3f} "
            f"{g['ssim']['mean_diff']:+8.4f} {g['hfen_mask']['mean_diff']:+10.4f} "
            f"{g['psnr_mask']['images_improved']:5d}/{n}"
        )
    print(f"-> {args.out_json}")
    return report


if __name__ == "__main__":
    main()
