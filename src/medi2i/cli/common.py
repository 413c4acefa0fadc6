"""What the command handlers share: the user-error type and the steps several commands take.

``UserError`` marks a problem with the command's input (config, data files, options); ``main``
prints it as one line and exits with ``EXIT_USAGE`` (2). The helpers here turn the input errors
of the layers below into ``UserError``: the resolved config of ``--config`` files plus
overrides, the model source of ``--run``/``--checkpoint`` and the ``Predictor`` that evaluate
and predict run.

Rules: this module imports no torch at import time (config and inference are imported inside
the functions), so that ``medi2i --help`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

EXIT_USAGE = 2


class UserError(Exception):
    """A problem with the command's input, reported without a traceback."""


def resolve_config(path: str | Sequence[str] | None, overrides: Sequence[str]):
    """The validated config of ``--config`` file(s) plus ``KEY=VALUE`` overrides."""
    from medi2i.config import ConfigError, load_config

    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        raise UserError(str(exc)) from exc


def model_source(args: argparse.Namespace) -> str:
    """The ``--run`` directory or ``--checkpoint`` file a command loads G from."""
    source = args.run or args.checkpoint
    if not source:
        raise UserError("give --run RUN_DIR or --checkpoint FILE")
    return source


def build_predictor(args: argparse.Namespace):
    """A ``Predictor`` from the model-source and inference options of evaluate or predict."""
    from medi2i.inference import Predictor

    source = model_source(args)
    tiling = {}
    if getattr(args, "tile", None) is not None:  # else the predictor's default tile
        tiling["tile"] = args.tile or None  # 0: always whole
    try:
        return Predictor.from_run(
            source,
            weights=args.weights,
            device=args.device,
            tta=args.tta,
            **tiling,
            overlap=getattr(args, "overlap", 0.25),
            batch_size=args.batch,
            input_window=getattr(args, "input_window", None),
            intensity_check=getattr(args, "intensity_check", "error"),
            precision=getattr(args, "precision", "fp32"),
        )
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc
