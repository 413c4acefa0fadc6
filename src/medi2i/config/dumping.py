"""Writing a configuration: the fully resolved config as a plain dict, as YAML, to a file.

Keys keep the schema's declaration order (``sort_keys=False``), tuples become lists, and a saved
file goes through :func:`medi2i.utils.atomic.atomic_write_text`, so a crash leaves the previous
file intact. :func:`~medi2i.config.loading.load_config` reads a dumped file back to an equal
:class:`~medi2i.config.schema.Config`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from medi2i.config.schema import Config
from medi2i.utils.atomic import atomic_write_text


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain JSON/YAML-safe nested dict of a config (tuples become lists)."""
    return cfg.model_dump(mode="json")


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text (keys in declaration order)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


def save_config(cfg: Config, path: str | os.PathLike) -> Path:
    """Write the fully resolved config atomically (e.g. ``RUN_DIR/config.yaml``)."""
    return atomic_write_text(path, dump_config(cfg))
