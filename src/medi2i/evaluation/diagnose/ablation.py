"""Ablations: the ``ablation`` rule (what D and R add against a baseline, with intervals) and
the same-seed, same-budget plans for a missing ablation, as commands (``medi2i diagnose
--run-ablation`` trains them).

The rule is a pure function returning a :class:`~medi2i.evaluation.diagnose.report.Decision`:
the comparison's outcome and caveats as ``{"case": ...}`` dicts, the missing ablations as argv
lists; :mod:`~medi2i.evaluation.diagnose.wording` words them."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from medi2i.evaluation.diagnose.comparison import _outcome
from medi2i.evaluation.diagnose.evidence import _config_differences, _train_argv
from medi2i.evaluation.diagnose.report import (
    NOT_APPLICABLE,
    NOT_TRIGGERED,
    TRIGGERED,
    Decision,
)
from medi2i.evaluation.diagnose.thresholds import RULE_ABLATION
from medi2i.evaluation.runs import RunRecord, finite_or_none

#: Config keys that may also differ when the ablation removes that arm (besides
#: :data:`~medi2i.evaluation.diagnose.evidence._COMMON_FREE`).
_ARM_FREE = {
    "D": ("model.D.", "loss.gan_", "loss.feat_match_weight", "loss.r1_", "optim.D."),
    "R": ("model.R.", "loss.smooth", "optim.R."),
}


@dataclass(frozen=True)
class AblationPlan:
    """A same-seed, same-budget ablation of a run, as a command to run.

    Attributes:
        arm: what is removed (``D`` or ``R``).
        run: the run directory it ablates.
        config: the run's ``config.yaml``.
        overrides: config overrides that remove the arm.
        out: where the ablation is written.
    """

    arm: str
    run: str
    config: str
    overrides: tuple[str, ...]
    out: str

    @property
    def argv(self) -> list[str]:
        """The command as an argument list: ``medi2i train --config ... --out ...``."""
        return _train_argv(self.config, self.overrides, self.out)

    @property
    def command(self) -> str:
        """The command as a shell command line."""
        return shlex.join(self.argv)


def ablation_plans(run: RunRecord, arms: Sequence[str] | None = None) -> list[AblationPlan]:
    """Same-seed, same-budget ablations of a run, built from its own ``config.yaml``.

    Args:
        run: the run to ablate.
        arms: ``D`` and/or ``R`` (default: every network the run trained besides G).

    Returns:
        One plan per arm the run has: ``medi2i train --config RUN/config.yaml
        model.D.enabled=false --out RUN-noD`` (and ``model.R.enabled=false`` / ``RUN-noR``).
    """
    wanted = [
        a for a in (arms or ("D", "R")) if (a == "D" and run.has_D) or (a == "R" and run.has_R)
    ]
    return [
        AblationPlan(
            arm,
            str(run.path),
            str(run.config_path),
            (f"model.{arm}.enabled=false",),
            f"{run.path}-no{arm}",
        )
        for arm in wanted
    ]


def _arm(run: RunRecord, base: RunRecord) -> str:
    """What a baseline ablates: ``D``, ``R``, ``R and D``, or ``setup`` (same networks)."""
    d = run.has_D and not base.has_D
    r = run.has_R and not base.has_R
    if run.has_D == base.has_D and run.has_R == base.has_R:
        return "setup"
    if d and r:
        return "R and D"
    if d and run.has_R == base.has_R:
        return "D"
    if r and run.has_D == base.has_D:
        return "R"
    return "mixed"


def _rule_ablation(
    runs: Sequence[RunRecord],
    bases: Sequence[RunRecord],
    comparison: dict[str, Any] | None,
    unstable: Sequence[str],
) -> Decision:
    run = runs[0]
    if not run.has_D and not run.has_R and not bases:
        return Decision(RULE_ABLATION, NOT_APPLICABLE, "g_only", detail={"mode": run.mode})
    evidence: dict[str, Any] = {"baselines": [b.name for b in bases]}
    detail: dict[str, Any] = {}
    triggered = False
    arm = _arm(run, bases[0]) if bases else None
    covered = {"D": arm in ("D", "R and D"), "R": arm in ("R", "R and D")}
    compared = bool(bases) and comparison is not None
    if compared:
        metrics = comparison["metrics"]
        who = arm if arm in ("D", "R", "R and D") else None  # None: this run's setup
        outcome = {"case": _outcome(metrics), "arm": who}
        evidence.update(
            arm=arm,
            source=comparison["source"],
            outcome=outcome,
            metrics={k: asdict(v) for k, v in metrics.items()},
        )
        detail["baseline_mode"] = bases[0].mode
        if who is not None and "D" in who and outcome["case"] != "adds":
            triggered = True
        caveats = list(comparison["caveats"])
        if arm == "mixed":
            caveats.append(
                {"case": "mixed_baseline", "run_mode": run.mode, "base_mode": bases[0].mode}
            )
        if any(b.mode != bases[0].mode for b in bases):
            caveats.append({"case": "baseline_modes_differ"})
        free = [p for a, on in covered.items() if on for p in _ARM_FREE[a]]
        diffs = _config_differences(run, bases[0], free)
        if len(runs) > 1 or len(bases) > 1:
            diffs.pop("seed", None)
        if diffs:
            evidence["config_differences"] = diffs
            caveats.append({"case": "config_differs", "differences": dict(list(diffs.items())[:4])})
        run_steps = finite_or_none(run.summary.get("steps"))
        base_steps = finite_or_none(bases[0].summary.get("steps"))
        if run_steps and base_steps and run_steps != base_steps:
            caveats.append({"case": "budgets_differ", "steps": [run_steps, base_steps]})
        evidence["steps"] = [run_steps, base_steps]
        if unstable:
            caveats.append({"case": "unstable_arm", "names": list(unstable)})
            triggered = True
        if caveats:
            evidence["caveats"] = caveats
    missing = [p for r in runs for p in ablation_plans(r) if not covered[p.arm]]
    if missing:
        arms = sorted({p.arm for p in missing})
        # a missing ablation of D is always worth acting on (D is what diagnose judges); one of R
        # only when R is the run's sole addition to G
        triggered = triggered or "D" in arms or not run.has_D
        evidence["commands"] = [p.argv for p in missing]
        detail["missing_arms"] = arms
    if compared:
        case = "compared_missing" if missing else "compared"
    else:
        case = "missing" if missing else "nothing"
    return Decision(
        RULE_ABLATION, TRIGGERED if triggered else NOT_TRIGGERED, case, evidence, detail
    )
