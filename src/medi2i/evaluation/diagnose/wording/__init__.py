"""The wording of ``medi2i diagnose``: every sentence of the rules' verdicts, and :func:`word`,
which turns a rule's :class:`~medi2i.evaluation.diagnose.report.Decision` into the
:class:`~medi2i.evaluation.diagnose.report.Finding` the report shows.

:data:`_TEXTS` holds one entry per ``(rule, case)``: a template filled from the shown evidence
and the decision's detail, or the rule's function for the cases whose sentence is assembled
from parts (in the submodules named after the rules' modules: :mod:`.rules`, :mod:`.ablation`,
:mod:`.weights`, :mod:`.progress`). The shown evidence is the decision's, with suggested commands
joined into shell command lines and the ablation's outcome and caveats put into words.

Rules: this package judges nothing about a run - which branch fired, and every comparison with a
rule's threshold, comes from the decision; it chooses words, number formats and which of the
decision's numbers to mention. A ``(rule, case)`` without an entry is an error, never a silent
default.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

from medi2i.evaluation.diagnose.report import Decision, Finding
from medi2i.evaluation.diagnose.thresholds import (
    RULE_ABLATION,
    RULE_BLURRY,
    RULE_CONDITIONAL_D,
    RULE_D_CLIPPING,
    RULE_D_INEFFECTIVE,
    RULE_DIVERGED,
    RULE_MISALIGNED,
    RULE_STILL_IMPROVING,
    RULE_UNSTABLE,
)
from medi2i.evaluation.diagnose.wording.ablation import _ablation, _caveat_texts, _outcome_text
from medi2i.evaluation.diagnose.wording.progress import _still_improving
from medi2i.evaluation.diagnose.wording.rules import (
    _d_clipping,
    _d_ineffective,
    _diverged,
    _misaligned,
    _unstable,
)
from medi2i.evaluation.diagnose.wording.weights import _blurry

Text = Callable[[Decision, dict[str, Any]], str]


def _command_lines(commands: list[list[str]]) -> list[str]:
    return [shlex.join(argv) for argv in commands]


_SHOWN: dict[tuple[str, str], Callable[[Any], Any]] = {
    (RULE_MISALIGNED, "commands"): _command_lines,
    (RULE_ABLATION, "commands"): _command_lines,
    (RULE_ABLATION, "outcome"): _outcome_text,
    (RULE_ABLATION, "caveats"): _caveat_texts,
    (RULE_D_INEFFECTIVE, "ablation"): _outcome_text,
}
"""``(rule, evidence key) -> function`` for the evidence whose decision value is data that the
report shows in words or as a shell command line."""


_NO_D = "Not applicable: this run has no discriminator ({mode})."

_TEXTS: dict[tuple[str, str], str | Text] = {
    (RULE_DIVERGED, "not_logged"): "Not evaluated: neither summary.json nor the epoch log is "
    "there.",
    (RULE_DIVERGED, "finite"): "No non-finite step or validation value.",
    (RULE_DIVERGED, "non_finite"): _diverged,
    (RULE_MISALIGNED, "unknown"): "Not evaluated: whether the pairs are misaligned is {reason}.",
    (RULE_MISALIGNED, "aligned"): "Pairs are aligned ({reason}).",
    (RULE_MISALIGNED, "r_on"): "Pairs are misaligned ({reason}) and R is on: G's output is warped "
    "onto each target before the reconstruction loss.",
    (RULE_MISALIGNED, "aligned_targets"): "Pairs are misaligned ({reason}) and R is off, but G "
    "trains against the aligned targets (data.train_target=aligned), so the misalignment never "
    "reaches its loss.",
    (RULE_MISALIGNED, "r_off"): _misaligned,
    (RULE_CONDITIONAL_D, "no_d"): _NO_D,
    (RULE_CONDITIONAL_D, "unknown"): "Not evaluated: whether D is conditioned on the input is "
    "{D_conditional_source}.",
    (RULE_CONDITIONAL_D, "unconditional"): "D is unconditional ({D_conditional_source}).",
    (RULE_CONDITIONAL_D, "target_frame"): "D is conditional ({D_conditional_source}) and judges "
    "G's output warped into the target's frame (model.D.frame: target): its real and fake pairs "
    "share the targets' misalignment.",
    (RULE_CONDITIONAL_D, "pairs_unknown"): "Not evaluated: D is conditional "
    "({D_conditional_source}), but whether the pairs are misaligned is {pairs_reason}.",
    (RULE_CONDITIONAL_D, "aligned"): "D is conditional ({D_conditional_source}) and the pairs it "
    "sees are aligned: fine.",
    (RULE_CONDITIONAL_D, "misaligned"): "D is conditioned on the input ({D_conditional_source}) "
    "while the pairs are misaligned ({pairs_reason}): D sees misaligned real pairs and aligned "
    "fake ones, so it can tell them apart by the misalignment alone and reward G for "
    "reproducing it. Make D unconditional (model.D.conditional=no; the default whenever R is on "
    "or the pairs are misaligned).",
    (RULE_UNSTABLE, "not_logged"): _unstable,
    (RULE_UNSTABLE, "stable"): _unstable,
    (RULE_UNSTABLE, "unstable"): _unstable,
    (RULE_ABLATION, "g_only"): "Not applicable: this run trains G alone ({mode}) and no baseline "
    "was given.",
    (RULE_ABLATION, "nothing"): "Nothing to compare.",
    (RULE_ABLATION, "compared"): _ablation,
    (RULE_ABLATION, "compared_missing"): _ablation,
    (RULE_ABLATION, "missing"): _ablation,
    (RULE_D_INEFFECTIVE, "no_d"): _NO_D,
    (RULE_D_INEFFECTIVE, "not_logged"): "Not evaluated: train_D_real / train_D_fake not logged "
    "in the epoch log.",
    (RULE_D_INEFFECTIVE, "separates"): _d_ineffective,
    (RULE_D_INEFFECTIVE, "acc_off_chance"): _d_ineffective,
    (RULE_D_INEFFECTIVE, "at_chance"): _d_ineffective,
    (RULE_BLURRY, "no_d"): "Not applicable: this run has no discriminator ({mode}), so its loss "
    "has no GAN or FM term to re-weight.",
    (RULE_BLURRY, "misaligned"): "Not judged: misaligned pairs reach G's loss with R off (see "
    "misaligned_without_r), which blurs the output whatever the loss weights; no loss-weight "
    "change is recommended before that is fixed.",
    (RULE_BLURRY, "no_evidence"): _blurry,
    (RULE_BLURRY, "sharp"): _blurry,
    (RULE_BLURRY, "blurry"): _blurry,
    (RULE_D_CLIPPING, "no_d"): _NO_D,
    (RULE_D_CLIPPING, "not_logged"): "Not evaluated: train_clip_rate_D not logged in the epoch "
    "log.",
    (RULE_D_CLIPPING, "clipping_off"): "Not evaluated: train_clip_rate_D not logged in the epoch "
    "log (clipping is off).",
    (RULE_D_CLIPPING, "rare"): "D's clipping fires on {rate:.0%} of steps (limit "
    "{clip_rate_limit:.0%}): it only trims occasional spikes.",
    (RULE_D_CLIPPING, "frequent"): _d_clipping,
    (RULE_STILL_IMPROVING, "not_logged"): "Not evaluated: validation PSNR not logged in the "
    "epoch log.",
    (RULE_STILL_IMPROVING, "converged"): _still_improving,
    (RULE_STILL_IMPROVING, "run_improving"): _still_improving,
    (RULE_STILL_IMPROVING, "baseline_improving"): _still_improving,
    (RULE_STILL_IMPROVING, "both_improving"): _still_improving,
}
"""``(rule, case) -> template or function``: templates are filled from the shown evidence and
the decision's detail; functions get the decision and the shown evidence."""


def word(decision: Decision) -> Finding:
    """A rule's decision with its verdict in words and its evidence as the report shows it.

    Raises:
        KeyError: no wording for the decision's ``(rule, case)``.
    """
    key = (decision.rule, decision.case)
    if key not in _TEXTS:
        raise KeyError(f"no wording for rule {decision.rule!r}, case {decision.case!r}")
    shown = {
        k: _SHOWN[decision.rule, k](v) if (decision.rule, k) in _SHOWN else v
        for k, v in decision.evidence.items()
    }
    text = _TEXTS[key]
    verdict = (
        text.format_map({**shown, **decision.detail})
        if isinstance(text, str)
        else text(decision, shown)
    )
    return Finding(
        decision.rule,
        decision.triggered,
        verdict,
        shown,
        decision.applicable,
        decision.status,
        decision.case,
    )
