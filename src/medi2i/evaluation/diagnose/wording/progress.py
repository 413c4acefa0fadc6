"""The ``still_improving`` rule in words: the validation trend of the run and of its G-only
baseline."""

from __future__ import annotations

from typing import Any

from medi2i.evaluation.diagnose.report import Decision
from medi2i.evaluation.diagnose.thresholds import SLOPE_DB_PER_EPOCH


def _progress_text(p: dict[str, Any]) -> str:
    parts = []
    if p["slope_db_per_epoch"] is not None:
        parts.append(
            f"{p['metric']} {p['slope_db_per_epoch']:+.2f} dB/epoch over epochs "
            f"{p['epochs'][0]}-{p['epochs'][-1]}"
        )
    else:
        parts.append(f"only {len(p['epochs'])} validated epoch(s), no trend")
    if p["best_epoch"] is not None:
        rel = "=" if p["best_epoch"] == p["last_epoch"] else "<"
        parts.append(f"best epoch {p['best_epoch']} {rel} last {p['last_epoch']}")
    return ", ".join(parts)


def _still_improving(d: Decision, ev: dict[str, Any]) -> str:
    if d.case == "converged":
        return f"Converged for its budget ({_progress_text(ev['run'])})."
    texts = []
    heuristic = f"(a heuristic: slope > {SLOPE_DB_PER_EPOCH} dB/epoch or best epoch = last)"
    if d.case in ("run_improving", "both_improving"):
        shown = _progress_text(ev["run"])
        if d.detail["has_D"]:
            texts.append(
                f"This run looks still improving at the end ({shown}) {heuristic}: "
                "train longer before judging D, and compare runs at equal budgets."
            )
        else:
            texts.append(
                f"G-only looks still improving at the end ({shown}) {heuristic}: "
                "train it longer - exp4_g_only_long.yaml (no D, 100+ epochs) - since it is the "
                "baseline D must beat."
            )
    if d.case in ("baseline_improving", "both_improving"):
        base = ev["baseline"]
        texts.append(
            f"The G-only baseline {base['name']} itself looks still improving "
            f"({_progress_text(base)}): the comparison with it is premature; train it longer "
            "(exp4_g_only_long.yaml, 100+ epochs)."
        )
    return " ".join(texts)
