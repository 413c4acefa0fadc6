"""Command-line entry point: ``medi2i <command> ...`` (``main``, the console script).

Commands:

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

The package: ``parser`` (``build_parser``: every command's options and its handler),
``arguments`` (option groups shared by several commands), ``common`` (``UserError`` and the
helpers several handlers share), and one module of handlers per kind of command:
``data_commands``, ``config_commands``, ``train_commands``, ``report_commands`` (compare,
diagnose, evaluate), ``predict_commands`` (predict, export). Rules: no module of the package
imports torch, scipy or the training and evaluation packages at import time (only inside the
handlers), so ``medi2i --help`` and every subcommand's ``--help`` start fast.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from medi2i.cli.arguments import add_dataclass_arguments
from medi2i.cli.common import EXIT_USAGE, UserError
from medi2i.cli.parser import build_parser
from medi2i.utils.log import setup_logging
from medi2i.utils.version import __version__

__all__ = ["EXIT_USAGE", "UserError", "add_dataclass_arguments", "build_parser", "main"]

log = logging.getLogger(__name__)


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
