"""Configuration errors: :class:`ConfigError` and the text of each problem.

Every problem names the dotted key, where it came from (an :data:`Origin`: ``file:line`` or the
command-line override) when known, the offending value and what is allowed; an unknown key gets
the closest valid key of its section ("did you mean ...?") or, failing that, the list of valid
keys. Problems are collected and raised together as one :class:`ConfigError`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from medi2i.config.schema import Config


class ConfigError(ValueError):
    """One or more problems in a configuration; ``problems`` lists them one per line."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        n = len(self.problems)
        head = "invalid configuration" if n == 1 else f"invalid configuration ({n} problems)"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


Origin = str  # "path/to/file.yaml:12" or "command line 'a.b=c'"


def _model_at(path: Sequence[str | int]) -> type[BaseModel] | None:
    """The pydantic model that holds the key at ``path`` (None when not a model)."""
    model: Any = Config
    for part in path:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = field.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _suggest(key: str, candidates: Iterable[str]) -> str:
    options = list(candidates)
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in options}
        close = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.6)
        close = [lowered[c] for c in close]
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; valid keys here: {', '.join(sorted(options))}"


def _format_errors(exc: ValidationError, origins: Mapping[tuple[str, ...], Origin]) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        dotted = ".".join(loc) or "(top level)"
        origin = None
        for n in range(len(loc), 0, -1):  # closest recorded ancestor of the key
            origin = origins.get(loc[:n])
            if origin:
                break
        where = f"{origin}: " if origin else ""
        if err["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1])
            hint = _suggest(loc[-1], parent.model_fields) if parent else ""
            problems.append(f"{where}unknown key '{dotted}'{hint}")
            continue
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        problems.append(f"{where}'{dotted}'{shown}: {msg}")
    return problems
