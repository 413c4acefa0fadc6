"""A small grid of training runs, one after another, into sibling run directories.

``medi2i sweep FILE --set loss.gan_weight=2,3,5 [--set loss.feat_match_weight=2,10]`` trains
every combination with the same config otherwise, each into ``OUT/<key>=<value>[_...]``. A run
that fails is reported and the sweep goes on; the exit status says whether all succeeded.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from medi2i.config import ConfigError, load_config

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    """What happened to each run of a sweep."""

    finished: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def parse_grid(specs: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``key=v1,v2`` (or ``key=[v1, v2]`` in YAML) -> ``[(key, [v1, v2])]``.

    Raises:
        ConfigError: a spec without ``=`` or without values.
    """
    grid = []
    for spec in specs:
        key, sep, raw = spec.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key or not raw:
            raise ConfigError([f"--set {spec!r}: expected key=v1,v2,..."])
        if raw.startswith("["):  # a YAML list; each value re-encoded so YAML reads it back
            values = [json.dumps(v) for v in yaml.safe_load(raw)]
        else:
            values = [v.strip() for v in raw.split(",") if v.strip()]
        if not values:
            raise ConfigError([f"--set {spec!r}: no values"])
        grid.append((key, values))
    return grid


def expand(grid: list[tuple[str, list[str]]]) -> list[list[str]]:
    """Every combination of the grid as a list of ``key=value`` overrides."""
    keys = [k for k, _ in grid]
    return [
        [f"{k}={v}" for k, v in zip(keys, combo)]
        for combo in itertools.product(*(values for _, values in grid))
    ]


def run_name(overrides: Sequence[str]) -> str:
    """A folder name for one combination, e.g. ``gan_weight=2_feat_match_weight=10``."""
    parts = []
    for text in overrides:
        key, _, value = text.partition("=")
        parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
    name = "_".join(parts)
    return "".join(c if c.isalnum() or c in "=._-" else "-" for c in name)


def sweep(
    config: str | Sequence[str],
    grid_specs: Sequence[str],
    *,
    out: str | Path,
    overrides: Sequence[str] = (),
) -> SweepResult:
    """Train every combination of ``grid_specs`` sequentially.

    Args:
        config: the YAML file(s) every run starts from.
        grid_specs: ``key=v1,v2,...`` strings.
        out: parent folder of the runs.
        overrides: fixed overrides applied to every run (before the grid values).

    Returns:
        Finished and failed run directories.

    Raises:
        ConfigError: a bad grid or a combination whose config is invalid (checked for all
            combinations before anything trains).
    """
    from medi2i.training.trainer import train

    combos = expand(parse_grid(grid_specs))
    configs = [load_config(config, [*overrides, *combo]) for combo in combos]  # fail fast
    result = SweepResult()
    out = Path(out)
    for i, (combo, cfg) in enumerate(zip(combos, configs), start=1):
        run_dir = out / run_name(combo)
        print(f"sweep {i}/{len(combos)}: {' '.join(combo)} -> {run_dir}", flush=True)
        try:
            train(cfg, out=str(run_dir))
        except Exception as exc:  # one failed run must not stop the others
            log.exception("sweep run %s failed", run_dir)
            result.failed.append((run_dir, f"{type(exc).__name__}: {exc}"))
            continue
        result.finished.append(run_dir)
    return result
