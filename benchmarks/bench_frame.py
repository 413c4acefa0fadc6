"""Does R register, and where does G's output sit? Scored against the benchmark's true fields.

On the DRR benchmark the true displacement ``d`` of every target is known (it is reproduced from
the benchmark's seed, :func:`medi2i.data.drr.target_displacement`), so a trained G+R run can be
scored on what no loss shows:

* **R's registration error**: the end-point error (EPE, px, mean over the lung mask) of R's
  field for the pair (G's output, target) against ``d``; the same for the pair (aligned truth,
  target); and the EPE of no registration at all (``|d|``). ``recovered`` = 1 − EPE_R / EPE_none
  is the share of the misalignment R removes.
* **G's frame**: ``delta = d − R(G(x), y)``. R warps G's output onto the target, so G's output
  is about the aligned truth warped by ``delta``: a G in the input's frame has ``delta`` ≈ R's
  error only. Per image, mean ``|delta|`` is R's EPE on G's output; the systematic part is the
  mean field over the images (``|mean delta|``, and its average row/column components).
* **What the frame costs**: lung PSNR of G's output against the aligned truth as it is, after
  undoing the per-image ``delta`` (warping by ``−delta``), after undoing only the systematic
  part, and the control, warping by ``+delta`` (a real drift: undoing helps, the control hurts;
  an interpolation effect would move both the same way).

Usage::

    python benchmarks/bench_frame.py RUN_DIR [RUN_DIR ...] [--split val] [--limit 60]
    python benchmarks/bench_frame.py RUN_DIR --set fit_iterations=80   # another fit, same G

The benchmark folder is the run's ``data.root`` (``--data`` to override); it must be a
``medi2i data drr`` benchmark (``benchmark.json``). A few seconds per image on one CPU thread.
JSON to ``benchmarks/results/frame.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from _common import machine_info, write_report
from medi2i.config import ConfigError

logger = logging.getLogger("bench_frame")


def _lung_psnr(pred: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR (data range 1) of ``pred`` against ``truth`` over the mask's pixels."""
    inside = mask > 0.5
    mse = float(((pred - truth)[inside] ** 2).mean())
    return 10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf


def _epe(field: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean end-point error (px) of a ``(2, H, W)`` field against the truth, inside the mask."""
    return float((field - truth).norm(dim=0)[mask[0] > 0.5].mean())


def score_run(
    run_dir: Path,
    *,
    split: str,
    data: Path | None,
    limit: int | None,
    registration: tuple[str, ...] = (),
) -> dict:
    """Score one G+R run on a split of its DRR benchmark (see the module docstring).

    ``registration``: ``model.R.*`` overrides of the run's fitted R (``fit_iterations=80``,
    ...), to try registration settings on a trained G without training again.
    """
    from medi2i.config import build_config
    from medi2i.data.builders import build_dataset
    from medi2i.data.drr import target_displacement
    from medi2i.inference import load_generator
    from medi2i.models.registration import build_registration, warp
    from medi2i.run.checkpoint import load_checkpoint

    loaded = load_generator(run_dir, weights="ema")
    state = load_checkpoint(loaded.checkpoint, map_location="cpu")
    cfg = build_config(state["config"], [f"model.R.{kv}" for kv in registration])
    if registration and cfg.model.R.kind != "fit":
        raise ValueError(f"{run_dir}: registration overrides need a fitted R (model.R.kind fit)")
    if not cfg.model.R.enabled:
        raise ValueError(f"{run_dir}: the run has no registration R (model.R.enabled false)")
    reg = build_registration(cfg.model.R, lung_weight=cfg.loss.lung_weight)
    fitted = cfg.model.R.kind == "fit"
    if not fitted:  # a learnt R's weights; a fitted one has none
        if "R" not in state["model"]:
            raise ValueError(
                f"{run_dir}: the checkpoint holds no weights of the registration network R"
            )
        reg.load_state_dict(state["model"]["R"])
    reg.eval()

    def register(moving: torch.Tensor, fixed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (reg(moving, fixed, mask) if fitted else reg(moving, fixed))[0]

    root = Path(data) if data is not None else Path(cfg.data.root)
    marker = root / "benchmark.json"
    if not marker.is_file():
        raise ValueError(f"{root}: not a medi2i DRR benchmark (no benchmark.json)")
    settings = json.loads(marker.read_text(encoding="utf-8"))["settings"]
    cfg.data.root = str(root)
    dataset = build_dataset(cfg, split, normalizer=loaded.normalizer, train=False)
    if not dataset.has_aligned_files:
        raise ValueError(f"{root}: split {split!r} has no aligned targets to score against")
    count = len(dataset) if limit is None else min(limit, len(dataset))
    per_image: list[dict] = []
    images: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    deltas = []
    with torch.no_grad():
        for i in range(count):
            item = dataset[i]
            x, y, truth, mask = (
                item[k][None] for k in ("input", "target", "aligned_target", "mask")
            )
            index = int(Path(str(item["name"])).stem)
            d = torch.from_numpy(
                target_displacement(
                    settings["seed"], settings["size"], settings["misalign_px"], split, index
                )
            )
            out = loaded.generator(x).float()
            f_out = register(out, y, mask)
            f_truth = register(truth, y, mask)
            delta = d - f_out
            deltas.append(delta)
            per_image.append(
                {
                    "name": str(item["name"]),
                    "epe_none": _epe(torch.zeros_like(d), d, mask[0]),
                    "epe_R_output": _epe(f_out, d, mask[0]),
                    "epe_R_truth": _epe(f_truth, d, mask[0]),
                    "psnr_mask": _lung_psnr(out, truth, mask),
                    "psnr_mask_undo_drift": _lung_psnr(warp(out, -delta[None]), truth, mask),
                    "psnr_mask_control": _lung_psnr(warp(out, delta[None]), truth, mask),
                }
            )
            images.append((out, truth, mask))  # for the systematic drift, known at the end
        systematic = torch.stack(deltas).mean(dim=0)
        for row, (out, truth, mask) in zip(per_image, images):
            row["psnr_mask_undo_systematic"] = _lung_psnr(warp(out, -systematic[None]), truth, mask)
    means = {k: float(np.mean([r[k] for r in per_image])) for k in per_image[0] if k != "name"}
    epe_none = means["epe_none"]
    return {
        "run": str(run_dir),
        "registration_overrides": list(registration),
        "checkpoint": str(loaded.checkpoint),
        "split": split,
        "images": count,
        "mean": means,
        "recovered_R_output": 1.0 - means["epe_R_output"] / epe_none if epe_none else None,
        "recovered_R_truth": 1.0 - means["epe_R_truth"] / epe_none if epe_none else None,
        "systematic_drift_px": float(systematic.norm(dim=0).mean()),
        "systematic_drift_max_px": float(systematic.norm(dim=0).max()),
        "systematic_drift_mean_dy_dx": [float(systematic[0].mean()), float(systematic[1].mean())],
        "per_image": per_image,
    }


def _print(result: dict) -> None:
    m = result["mean"]
    settings = " ".join(result["registration_overrides"]) or "the run's R"
    print(f"{result['run']} ({result['split']}, {result['images']} images, {settings})")
    print(
        f"  R's EPE (lung, px): none {m['epe_none']:.3f} | R(G(x), y) {m['epe_R_output']:.3f} "
        f"({100 * result['recovered_R_output']:.0f}% recovered) | R(truth, y) "
        f"{m['epe_R_truth']:.3f} ({100 * result['recovered_R_truth']:.0f}%)"
    )
    dy, dx = result["systematic_drift_mean_dy_dx"]
    print(
        f"  G's drift (px): per image {m['epe_R_output']:.3f} (R's EPE on G's output); "
        f"systematic "
        f"{result['systematic_drift_px']:.3f} (max {result['systematic_drift_max_px']:.3f}, "
        f"mean dy {dy:+.3f} dx {dx:+.3f})"
    )
    psnr = {
        "as is": m["psnr_mask"],
        "drift undone": m["psnr_mask_undo_drift"],
        "systematic undone": m["psnr_mask_undo_systematic"],
        "control (+drift)": m["psnr_mask_control"],
    }
    print("  lung PSNR (dB): " + " | ".join(f"{k} {v:.2f}" for k, v in psnr.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="G+R or G+R+D run directories")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--data", type=Path, default=None, help="benchmark folder override")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--set",
        dest="registration",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of the run's fitted R (model.R.KEY), e.g. fit_iterations=80; repeatable",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/frame.json"))
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    start = time.perf_counter()
    results = []
    for run in args.runs:
        try:
            result = score_run(
                run,
                split=args.split,
                data=args.data,
                limit=args.limit,
                registration=tuple(args.registration),
            )
        except (OSError, ValueError, ConfigError) as exc:
            print(f"bench_frame: error: {exc}")
            return 1
        _print(result)
        results.append(result)
    report = {
        "benchmark": "frame",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "seconds": round(time.perf_counter() - start, 1),
        "runs": results,
    }
    path = write_report(args.out, report)
    print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
