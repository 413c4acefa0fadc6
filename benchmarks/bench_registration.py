"""Can R learn the benchmark's misalignment at the demo's budget, and how stiff should it be?

R alone registers each training pair's *aligned* target onto its misaligned target (the job it
does inside G+R once G has learnt the bone suppression), with the demo's R, optimiser,
lung-weighted L1+SSIM loss and smoothness term, for a fixed number of steps. Reported per
setting: the reconstruction loss after registration as a fraction of the loss without it
(``recon_ratio``, 1 = R does nothing, 0 = perfect; mean over the last 50 steps), the field's
largest displacement (px) and the seconds taken. Settings: each ``--smooth`` weight, and with
``--raw-inputs`` also R without its input standardisation, for comparison.

Usage::

    python benchmarks/bench_registration.py                       # smooth 0.25 and 0.5, 300 steps
    python benchmarks/bench_registration.py --smooth 0 0.25 0.5 1 --raw-inputs --steps 400

JSON to ``benchmarks/results/registration.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import time
from pathlib import Path
from unittest import mock

import torch

from _common import machine_info, write_report

logger = logging.getLogger("bench_registration")


def run(
    cfg_path: str,
    data_root: str,
    smooth: float,
    steps: int,
    raw_inputs: bool,
    seed: int,
) -> dict:
    """Train R alone on (aligned target -> target) pairs; returns the measurements."""
    from medi2i.config import load_config
    from medi2i.data.builders import build_dataloader, build_dataset
    from medi2i.losses.reconstruction import reconstruction_loss
    from medi2i.losses.regularizers import smoothness_loss
    from medi2i.models import build_registration
    from medi2i.models import registration as reg
    from medi2i.models.registration import warp

    cfg = load_config(cfg_path, [f"data.root={data_root}", f"seed={seed}"])
    loader = build_dataloader(build_dataset(cfg, "train"), cfg, shuffle=True)
    torch.manual_seed(seed)
    r = build_registration(cfg.model.R)
    oc = cfg.optim.R
    opt = torch.optim.Adam(r.parameters(), lr=oc.lr, betas=tuple(oc.betas))
    loss_kw = {
        "data_range": 1.0,
        "lung_weight": cfg.loss.lung_weight,
        "l1_weight": cfg.loss.l1_weight,
        "ssim_weight": cfg.loss.ssim_weight,
    }
    ratios, field_max = [], []
    patch = (
        mock.patch.object(reg, "standardise_pair", lambda m, f: torch.cat([m, f], dim=1))
        if raw_inputs
        else mock.patch.object(reg, "standardise_pair", reg.standardise_pair)
    )
    start = time.perf_counter()
    batches = iter(loader)
    with patch:
        for _ in range(steps):
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(loader)
                batch = next(batches)
            moving, fixed, mask = batch["aligned_target"], batch["target"], batch["mask"]
            field = r(moving, fixed)
            loss, _ = reconstruction_loss(
                warp(moving, field), fixed, warp(mask, field.detach()), **loss_kw
            )
            with torch.no_grad():
                identity, _ = reconstruction_loss(moving, fixed, mask, **loss_kw)
            total = loss + smooth * smoothness_loss(field)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            ratios.append(loss.item() / max(identity.item(), 1e-12))
            field_max.append(field.detach().norm(dim=1).amax().item())
    tail = min(50, steps)
    return {
        "smooth_weight": smooth,
        "inputs": "raw" if raw_inputs else "standardised",
        "steps": steps,
        "recon_ratio_last50": sum(ratios[-tail:]) / tail,
        "field_max_px_last50": sum(field_max[-tail:]) / tail,
        "recon_ratio_every50": [
            round(sum(ratios[i : i + 50]) / len(ratios[i : i + 50]), 4) for i in range(0, steps, 50)
        ],
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--data-root", default="runs/benchmark")
    parser.add_argument("--smooth", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw-inputs", action="store_true", help="also R without standardising")
    parser.add_argument("--out", default="benchmarks/results/registration.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not (Path(args.data_root) / "train").is_dir():
        parser.error(f"{args.data_root}/train not found: build it with `medi2i data drr`")
    results = []
    settings = [(s, False) for s in args.smooth]
    if args.raw_inputs:
        settings.append((args.smooth[0], True))
    for smooth, raw in settings:
        res = run(args.config, args.data_root, smooth, args.steps, raw, args.seed)
        results.append(res)
        print(
            f"smooth {smooth:<5g} {res['inputs']:12s}: recon after/before registration "
            f"{res['recon_ratio_last50']:.3f}, field max {res['field_max_px_last50']:.2f} px "
            f"({res['seconds']:.0f} s)",
            flush=True,
        )
    report = {
        "benchmark": "R alone registering aligned targets onto misaligned ones",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": args.config,
        "data_root": args.data_root,
        "results": results,
    }
    write_report(args.out, report)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
