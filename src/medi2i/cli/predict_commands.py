"""Handlers that run or ship a trained G: ``medi2i predict`` and ``medi2i export``.

Each handler takes the parsed ``argparse.Namespace`` and returns the exit status. Rules: the
inference package is imported inside the handlers, so importing this module loads no torch;
input errors are raised as ``UserError`` (exit status 2). Predict exits 1 when any file failed.
"""

from __future__ import annotations

import argparse
import sys

from medi2i.cli.common import UserError, build_predictor, model_source


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict files and folders; each output is written like its input."""
    from medi2i.inference import predict_paths

    predictor = build_predictor(args)
    try:
        summary = predict_paths(
            predictor,
            args.input,
            args.output,
            slice_index=args.slice_index,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    for path, reason in summary.failed:
        print(f"FAILED {path}: {reason}", file=sys.stderr)
    print(summary.line())
    return summary.exit_code


def cmd_export(args: argparse.Namespace) -> int:
    """Export G to TorchScript (or ONNX) with its JSON metadata."""
    from medi2i.inference import ExportError, export_generator

    source = model_source(args)
    try:
        path = export_generator(
            source,
            args.out,
            format=args.format,
            weights=args.weights,
            example_size=args.example_size,
        )
    except (ExportError, ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc
    print(f"exported {args.format} to {path} (metadata: {path}.json)")
    return 0
