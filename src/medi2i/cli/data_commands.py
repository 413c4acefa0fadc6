"""Handlers of ``medi2i data drr`` (build the DRR benchmark) and ``medi2i data check``.

Each handler takes the parsed ``argparse.Namespace`` and returns the exit status. Rules: the
data, evaluation and utility modules are imported inside the handlers, so importing this
module loads no numpy or torch; input errors are raised as ``UserError`` (exit status 2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medi2i.cli.arguments import settings_from_args
from medi2i.cli.common import UserError, resolve_config


def cmd_data_drr(args: argparse.Namespace) -> int:
    """Write the CT-derived bone-suppression benchmark to ``--out`` and print where."""
    from medi2i.data.drr import DRRSettings, generate_benchmark

    try:
        settings = settings_from_args(DRRSettings, args)
        summary = generate_benchmark(args.out, settings, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc
    out = Path(args.out)
    counts = summary.get("counts", {})
    print(f"benchmark written to {out}")
    if counts:
        print("  pairs: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if "seconds" in summary:
        print(f"  time: {summary['seconds']:.1f} s")
    print(f"  manifest: {out / 'manifest.csv'}")
    print(f"  preview:  {out / 'preview.png'}  (input | target | aligned | lung mask)")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    """Validate every pair of the chosen splits and print the identity baseline."""
    from medi2i.data.pairs import SPLITS, DatasetError
    from medi2i.evaluation.dataset_report import dataset_report, format_dataset_report

    overrides = list(args.overrides)
    if args.root is not None:
        overrides.insert(0, f"data.root={args.root}")
    cfg = resolve_config(args.config, overrides)
    if cfg.data.root is None and cfg.data.manifest is None:
        raise UserError("give a dataset ROOT, or a --config with data.root or data.manifest")
    try:
        report, problems = dataset_report(
            cfg, args.split or list(SPLITS), baseline=not args.no_baseline
        )
    except (DatasetError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    if report:
        print(format_dataset_report(report))
    if args.json:
        from medi2i.utils.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    if problems:
        raise UserError("\n".join(problems))
    return 0
