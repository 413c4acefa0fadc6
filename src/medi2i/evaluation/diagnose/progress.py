"""The ``still_improving`` rule, a heuristic on the validation trend: a run (or its G-only
baseline) still improving at the end should train longer before runs are compared.

The rule is a pure function returning a :class:`~medi2i.evaluation.diagnose.report.Decision`;
:mod:`~medi2i.evaluation.diagnose.wording` words it."""

from __future__ import annotations

from typing import Any

import numpy as np

from medi2i.evaluation.diagnose.evidence import _round
from medi2i.evaluation.diagnose.report import (
    NOT_EVALUATED,
    NOT_TRIGGERED,
    TRIGGERED,
    Decision,
)
from medi2i.evaluation.diagnose.thresholds import RULE_STILL_IMPROVING, SLOPE_DB_PER_EPOCH
from medi2i.evaluation.runs import RunRecord, finite_or_none
from medi2i.run.scalars import val_key


def _progress(run: RunRecord, n: int) -> dict[str, Any]:
    """Slope of validation lung PSNR over the last ``n`` epochs and whether best == last."""
    lung = val_key("psnr_mask")
    key = lung if run.has_key(lung) else val_key("psnr")
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


def _rule_still_improving(run: RunRecord, base: RunRecord | None, n: int) -> Decision:
    mine = _progress(run, n)
    evidence: dict[str, Any] = {"run": mine}
    detail = {"has_D": run.has_D}
    if not mine["epochs"]:
        return Decision(RULE_STILL_IMPROVING, NOT_EVALUATED, "not_logged", evidence, detail)
    base_improving = False
    if base is not None and not base.has_D:
        base_p = _progress(base, n)
        evidence["baseline"] = {"name": base.name, **base_p}
        base_improving = base_p["improving"]
    if mine["improving"]:
        case = "both_improving" if base_improving else "run_improving"
    else:
        case = "baseline_improving" if base_improving else "converged"
    status = NOT_TRIGGERED if case == "converged" else TRIGGERED
    return Decision(RULE_STILL_IMPROVING, status, case, evidence, detail)
