"""Ablations: the ``ablation`` rule (what D and R add against a baseline, with intervals) and
the same-seed, same-budget plans for a missing ablation, as commands (``medi2i diagnose
--run-ablation`` trains them)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from medi2i.evaluation.diagnose.comparison import _comparison_text, _outcome
from medi2i.evaluation.diagnose.evidence import _config_differences, _names
from medi2i.evaluation.diagnose.report import Finding, _fmt
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
        command: the shell command (``medi2i train ...``).
    """

    arm: str
    run: str
    config: str
    overrides: tuple[str, ...]
    out: str
    command: str


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
    plans = []
    for arm in wanted:
        overrides = (f"model.{arm}.enabled=false",)
        out = f"{run.path}-no{arm}"
        command = " ".join(
            [
                "medi2i train --config",
                shlex.quote(str(run.config_path)),
                *overrides,
                "--out",
                shlex.quote(out),
            ]
        )
        plans.append(
            AblationPlan(arm, str(run.path), str(run.config_path), overrides, out, command)
        )
    return plans


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
) -> Finding:
    run = runs[0]
    if not run.has_D and not run.has_R and not bases:
        return Finding(
            RULE_ABLATION,
            False,
            f"Not applicable: this run trains G alone ({run.mode}) and no baseline was given.",
            applicable=False,
        )
    evidence: dict[str, Any] = {"baselines": [b.name for b in bases]}
    texts: list[str] = []
    triggered = False
    arm = _arm(run, bases[0]) if bases else None
    covered = {"D": arm in ("D", "R and D"), "R": arm in ("R", "R and D")}
    if bases and comparison is not None:
        metrics = comparison["metrics"]
        who = "D" if arm == "D" else "R" if arm == "R" else "R and D" if arm == "R and D" else None
        outcome = _outcome(metrics, who or "this run's setup")
        evidence.update(
            arm=arm,
            source=comparison["source"],
            outcome=outcome,
            metrics={k: asdict(v) for k, v in metrics.items()},
        )
        texts.append(
            f"Against {_names(bases)} ({bases[0].mode}; run - baseline, {comparison['source']}): "
            f"{_comparison_text(metrics) or 'no comparable lung metrics'} -> {outcome}."
        )
        if who is not None and "D" in who and "adds measurable quality" not in outcome:
            triggered = True
        caveats = list(comparison["caveats"])
        if arm == "mixed":
            caveats.append(
                f"the baseline ({bases[0].mode}) is not the run ({run.mode}) with networks "
                "removed, so it ablates nothing cleanly"
            )
        if any(b.mode != bases[0].mode for b in bases):
            caveats.append("the baselines do not all train the same networks")
        free = [p for a, on in covered.items() if on for p in _ARM_FREE[a]]
        diffs = _config_differences(run, bases[0], free)
        if len(runs) > 1 or len(bases) > 1:
            diffs.pop("seed", None)
        if diffs:
            evidence["config_differences"] = diffs
            shown = ", ".join(
                f"{k} ({_fmt(a)} vs {_fmt(b)})" for k, (a, b) in list(diffs.items())[:4]
            )
            caveats.append(f"not a clean ablation, it also differs in {shown}")
        run_steps = finite_or_none(run.summary.get("steps"))
        base_steps = finite_or_none(bases[0].summary.get("steps"))
        if run_steps and base_steps and run_steps != base_steps:
            caveats.append(f"budgets differ ({run_steps:.0f} vs {base_steps:.0f} steps)")
        evidence["steps"] = [run_steps, base_steps]
        if unstable:
            caveats.append(
                f"not trustworthy: {', '.join(unstable)} trained unstably (see unstable_training)"
                " - an ablation is only as honest as its weakest arm"
            )
            triggered = True
        if caveats:
            evidence["caveats"] = caveats
            texts.append("Caveat: " + "; ".join(caveats) + ".")
    missing = [p for r in runs for p in ablation_plans(r) if not covered[p.arm]]
    if missing:
        arms = sorted({p.arm for p in missing})
        # a missing ablation of D is always worth acting on (D is what diagnose judges); one of R
        # only when R is the run's sole addition to G
        triggered = triggered or "D" in arms or not run.has_D
        evidence["commands"] = [p.command for p in missing]
        if "D" in arms:
            texts.append(
                "No baseline without D was given, so the verdict about D is provisional: D's "
                "outputs alone cannot prove D useful or useless. Run the same-seed, same-budget "
                "ablation and pass it as --baseline:"
            )
        else:
            texts.append("No baseline without R was given; the ablation that shows what R adds:")
        texts.append("; ".join(p.command for p in missing) + ".")
        if "D" in arms and "R" in arms:
            texts.append("(The run without R shows what registration adds.)")
    if not texts:
        texts.append("Nothing to compare.")
    return Finding(RULE_ABLATION, triggered, " ".join(texts), evidence)
