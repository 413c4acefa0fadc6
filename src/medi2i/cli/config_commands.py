"""Handlers that print what a configuration resolves to: ``medi2i config show`` and
``medi2i model-summary``.

Each handler takes the parsed ``argparse.Namespace`` and returns the exit status. Rules: the
config and model modules are imported inside the handlers, so importing this module loads no
torch; input errors are raised as ``UserError`` (exit status 2).
"""

from __future__ import annotations

import argparse
import sys

from medi2i.cli.common import UserError, resolve_config


def cmd_config_show(args: argparse.Namespace) -> int:
    """Print the fully resolved config as YAML."""
    from medi2i.config import dump_config

    cfg = resolve_config(args.config, args.overrides)
    sys.stdout.write(dump_config(cfg))
    return 0


def cmd_model_summary(args: argparse.Namespace) -> int:
    """Print parameter counts and output shapes of G, R and D for a square input."""
    from medi2i.models.summary import model_summary

    cfg = resolve_config(args.config, args.overrides)
    try:
        print(model_summary(cfg, image_size=args.size))
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    return 0
