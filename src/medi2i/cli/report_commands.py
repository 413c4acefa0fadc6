"""Handlers that report on trained runs: ``medi2i compare``, ``medi2i diagnose`` (with the
ablation runner of ``--run-ablation``) and ``medi2i evaluate``.

Each handler takes the parsed ``argparse.Namespace`` and returns the exit status. Rules: the
evaluation and training packages are imported inside the functions, so importing this module
loads no torch; input errors are raised as ``UserError`` (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from medi2i.cli.common import UserError, build_predictor, resolve_config
from medi2i.run.layout import RunLayout

log = logging.getLogger(__name__)


def cmd_compare(args: argparse.Namespace) -> int:
    """Write the HTML (and Markdown) report comparing the runs."""
    from medi2i.evaluation.compare import compare_runs

    try:
        result = compare_runs(
            args.runs,
            args.out,
            data_root=args.data_root,
            crops=args.crops,
            crop_size=args.crop_size,
            device=args.device,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc
    print(f"report: {result['html']} (and {result['markdown']})")
    for note in result.get("notes", []):
        print(f"  note: {note}")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    """Apply the decision rules to the runs (against a baseline, given or trained here)."""
    from medi2i.evaluation.diagnose import diagnose_run, format_diagnosis

    baselines = list(args.baseline or [])
    if args.run_ablation:
        if baselines:
            raise UserError("--run-ablation trains the missing baseline: drop --baseline")
        baselines = _run_ablations(args.runs)
    try:
        diagnosis = diagnose_run(
            args.runs,
            baseline=baselines or None,
            last_epochs=args.last_epochs,
            evaluate=not args.no_eval,
            data_root=args.data_root,
            device=args.device,
            refresh=args.refresh,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc
    if args.json:
        print(json.dumps(diagnosis.to_dict(), indent=2))
    else:
        print(format_diagnosis(diagnosis))
    return 0


def _run_ablations(run_dirs: Sequence[str]) -> list[str]:
    """Train the same-seed, same-budget ablation of each run (without D, else without R).

    An ablation directory that already holds a finished run (``summary.json``) is reused.
    """
    from medi2i.data.pairs import DatasetError
    from medi2i.evaluation.diagnose import ablation_plans
    from medi2i.evaluation.runs import load_run
    from medi2i.training.trainer import TrainingError, train

    outs = []
    for run_dir in run_dirs:
        try:
            run = load_run(run_dir)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
        plans = ablation_plans(run, ["D"]) or ablation_plans(run, ["R"])
        if not plans:
            raise UserError(f"{run_dir}: trains G alone ({run.mode}); there is nothing to ablate")
        plan = plans[0]
        if not run.config_path.is_file():
            raise UserError(f"{run_dir}: no config.yaml to build the ablation from")
        if RunLayout(Path(plan.out)).summary.is_file():
            log.info("ablation %s already trained; reused", plan.out)
        else:
            print(f"training the ablation: {plan.command}", flush=True)
            cfg = resolve_config(plan.config, list(plan.overrides))
            try:
                train(cfg, out=plan.out)
            except (DatasetError, TrainingError, ValueError, FileNotFoundError) as exc:
                raise UserError(f"ablation {plan.out}: {exc}") from exc
        outs.append(plan.out)
    return outs


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score G and the identity baseline on a split; print the table, write the files."""
    from medi2i.data.pairs import DatasetError
    from medi2i.evaluation.evaluate import evaluate_split, format_table

    predictor = build_predictor(args)
    source = Path(args.run or args.checkpoint)
    out = (
        Path(args.out)
        if args.out
        else RunLayout(source if source.is_dir() else source.parent.parent).evaluation(args.split)
    )
    try:
        summary = evaluate_split(
            predictor,
            out_dir=out,
            split=args.split,
            data_root=args.data,
            bootstrap=args.bootstrap,
            progress=not args.no_progress,
        )
    except (DatasetError, ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc
    print(format_table(summary))
    print(f"written: {out / 'metrics.csv'}, {out / 'summary.json'}, {out / 'worst_cases.png'}")
    return 0
