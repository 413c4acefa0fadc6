"""Logging set-up shared by every command.

The package logs through :mod:`logging` under the ``medi2i`` logger hierarchy and is quiet by
default (warnings and errors only). ``--verbose`` on the command line raises it to INFO,
``-vv`` to DEBUG.
"""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_DATEFMT = "%H:%M:%S"


def verbosity_to_level(verbosity: int) -> int:
    """Map a ``-v`` count to a logging level: 0 -> WARNING, 1 -> INFO, 2+ -> DEBUG."""
    if verbosity <= 0:
        return logging.WARNING
    if verbosity == 1:
        return logging.INFO
    return logging.DEBUG


def setup_logging(verbosity: int = 0, stream=None) -> logging.Logger:
    """Configure the ``medi2i`` logger once; calling again only changes the level.

    Args:
        verbosity: number of ``-v`` flags given on the command line.
        stream: where to write (default ``sys.stderr``).

    Returns:
        The package's root logger.
    """
    logger = logging.getLogger("medi2i")
    level = verbosity_to_level(verbosity)
    logger.setLevel(level)
    if not any(getattr(h, "_medi2i", False) for h in logger.handlers):
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, _DATEFMT))
        handler._medi2i = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    return logger
