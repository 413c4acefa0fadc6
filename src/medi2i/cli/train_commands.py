"""Handlers of ``medi2i train`` (one run, or ``--resume``) and ``medi2i sweep`` (a grid).

Each handler takes the parsed ``argparse.Namespace`` and returns the exit status. Rules: the
training package is imported inside the handlers, so importing this module loads no torch;
input errors are raised as ``UserError`` (exit status 2). A sweep with failed runs exits 1.
"""

from __future__ import annotations

import argparse

from medi2i.cli.common import UserError, resolve_config


def cmd_train(args: argparse.Namespace) -> int:
    """Train as the config says, or continue ``--resume RUN_DIR`` exactly."""
    from medi2i.data.pairs import DatasetError
    from medi2i.training.trainer import TrainingError, train

    try:
        if args.resume:
            if args.config or args.out:
                raise UserError("--resume continues a run as it was: drop --config and --out")
            train(resume=args.resume, overrides=list(args.overrides))
        else:
            cfg = resolve_config(args.config, args.overrides)
            if cfg.data.root is None and cfg.data.manifest is None:
                raise UserError("no data: give --config FILE or data.root=DIR")
            train(cfg, out=args.out)
    except (DatasetError, TrainingError, ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Train every combination of the ``--set`` values; list the runs that failed."""
    from medi2i.config import ConfigError
    from medi2i.training.sweep import sweep

    try:
        result = sweep(args.config, args.set, out=args.out, overrides=args.overrides)
    except ConfigError as exc:
        raise UserError(str(exc)) from exc
    print(f"sweep: {len(result.finished)} finished, {len(result.failed)} failed")
    for run_dir, reason in result.failed:
        print(f"  FAILED {run_dir}: {reason}")
    return 1 if result.failed else 0
