"""Reading a configuration: YAML files (with ``base:``), overrides, validation.

:func:`load_config` reads one or more YAML files, each merged over the files its ``base:`` names
(a path or a list, relative to the file; later files win, mappings merge key by key), records the
``file:line`` of every key, applies ``section.key=value`` overrides (values typed as YAML) and
validates the result with :func:`build_config`, which reports every problem at once as a
:class:`~medi2i.config.errors.ConfigError`. Log lines go to the ``medi2i.config`` logger.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from medi2i.config.errors import ConfigError, Origin, _format_errors
from medi2i.config.schema import Config

# Under the package's name, so that log lines read "medi2i.config" and configuring or capturing
# that logger covers the whole package.
log = logging.getLogger("medi2i.config")

_BASE_KEY = "base"


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records the line of every mapping key."""


def _compose_with_lines(text: str, source: str) -> tuple[Any, dict[tuple[str, ...], Origin]]:
    """Parse YAML text; return the data and a map from key path to ``file:line``."""
    try:
        node = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: not valid YAML: {exc}"]) from exc
    origins: dict[tuple[str, ...], Origin] = {}

    def walk(n: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                key = str(key_node.value)
                origins[(*path, key)] = f"{source}:{key_node.start_mark.line + 1}"
                walk(value_node, (*path, key))

    if node is not None:
        walk(node, ())
    data = yaml.load(text, Loader=yaml.SafeLoader) if node is not None else {}
    return data, origins


def _deep_merge(base: dict, update: Mapping) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml_tree(
    path: Path, seen: tuple[Path, ...] = ()
) -> tuple[dict, dict[tuple[str, ...], Origin]]:
    """Read a YAML file and, recursively, the files it names in ``base:``."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError([f"circular 'base:' chain: {chain}"])
    if not path.is_file():
        raise ConfigError([f"config file not found: {path}"])
    data, origins = _compose_with_lines(path.read_text(encoding="utf-8"), _display_path(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            [
                f"{_display_path(path)}: the top level must be a mapping of sections, "
                f"got {type(data).__name__}"
            ]
        )
    bases = data.pop(_BASE_KEY, None)
    origins.pop((_BASE_KEY,), None)
    if bases is None:
        return data, origins
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError([f"{_display_path(path)}: 'base' must be a path or a list of paths"])
    merged: dict = {}
    merged_origins: dict[tuple[str, ...], Origin] = {}
    for base in bases:
        base_data, base_origins = _read_yaml_tree(path.parent / base, (*seen, path))
        merged = _deep_merge(merged, base_data)
        merged_origins.update(base_origins)
    merged = _deep_merge(merged, data)
    merged_origins.update(origins)
    return merged, merged_origins


def _display_path(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:  # different drive on Windows
        return str(path)
    return str(path) if rel.startswith("..") else rel


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """Split ``section.key=value`` into a key path and a YAML-typed value.

    The value is parsed as YAML, so it is typed like the file (``2`` int, ``2.0`` float,
    ``true`` bool, ``null``, ``[1, 2]`` list, anything else a string).

    Raises:
        ConfigError: when the text has no ``=`` or an empty key.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError([f"override {text!r}: expected section.key=value"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError([f"override {text!r}: value is not valid YAML: {exc}"]) from exc
    return tuple(key.split(".")), value


def _set_path(data: dict, path: tuple[str, ...], value: Any) -> None:
    node = data
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def build_config(
    data: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    *,
    origins: Mapping[tuple[str, ...], Origin] | None = None,
) -> Config:
    """Validate a plain mapping (plus overrides) into a :class:`Config`.

    Args:
        data: nested mapping as read from YAML (``None`` = all defaults).
        overrides: ``section.key=value`` strings applied on top, in order.
        origins: key path -> ``file:line``, for error messages.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: listing every problem found.
    """
    # a deep copy: the overrides are written into nested dicts, never into the caller's
    merged: dict = copy.deepcopy(_deep_merge({}, data or {}))
    all_origins: dict[tuple[str, ...], Origin] = dict(origins or {})
    problems: list[str] = []
    for text in overrides:
        try:
            path, value = parse_override(text)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        _set_path(merged, path, value)
        for n in range(1, len(path) + 1):
            all_origins.setdefault(path[:n], f"command line {text!r}")
        all_origins[path] = f"command line {text!r}"
    if problems:
        raise ConfigError(problems)
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, all_origins)) from None


def load_config(
    path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    overrides: Sequence[str] = (),
) -> Config:
    """Load YAML config file(s) (each following its ``base:``), apply overrides and validate.

    Args:
        path: the YAML file, or several merged in order (later files win, e.g. an experiment
            plus a CPU-sized overlay); ``None`` starts from the defaults.
        overrides: ``section.key=value`` strings (command line), applied last.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: unreadable/invalid YAML, unknown keys, wrong types or ranges - all listed,
            each with its file and line (or the override text) and a suggestion where possible.
    """
    paths = [] if path is None else [path] if isinstance(path, (str, os.PathLike)) else path
    data: dict = {}
    origins: dict[tuple[str, ...], Origin] = {}
    for one in paths:
        file_data, file_origins = _read_yaml_tree(Path(one))
        data = _deep_merge(data, file_data)
        origins.update(file_origins)
        log.debug("read config %s (%d keys)", one, len(file_origins))
    cfg = build_config(data, overrides, origins=origins)
    if overrides:
        log.info("config overrides: %s", " ".join(overrides))
    return cfg
