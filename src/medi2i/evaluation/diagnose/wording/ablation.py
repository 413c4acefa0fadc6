"""The ``ablation`` rule in words: the comparison with the baseline, its outcome and caveats,
and the missing ablations' commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medi2i.evaluation.diagnose.report import Decision, _fmt, _signed
from medi2i.evaluation.diagnose.thresholds import DECISION_METRICS

_OUTCOMES = {
    "none": "no comparable validation metrics",
    "no_ci": "undecided: no confidence interval, so no verdict about {arm}",
    "adds": "{arm} adds measurable quality",
    "mixed": "mixed: {arm} trades one measure for another",
    "worse": "{arm} made the result worse",
    "no_difference": "no measurable difference from {arm} (within noise)",
}

_CAVEATS: dict[str, Callable[[dict[str, Any]], str]] = {
    "validation_sets_differ": lambda c: (
        f"the runs' validation sets differ; {c['common']} images common to all are compared"
    ),
    "references_differ": lambda c: (
        f"the runs were measured against different references ({', '.join(c['references'])}), "
        "so their numbers are not comparable"
    ),
    "units_differ": lambda c: (
        "the runs normalise intensities differently; PSNR/HFEN/GMSD differ in scale"
    ),
    "mixed_baseline": lambda c: (
        f"the baseline ({c['base_mode']}) is not the run ({c['run_mode']}) with networks "
        "removed, so it ablates nothing cleanly"
    ),
    "baseline_modes_differ": lambda c: "the baselines do not all train the same networks",
    "config_differs": lambda c: (
        "not a clean ablation, it also differs in "
        + ", ".join(f"{k} ({_fmt(a)} vs {_fmt(b)})" for k, (a, b) in c["differences"].items())
    ),
    "budgets_differ": lambda c: (
        f"budgets differ ({c['steps'][0]:.0f} vs {c['steps'][1]:.0f} steps)"
    ),
    "unstable_arm": lambda c: (
        f"not trustworthy: {', '.join(c['names'])} trained unstably (see unstable_training)"
        " - an ablation is only as honest as its weakest arm"
    ),
}


def _caveat_texts(caveats: list[dict[str, Any]]) -> list[str]:
    return [_CAVEATS[c["case"]](c) for c in caveats]


def _outcome_text(outcome: dict[str, Any] | None) -> str | None:
    if outcome is None:
        return None
    return _OUTCOMES[outcome["case"]].format(arm=outcome["arm"] or "this run's setup")


def _comparison_text(metrics: dict[str, dict[str, Any]]) -> str:
    """``lung PSNR +0.50 dB [-0.10, +1.10] (within noise), ...`` from the metrics' dicts."""
    parts = []
    for metric, _, name, unit in DECISION_METRICS:
        c = metrics.get(metric)
        if c is None or c["delta"] is None:
            continue
        digits = 2 if unit else 4  # dB to 0.01; HFEN/GMSD are fractions
        text = f"{name} {_signed(c['delta'], digits, unit)}"
        if c["ci_low"] is not None and c["ci_high"] is not None:
            text += f" [{_signed(c['ci_low'], digits)}, {_signed(c['ci_high'], digits)}]"
        parts.append(f"{text} ({c['verdict']})")
    return ", ".join(parts)


def _ablation(d: Decision, ev: dict[str, Any]) -> str:
    texts = []
    if d.case in ("compared", "compared_missing"):
        texts.append(
            f"Against {', '.join(ev['baselines'])} ({d.detail['baseline_mode']}; run - "
            f"baseline, {ev['source']}): "
            f"{_comparison_text(ev['metrics']) or 'no comparable lung metrics'} -> "
            f"{ev['outcome']}."
        )
        if ev.get("caveats"):
            texts.append("Caveat: " + "; ".join(ev["caveats"]) + ".")
    if d.case in ("compared_missing", "missing"):
        arms = d.detail["missing_arms"]
        if "D" in arms:
            texts.append(
                "No baseline without D was given, so the verdict about D is provisional: D's "
                "outputs alone cannot prove D useful or useless. Run the same-seed, same-budget "
                "ablation and pass it as --baseline:"
            )
        else:
            texts.append("No baseline without R was given; the ablation that shows what R adds:")
        texts.append("; ".join(ev["commands"]) + ".")
        if "D" in arms and "R" in arms:
            texts.append("(The run without R shows what registration adds.)")
    return " ".join(texts)
