"""The diagnosis as data and as text: :class:`Decision` (what one rule decided, as data),
:class:`Finding` (a decision with its wording), :class:`Diagnosis` (every rule's finding for one
run) and :func:`format_diagnosis`, the layout of ``medi2i diagnose``'s report, with the number
formatting the wording shares. The rules' sentences are in
:mod:`~medi2i.evaluation.diagnose.wording`."""

from __future__ import annotations

import math
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medi2i.evaluation.diagnose.thresholds import RULES
from medi2i.evaluation.runs import finite_or_none

# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


TRIGGERED = "triggered"
"""The rule's condition holds: the run has the problem the rule looks for."""
NOT_TRIGGERED = "not_triggered"
"""The rule was applied and its condition does not hold."""
NOT_APPLICABLE = "not_applicable"
"""The rule does not concern this run (e.g. a rule about D for a run without D)."""
NOT_EVALUATED = "not_evaluated"
"""The rule concerns this run, but what it needs is missing or another finding blocks it."""


@dataclass(frozen=True)
class Decision:
    """What one rule decided about a run, as data only (no sentences).

    Attributes:
        rule: the rule's id (a key of :data:`RULES`).
        status: :data:`TRIGGERED`, :data:`NOT_TRIGGERED`, :data:`NOT_APPLICABLE` or
            :data:`NOT_EVALUATED`.
        case: which branch of the rule decided, a short key unique within the rule (e.g.
            ``r_off``); the wording has one text per ``(rule, case)``.
        evidence: the numbers and names shown under the verdict. Suggested commands are argv
            lists (``commands``); the ablation's ``outcome`` and ``caveats`` are
            ``{"case": ..., ...}`` dicts; the wording renders both as text.
        detail: further values only the wording needs (unrounded numbers, names, modes).
    """

    rule: str
    status: str
    case: str
    evidence: dict[str, Any] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def triggered(self) -> bool:
        """Whether the rule's condition holds."""
        return self.status == TRIGGERED

    @property
    def applicable(self) -> bool:
        """Whether the run could be judged by this rule."""
        return self.status in (TRIGGERED, NOT_TRIGGERED)


@dataclass
class Finding:
    """One rule applied to a run, with its wording (made by
    :func:`~medi2i.evaluation.diagnose.wording.word` from a :class:`Decision`).

    Attributes:
        rule: the rule's id (a key of :data:`RULES`).
        triggered: whether the rule's condition holds.
        verdict: what it means and what to do, in plain words.
        evidence: the numbers the verdict rests on (thresholds included), commands as shell
            command lines.
        applicable: False when the run cannot be judged by this rule (e.g. no D, nothing logged).
        status: the decision's status (:data:`TRIGGERED`, :data:`NOT_TRIGGERED`,
            :data:`NOT_APPLICABLE` or :data:`NOT_EVALUATED`).
        case: which branch of the rule decided (see :attr:`Decision.case`).
    """

    rule: str
    triggered: bool
    verdict: str
    evidence: dict[str, Any]
    applicable: bool
    status: str
    case: str

    @property
    def title(self) -> str:
        """The rule's one-line title."""
        return RULES.get(self.rule, self.rule)


@dataclass
class Diagnosis:
    """The verdicts of every rule for one run (or one group of seeds).

    Attributes:
        run: the run directory (the first one when several seeds are given).
        label: what was trained (e.g. ``"G+D fm=10.0 gan=1.0"``).
        mode: ``G``, ``G+R``, ``G+D`` or ``G+R+D``.
        baseline: the (first) baseline run, or None.
        epochs_used: the epochs the "last epochs" means cover.
        findings: one :class:`Finding` per rule, in :data:`RULES` order.
        notes: caveats that apply to the whole diagnosis.
        runs: every run of the judged side (seeds).
        baselines: every baseline run.
        setup: pairs, R and D conditioning as the diagnosis understood them.
        decision_source: where the run's quality numbers come from (always validation).
        test_report: the run's test metrics, for reference only (never used by a rule).
    """

    run: str
    label: str
    mode: str
    baseline: str | None
    epochs_used: list[int]
    findings: list[Finding]
    notes: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    baselines: list[str] = field(default_factory=list)
    setup: dict[str, Any] = field(default_factory=dict)
    decision_source: str = ""
    test_report: dict[str, float] | None = None

    def finding(self, rule: str) -> Finding:
        """The finding of one rule.

        Raises:
            KeyError: unknown rule id.
        """
        for f in self.findings:
            if f.rule == rule:
                return f
        raise KeyError(f"no finding for rule {rule!r}; rules: {', '.join(RULES)}")

    @property
    def triggered(self) -> list[Finding]:
        """The findings whose condition holds."""
        return [f for f in self.findings if f.triggered]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN kept as float NaN)."""
        return asdict(self)


# --------------------------------------------------------------------------------------------
# the report's layout and number formatting
# --------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    """Compact number formatting for verdicts and evidence."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4g}"
    return str(value)


def _signed(value: float, digits: int = 3, unit: str = "") -> str:
    """``+1.234`` style; tiny values in two significant digits instead of ``+0.000``."""
    if value != 0 and abs(value) < 10**-digits:
        return f"{value:+.2g}{unit}"
    return f"{value:+.{digits}f}{unit}"


def _setup_text(setup: dict[str, Any]) -> str:
    misaligned = setup["pairs_misaligned"]
    pairs = (
        f"pairs: alignment {setup['pairs_reason']}"
        if misaligned is None
        else f"pairs {'misaligned' if misaligned else 'aligned'} ({setup['pairs_reason']})"
    )
    if misaligned and setup["train_target"] == "aligned":
        pairs += ", G trained on the aligned targets"
    parts = [pairs, f"R {'on' if setup['R'] else 'off'}"]
    if setup["D"]:
        cond = setup["D_conditional"]
        state = "conditional" if cond else "unconditional" if cond is not None else "conditioning"
        parts.append(f"D {state} ({setup['D_conditional_source']})")
    else:
        parts.append("no D")
    return "; ".join(parts)


def _fmt_any(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt_any(v) for v in value) + "]"
    return _fmt(value)


def _evidence_lines(evidence: dict[str, Any], indent: str, width: int) -> list[str]:
    """``key=value`` lines, nested dicts as indented sub-blocks, wrapped at ``width``."""
    flat = [
        f"{k}={_fmt_any(v)}"
        for k, v in evidence.items()
        if not isinstance(v, dict) and k != "commands"
    ]
    lines = textwrap.wrap(
        ", ".join(flat), width, initial_indent=indent, subsequent_indent=indent + "  "
    )
    for key, value in evidence.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines.extend(_evidence_lines(value, indent + "  ", width))
    return lines


def format_diagnosis(diagnosis: Diagnosis, *, evidence: bool = True, width: int = 100) -> str:
    """Human-readable verdicts, one block per rule: ``[!]`` triggered, ``[ok]``, ``[n/a]``.

    Args:
        diagnosis: what :func:`diagnose_run` returned.
        evidence: include the evidence lines under each verdict.
        width: wrap verdicts at this many columns.

    Returns:
        Multi-line text (no trailing newline).
    """
    name = Path(diagnosis.run).name
    span = (
        f"epochs {diagnosis.epochs_used[0]}-{diagnosis.epochs_used[-1]}"
        if diagnosis.epochs_used
        else "no epochs"
    )
    lines = [f"Diagnosis of {name} ({diagnosis.label}); log means over {span}"]
    if len(diagnosis.runs) > 1:
        lines.append("Seeds: " + ", ".join(Path(r).name for r in diagnosis.runs))
    lines.append(
        "Baseline: " + ", ".join(Path(b).name for b in diagnosis.baselines)
        if diagnosis.baselines
        else "Baseline: none (no ablation)"
    )
    if diagnosis.setup:
        lines.extend(
            textwrap.wrap("Setup: " + _setup_text(diagnosis.setup), width, subsequent_indent="  ")
        )
    lines.append(f"Decisions use validation metrics ({diagnosis.decision_source}), never test.")
    if diagnosis.test_report:
        shown = ", ".join(
            f"{label} {_fmt(v)}"
            for key, label in (
                ("psnr_mask", "lung PSNR"),
                ("hfen_mask", "lung HFEN"),
                ("gmsd_mask", "lung GMSD"),
            )
            if (v := finite_or_none(diagnosis.test_report.get(key))) is not None
        )
        if shown:
            lines.append(f"Test metrics, for reference only: {shown}.")
    for note in diagnosis.notes:
        lines.extend(textwrap.wrap(f"Note: {note}", width, subsequent_indent="      "))
    for f in diagnosis.findings:
        mark = "[!]" if f.triggered else "[ok]" if f.applicable else "[n/a]"
        lines.append("")
        lines.append(f"{mark} {f.title} ({f.rule})")
        lines.extend(
            textwrap.wrap(
                f.verdict,
                width,
                initial_indent="    ",
                subsequent_indent="    ",
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
        # commands unwrapped, so that they can be copied whole
        lines.extend(f"    $ {command}" for command in f.evidence.get("commands", []))
        if evidence and f.evidence:
            lines.extend(_evidence_lines(f.evidence, "      ", width))
    triggered = diagnosis.triggered
    lines.append("")
    lines.append(
        "Triggered: " + ", ".join(f.rule for f in triggered) if triggered else "Triggered: none"
    )
    return "\n".join(lines)
