"""Reading the evidence from a run: means of its logged series over the last epochs, its
validation metrics, its setup (pairs, R, D conditioning), its loss jumps and how its config
differs from another run's; the pieces the rules share (the ``no_d`` decision of a rule about
D, a suggested ``medi2i train`` command as an argv list)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medi2i.evaluation.diagnose.report import NOT_APPLICABLE, Decision
from medi2i.evaluation.runs import RunRecord, finite_or_none
from medi2i.run.scalars import EPOCH
from medi2i.run.stability import WATCHED_KEYS, find_instabilities


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    if value == 0:
        return 0.0
    return float(f"{value:.{digits}g}")


def _last_rows(run: RunRecord, n: int) -> list[dict]:
    """The last ``n`` epoch rows (fewer when the run is shorter)."""
    rows = sorted(run.epochs, key=lambda r: r.get(EPOCH, 0))
    return rows[-n:] if n > 0 else rows


def _mean_last(run: RunRecord, key: str, n: int) -> float | None:
    """Mean of the finite values of ``key`` over the last ``n`` epochs, None if none."""
    values = [finite_or_none(r.get(key)) for r in _last_rows(run, n)]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _mean_last_steps(run: RunRecord, key: str, n: int) -> float | None:
    """Mean of ``key`` over the step rows of the last ``n`` epochs (all rows when the steps
    per epoch are unknown), None if none."""
    x, y = run.series(key, source="steps")
    ok = np.isfinite(y)
    if run.steps_per_epoch and x.size:
        ok &= x > run.epochs_done - n
    return float(y[ok].mean()) if ok.any() else None


def _metric(metrics: dict, name: str) -> float | None:
    """``name`` from a metrics dict, falling back to the whole-image value for ``*_mask``."""
    value = finite_or_none(metrics.get(name))
    if value is None and name.endswith("_mask"):
        value = finite_or_none(metrics.get(name[: -len("_mask")]))
    return value


def _setup(run: RunRecord) -> dict[str, Any]:
    pairs = run.pairs
    conditional, source = run.d_conditional
    return {
        "pairs_misaligned": pairs["misaligned"],
        "pairs_reason": pairs["reason"],
        "train_target": pairs["train_target"],
        "R": run.has_R,
        "D": run.has_D,
        "D_conditional": conditional,
        "D_conditional_source": source,
    }


def _instabilities(run: RunRecord) -> tuple[list[dict[str, Any]] | None, str]:
    """The run's loss jumps: its own record (summary.json), else found in its epoch log."""
    recorded = run.instabilities
    if recorded is not None:
        return recorded, "summary.json"
    if not any(run.has_key(k) for k in WATCHED_KEYS):
        return None, "not logged (no instabilities in summary.json, no loss or PSNR in the log)"
    return [j.to_dict() for j in find_instabilities(run.epochs)], "epoch log"


#: Config keys that may differ between a run and an ablation of one arm without spoiling it.
_COMMON_FREE = (
    "train.out_dir",
    "train.device",
    "train.progress",
    "logging.",
    "data.num_workers",
    "data.pin_memory",
    "data.root",
    "data.manifest",
)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return out


def _config_differences(
    run: RunRecord, base: RunRecord, free: Sequence[str] = (), limit: int = 8
) -> dict[str, list]:
    """Config keys present in both (other than ``free`` prefixes) whose values differ."""
    a, b = _flatten(run.config), _flatten(base.config)
    skip = (*_COMMON_FREE, *free)
    diffs: dict[str, list] = {}
    for key in sorted(set(a) & set(b)):  # a key missing on one side: an older/partial config
        if key.startswith(skip):
            continue
        if a.get(key) != b.get(key):
            diffs[key] = [a.get(key), b.get(key)]
        if len(diffs) >= limit:
            break
    return diffs


def _names(runs: Sequence[RunRecord]) -> str:
    return ", ".join(r.name for r in runs)


def _without_d(rule: str, run: RunRecord) -> Decision | None:
    """The ``no_d`` decision of a rule about D for a run without D, else None."""
    if run.has_D:
        return None
    return Decision(rule, NOT_APPLICABLE, "no_d", detail={"mode": run.mode})


def _train_argv(config: str, overrides: Sequence[str], out: str) -> list[str]:
    """``medi2i train --config CONFIG OVERRIDES... --out OUT`` as an argument list."""
    return ["medi2i", "train", "--config", config, *overrides, "--out", out]
