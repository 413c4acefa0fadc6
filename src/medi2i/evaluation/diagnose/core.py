"""The entry point: :func:`diagnose_run` reads the run(s) and baseline(s), compares them on the
validation split, applies every rule, in
:data:`~medi2i.evaluation.diagnose.thresholds.RULES` order, and words each rule's decision
(:func:`~medi2i.evaluation.diagnose.wording.word`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from medi2i.evaluation.diagnose.ablation import _rule_ablation
from medi2i.evaluation.diagnose.comparison import _compare_sides
from medi2i.evaluation.diagnose.evidence import _config_differences, _last_rows, _names, _setup
from medi2i.evaluation.diagnose.progress import _rule_still_improving
from medi2i.evaluation.diagnose.report import Diagnosis
from medi2i.evaluation.diagnose.rules import (
    _rule_conditional_d,
    _rule_d_clipping,
    _rule_d_ineffective,
    _rule_diverged,
    _rule_misaligned,
    _rule_unstable,
)
from medi2i.evaluation.diagnose.thresholds import BOOTSTRAP_RESAMPLES
from medi2i.evaluation.diagnose.weights import _rule_blurry
from medi2i.evaluation.diagnose.wording import word
from medi2i.evaluation.runs import load_run

log = logging.getLogger(__package__)  # one logger for the package: medi2i.evaluation.diagnose


def _as_paths(value: str | Path | Sequence[str | Path] | None) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [Path(value)]
    return [Path(v) for v in value]


def diagnose_run(
    run_dir: str | Path | Sequence[str | Path],
    *,
    baseline: str | Path | Sequence[str | Path] | None = None,
    last_epochs: int = 3,
    evaluate: bool = True,
    data_root: str | Path | None = None,
    device: str = "cpu",
    refresh: bool = False,
    bootstrap: int = BOOTSTRAP_RESAMPLES,
) -> Diagnosis:
    """Apply the decision rules to a run (or several seeds of one setup).

    Args:
        run_dir: the run directory to judge, or several (seeds of the same setup); the log
            rules read the first one's logs, comparisons use all of them.
        baseline: the run(s) to weigh it against - without D (same seed and budget, ideally)
            for the verdict about D; several seeds are compared by per-seed means.
        last_epochs: how many final epochs the log means cover (fewer when the run is shorter).
        evaluate: evaluate the best EMA generators of the runs and baselines per image on the
            validation split (cached in ``RUN/diagnose/val``) for confidence intervals; False
            uses the logged validation means (single runs per side then get no interval).
        data_root: where the dataset is now, when it moved since training.
        device: where the generators run for the evaluation.
        refresh: evaluate again even when the cached evaluation matches the checkpoint.
        bootstrap: resamples of the paired bootstrap.

    Returns:
        One finding per rule (see :data:`RULES`), with notes on caveats.

    Raises:
        ValueError: a path is not a run directory, a run is also a baseline, or
            ``last_epochs < 1``.
    """
    if last_epochs < 1:
        raise ValueError(f"last_epochs must be >= 1, got {last_epochs}")
    run_paths, base_paths = _as_paths(run_dir), _as_paths(baseline)
    if not run_paths:
        raise ValueError("diagnose_run needs at least one run directory")
    overlap = {p.resolve() for p in run_paths} & {p.resolve() for p in base_paths}
    if overlap:
        raise ValueError(f"a run cannot be its own baseline: {', '.join(map(str, overlap))}")
    runs = [load_run(p) for p in run_paths]
    bases = [load_run(p) for p in base_paths]
    run = runs[0]
    notes: list[str] = []
    rows = _last_rows(run, last_epochs)
    epochs_used = [int(r.get("epoch", 0)) for r in rows]
    if not run.epochs:
        notes.append("The run has no epoch log (metrics/epochs.jsonl): most rules cannot be read.")
    elif len(rows) < last_epochs:
        notes.append(f"Only {len(rows)} epoch(s) logged; means cover all of them.")
    for group, role in ((runs, "runs"), (bases, "baselines")):
        if len(group) > 1:
            seeds = [g.cfg("seed") for g in group]
            if len(set(map(str, seeds))) < len(seeds):
                notes.append(
                    f"The {role} {_names(group)} share a seed ({', '.join(map(str, seeds))}): they "
                    "are not independent replicates, so the interval over them is too narrow."
                )
            for other in group[1:]:
                diffs = _config_differences(group[0], other)
                diffs.pop("seed", None)
                if diffs:
                    notes.append(
                        f"{other.name} differs from {group[0].name} in more than the seed: "
                        + ", ".join(diffs)
                    )
    if len(runs) > 1:
        notes.append(f"Log rules read {run.name}'s logs; comparisons use all {len(runs)} runs.")
    for r in (*runs, *bases):
        for problem in r.problems:
            notes.append(f"{r.name}: skipped while reading: {problem}")

    comparison = None
    if bases:
        comparison = _compare_sides(
            runs,
            bases,
            evaluate=evaluate,
            data_root=data_root,
            device=device,
            refresh=refresh,
            resamples=bootstrap,
        )
    diverged = _rule_diverged(run)
    if diverged.triggered:
        notes.append(
            "Training diverged (see 'diverged'): the other findings describe a broken run."
        )
    misaligned = _rule_misaligned(run)
    conditional = _rule_conditional_d(run)
    unstable = _rule_unstable(runs, bases)
    unstable_names = [
        name for name, ev in unstable.evidence.items() if isinstance(ev, dict) and ev.get("jumps")
    ]
    ablation = _rule_ablation(runs, bases, comparison, unstable_names)
    d_ineffective = _rule_d_ineffective(run, last_epochs, ablation)
    decisions = [
        diverged,
        misaligned,
        conditional,
        unstable,
        ablation,
        d_ineffective,
        _rule_blurry(run, last_epochs, d_ineffective, misaligned, ablation, bases),
        _rule_d_clipping(run, last_epochs),
        _rule_still_improving(run, bases[0] if bases else None, last_epochs),
    ]
    if misaligned.triggered and run.has_D:
        notes.append(
            "Misaligned pairs reach G's loss with R off: fix that (see misaligned_without_r) "
            "before drawing conclusions about D or the loss weights."
        )
    _, source = run.decision_metrics()
    test, test_source = run.final_metrics()
    diagnosis = Diagnosis(
        run=str(run.path),
        label=run.label,
        mode=run.mode,
        baseline=str(bases[0].path) if bases else None,
        epochs_used=epochs_used,
        findings=[word(d) for d in decisions],
        notes=notes,
        runs=[str(r.path) for r in runs],
        baselines=[str(b.path) for b in bases],
        setup=_setup(run),
        decision_source=source,
        test_report=test if test_source == "test" else None,
    )
    log.info(
        "diagnosed %s: %s",
        run.name,
        ", ".join(f.rule for f in diagnosis.triggered) or "no rule triggered",
    )
    return diagnosis
