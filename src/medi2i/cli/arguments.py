"""Argument groups that several subcommands share, and options generated from a dataclass.

``add_common`` gives a parser ``-v``/``--verbose``; ``add_config_args`` the repeatable
``--config`` and trailing ``KEY=VALUE`` overrides; ``add_model_source`` and
``add_inference_options`` the options of the commands that load a trained G.
``add_dataclass_arguments`` turns a settings dataclass into ``--kebab-case`` options and
``settings_from_args`` reads them back.

Rules: argparse, dataclasses and typing only; nothing here imports the package's layers.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing


def add_common(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``-v``/``--verbose``, counted: every parser and subparser takes it."""
    # Sub-commands must not reset a -v given before them, hence SUPPRESS below the top level.
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0 if top else argparse.SUPPRESS,
        help="more logging (-v INFO, -vv DEBUG)",
    )


def add_config_args(parser: argparse.ArgumentParser, config_help: str) -> None:
    """``--config`` (repeatable, merged in order) and trailing ``KEY=VALUE`` overrides."""
    parser.add_argument("--config", action="append", help=config_help)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")


def add_model_source(parser: argparse.ArgumentParser) -> None:
    """Where G comes from (``--run`` or ``--checkpoint``), which weights and which device."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--run", help="run directory (its best.pt, else last.pt)")
    group.add_argument("--checkpoint", help="a checkpoint file")
    parser.add_argument(
        "--weights",
        choices=["ema", "online"],
        default="ema",
        help="EMA (default: what validation selected by) or online weights",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")


def add_inference_options(parser: argparse.ArgumentParser) -> None:
    """Test-time augmentation, batch size, precision and the progress bar of evaluate and
    predict."""
    parser.add_argument(
        "--tta",
        nargs="+",
        metavar="NAME",
        help="test-time augmentation: identity hflip vflip shift (averaged); hflip alters "
        "chest anatomy (heart side)",
    )
    parser.add_argument("--batch", type=int, default=4, help="images per forward pass")
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="G's arithmetic: fp32 (default, exact); bf16 about halves the time on a CPU with "
        "native bfloat16 (AVX512-BF16, AMX) at a few hundredths of a dB; fp16 on a GPU",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add ``--kebab-case`` options for every field of a settings dataclass.

    Types come from the annotations (int, float, str, bool, optional ones and
    ``tuple[float, float]``); defaults and ``metadata["help"]`` from the fields. Booleans get
    ``--flag/--no-flag``.
    """
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        default = (
            field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        )
        help_text = field.metadata.get("help", "")
        help_text = f"{help_text} (default: {default})" if help_text else f"default: {default}"
        args = typing.get_args(hint)
        origin = typing.get_origin(hint)
        if hint is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
        elif origin is tuple:
            parser.add_argument(
                flag,
                type=args[0],
                nargs=len(args),
                default=default,
                metavar=tuple(a.__name__.upper() for a in args),
                help=help_text,
            )
        else:
            base = next((a for a in args if a is not type(None)), hint) if args else hint
            parser.add_argument(flag, type=base, default=default, help=help_text)


def settings_from_args(cls: type, args: argparse.Namespace):
    """The ``cls`` instance of the options ``add_dataclass_arguments`` added (lists as tuples)."""
    values = {}
    for field in dataclasses.fields(cls):
        value = getattr(args, field.name)
        values[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)
