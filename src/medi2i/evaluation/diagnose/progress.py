"""The ``still_improving`` rule, a heuristic on the validation trend: a run (or its G-only
baseline) still improving at the end should train longer before runs are compared."""

from __future__ import annotations

from typing import Any

import numpy as np

from medi2i.evaluation.diagnose.evidence import _round
from medi2i.evaluation.diagnose.report import Finding
from medi2i.evaluation.diagnose.thresholds import RULE_STILL_IMPROVING, SLOPE_DB_PER_EPOCH
from medi2i.evaluation.runs import RunRecord, finite_or_none


def _progress(run: RunRecord, n: int) -> dict[str, Any]:
    """Slope of validation lung PSNR over the last ``n`` epochs and whether best == last."""
    key = "val_psnr_mask" if run.has_key("val_psnr_mask") else "val_psnr"
    x, y = run.series(key)
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    x, y = x[-n:], y[-n:]
    slope = float(np.polyfit(x, y, 1)[0]) if x.size >= 2 and np.ptp(x) > 0 else None
    last = run.epochs_done
    best_epoch = run.best.get("epoch")
    best_epoch = int(best_epoch) if finite_or_none(best_epoch) is not None else None
    return {
        "metric": key,
        "slope_db_per_epoch": _round(slope),
        "slope_threshold (heuristic)": SLOPE_DB_PER_EPOCH,
        "epochs": [int(v) for v in x],
        "values": [_round(v) for v in y],
        "best_epoch": best_epoch,
        "last_epoch": last,
        "improving": bool(
            (slope is not None and slope > SLOPE_DB_PER_EPOCH)
            or (best_epoch is not None and best_epoch == last and last > 0)
        ),
    }


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


def _rule_still_improving(run: RunRecord, base: RunRecord | None, n: int) -> Finding:
    mine = _progress(run, n)
    evidence: dict[str, Any] = {"run": mine}
    if not mine["epochs"]:
        return Finding(
            RULE_STILL_IMPROVING,
            False,
            "Not evaluated: validation PSNR not logged in the epoch log.",
            evidence,
            applicable=False,
        )
    base_p = None
    if base is not None and not base.has_D:
        base_p = _progress(base, n)
        evidence["baseline"] = {"name": base.name, **base_p}
    texts = []
    heuristic = f"(a heuristic: slope > {SLOPE_DB_PER_EPOCH} dB/epoch or best epoch = last)"
    if mine["improving"]:
        if run.has_D:
            texts.append(
                f"This run looks still improving at the end ({_progress_text(mine)}) {heuristic}: "
                "train longer before judging D, and compare runs at equal budgets."
            )
        else:
            texts.append(
                f"G-only looks still improving at the end ({_progress_text(mine)}) {heuristic}: "
                "train it longer - exp4_g_only_long.yaml (no D, 100+ epochs) - since it is the "
                "baseline D must beat."
            )
    if base_p is not None and base_p["improving"]:
        texts.append(
            f"The G-only baseline {base.name} itself looks still improving "
            f"({_progress_text(base_p)}): the comparison with it is premature; train it longer "
            "(exp4_g_only_long.yaml, 100+ epochs)."
        )
    triggered = bool(texts)
    if not triggered:
        texts.append(f"Converged for its budget ({_progress_text(mine)}).")
    return Finding(RULE_STILL_IMPROVING, triggered, " ".join(texts), evidence)
