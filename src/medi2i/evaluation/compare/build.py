"""Build the compare report's model from the runs.

:func:`build_report` is the one place where the report's content is decided: which metrics the
table shows (:data:`TABLE_METRICS`) and how each is formatted, which run is best per column,
the identity baseline rows, each run's diagnosis (a D run weighed against a run without D from
the same comparison), the curves and the crop figures. A part that fails (a diagnosis, the crops)
becomes a line of the report, never an exception. The result is a
:class:`~medi2i.evaluation.compare.model.ReportModel` that the renderers only lay out.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medi2i.evaluation.compare.crops import crop_panels
from medi2i.evaluation.compare.model import (
    DiagnosisSection,
    FindingLine,
    MetricCell,
    MetricRow,
    MetricsTable,
    ReportFigure,
    ReportModel,
    RunEntry,
)
from medi2i.evaluation.diagnose import Diagnosis, diagnose_run
from medi2i.evaluation.plots import (
    crop_figure,
    discriminator_figure,
    figure_png,
    gradients_figure,
    learning_rate_figure,
    legend_label,
    loss_composition_figure,
    validation_figure,
)
from medi2i.evaluation.runs import RunRecord, finite_or_none

log = logging.getLogger(__name__)

__all__ = ["TABLE_METRICS", "build_report"]

#: Final-metric columns: (key, header, higher_is_better or None for "closest to 1").
TABLE_METRICS: tuple[tuple[str, str, bool | None], ...] = (
    ("psnr_mask", "PSNR lung (dB)", True),
    ("ssim_mask", "SSIM lung", True),
    ("mae_mask", "MAE lung", False),
    ("hfen_mask", "HFEN lung", False),
    ("gmsd_mask", "GMSD lung", False),
    ("sharpness_mask", "sharpness lung", None),
    ("psnr", "PSNR (dB)", True),
)

#: The curves over epochs: (key, title, figure builder, caption).
_CURVES = (
    (
        "validation",
        "Validation metrics over epochs",
        validation_figure,
        "EMA generator on the validation split, inside the lung mask. HFEN and GMSD compare "
        "structure (lower = sharper and truer); the sharpness ratio (dotted line at 0.9) can be "
        "fooled by artefacts.",
    ),
    (
        "discriminator",
        "D_real vs D_fake",
        discriminator_figure,
        "Mean raw D output on real (solid) and fake (dashed) images, and D's accuracy. Equal "
        "curves mean D does not separate real from fake - which alone does not prove D useless: "
        "compare with the run without D.",
    ),
    (
        "loss_composition",
        "Composition of G's loss",
        loss_composition_figure,
        "Share of each weighted part of G's loss. Target: GAN share above 30% "
        "(dashed). A large share of the loss value is not a large share of the gradient when D "
        "is at chance.",
    ),
    (
        "gradients",
        "Gradient norms and clipping",
        gradients_figure,
        "Norms before clipping (log scale; dotted: the clip limit) and the fraction of steps "
        "where clipping fired.",
    ),
    ("learning_rates", "Learning rates", learning_rate_figure, "Per network, after warm-up."),
)

_CROP_CAPTION = (
    "Top: the crop (nearest-neighbour zoom); middle: |output - reference| on one colour "
    "scale; bottom: LoG detail (what HFEN measures). Numbers are computed on the crop."
)


# --------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------


def _fmt_metric(key: str, value: Any) -> str:
    v = finite_or_none(value)
    if v is None:
        return "-"
    if key.startswith("psnr"):
        return f"{v:.2f}"
    if key.startswith(("mae", "gmsd")):
        return f"{v:.4f}"
    return f"{v:.3f}"


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _best_text(run: RunRecord) -> str:
    best = run.best
    if not best or best.get("epoch") is None:
        return "-"
    value = finite_or_none(best.get("value"))
    metric = best.get("metric", "")
    shown = f" ({metric} {_fmt_metric(str(metric), value)})" if value is not None else ""
    return f"{int(best['epoch'])}{shown}"


# --------------------------------------------------------------------------------------------
# the metrics table
# --------------------------------------------------------------------------------------------


def _metric_cells(
    metrics: dict[str, float], best: frozenset[str] = frozenset()
) -> list[MetricCell]:
    """One cell per :data:`TABLE_METRICS` column; the keys in ``best`` are marked best."""
    return [
        MetricCell(_fmt_metric(key, metrics.get(key)), key in best) for key, _, _ in TABLE_METRICS
    ]


def _best_cells(finals: Sequence[tuple[dict[str, float], str]]) -> dict[str, set[int]]:
    """Indices of the best run per metric, within runs whose metrics come from the same split.

    ``finals`` holds each run's ``(metrics, source)``. Test-split rows are compared with each
    other and validation rows with each other (a test number is never "beaten" by a validation
    one); a group needs two rows with a value.
    """
    groups: dict[str, list[int]] = {}
    for i, (_, source) in enumerate(finals):
        groups.setdefault("test" if source == "test" else "val", []).append(i)
    best: dict[str, set[int]] = {}
    for key, _, higher in TABLE_METRICS:
        for members in groups.values():
            values = [(finite_or_none(finals[i][0].get(key)), i) for i in members]
            values = [(v, i) for v, i in values if v is not None]
            if len(values) < 2:
                continue
            if higher is None:
                winner = min(values, key=lambda t: abs(t[0] - 1.0))[1]
            else:
                winner = (max if higher else min)(values, key=lambda t: t[0])[1]
            best.setdefault(key, set()).add(winner)
    return best


def _identity_rows(runs: Sequence[RunRecord]) -> list[MetricRow]:
    """The identity baseline rows: one per distinct baseline, saying which runs share it."""
    identities: list[tuple[dict[str, float], list[str]]] = []
    seen: list[dict] = []
    for run in runs:
        ident = run.identity_metrics()
        if ident is None:
            continue
        key = {k: round(v, 6) for k, v in ident.items() if finite_or_none(v) is not None}
        if key in seen:
            identities[seen.index(key)][1].append(run.name)
            continue
        seen.append(key)
        identities.append((ident, [run.name]))
    if not identities:
        source = "not available (no run was tested)"
        return [
            MetricRow("identity", "input as prediction", source, _metric_cells({}), identity=True)
        ]
    rows = []
    for metrics, names in identities:
        shared = len(identities) == 1 and len(names) == len(runs)
        who = "all runs" if shared else ", ".join(names)
        cells = _metric_cells(metrics)
        rows.append(
            MetricRow("identity", "input as prediction", f"test ({who})", cells, identity=True)
        )
    return rows


def _metrics_table(runs: Sequence[RunRecord]) -> MetricsTable:
    """The final-metrics table: one row per run, then the identity baseline(s)."""
    finals = [run.final_metrics() for run in runs]
    best = _best_cells(finals)
    rows = [
        MetricRow(
            run=run.name,
            setup=run.label,
            source=source,
            metrics=_metric_cells(metrics, frozenset(k for k, won in best.items() if i in won)),
            best_epoch=_best_text(run),
            epochs=str(run.epochs_done),
            wall=_fmt_seconds(run.wall_seconds),
        )
        for i, (run, (metrics, source)) in enumerate(zip(runs, finals))
    ]
    return MetricsTable(
        text_headers=["run", "setup", "metrics from"],
        metric_headers=[header for _, header, _ in TABLE_METRICS],
        info_headers=["best epoch", "epochs", "wall time"],
        rows=[*rows, *_identity_rows(runs)],
    )


# --------------------------------------------------------------------------------------------
# diagnoses
# --------------------------------------------------------------------------------------------


def _baseline_for(run: RunRecord, runs: Sequence[RunRecord]) -> RunRecord | None:
    """A run without D to weigh a D run against: same R setting preferred."""
    if not run.has_D:
        return None
    candidates = [r for r in runs if not r.has_D and r.path != run.path]
    same_r = [r for r in candidates if r.has_R == run.has_R]
    pool = same_r or candidates
    return pool[0] if pool else None


def _not_applicable(d: Diagnosis) -> str:
    """One line for the rules that do not apply (e.g. the D rules of a run without D)."""
    skipped = [f for f in d.findings if not f.applicable]
    if not skipped:
        return ""
    parts = []
    no_d = "D" not in d.mode.split("+")
    about_d = [f for f in skipped if no_d and "no discriminator" in f.verdict]
    if about_d:
        titles = ", ".join(f.title for f in about_d)
        parts.append(f"{titles}: not applicable, this run has no discriminator ({d.mode})")
    parts += [f"{f.title}: {f.verdict.rstrip('.')}" for f in skipped if f not in about_d]
    return "; ".join(parts)


def _diagnosis(
    run: RunRecord, runs: Sequence[RunRecord], *, data_root: str | None, device: str
) -> DiagnosisSection:
    """The diagnosis of one run, or a section saying why it failed."""
    heading = legend_label(run)
    base = _baseline_for(run, runs)
    try:
        d = diagnose_run(
            run.path, baseline=base.path if base else None, data_root=data_root, device=device
        )
    except Exception as exc:  # a report must not die on one odd run
        log.warning("diagnosis of %s failed: %s", run.path, exc)
        return DiagnosisSection(run.name, heading, error=f"diagnosis failed: {exc}")
    return DiagnosisSection(
        run=run.name,
        heading=heading,
        baseline=Path(d.baseline).name if d.baseline else "none (no ablation in this comparison)",
        notes=list(d.notes),
        findings=[FindingLine(f.title, f.verdict, f.triggered) for f in d.findings if f.applicable],
        not_applicable=_not_applicable(d),
        triggered_rules=[f.rule for f in d.triggered],
    )


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------


def build_report(
    runs: Sequence[RunRecord],
    *,
    data_root: str | None = None,
    crops: int = 3,
    crop_size: int = 96,
    device: str = "cpu",
) -> ReportModel:
    """The report model of some loaded runs (names already unique); see ``compare_runs``."""
    notes: list[str] = []
    curves: list[ReportFigure] = []
    for key, title, build, caption in _CURVES:
        fig = build(runs)
        if fig is None:
            notes.append(f"{title}: not logged by any run")
            continue
        curves.append(ReportFigure(key, title, caption, figure_png(fig)))
    try:
        panels, crop_notes = crop_panels(
            runs, data_root=data_root, crops=crops, crop_size=crop_size, device=device
        )
    except Exception as exc:  # the curves and tables are still worth writing
        log.warning("validation crops failed: %s", exc)
        panels, crop_notes = [], [f"validation crops failed: {type(exc).__name__}: {exc}"]
    notes.extend(crop_notes)
    crop_figures = [
        ReportFigure(
            f"crop_{i + 1}",
            f"Validation crop {i + 1}: {p.name}",
            _CROP_CAPTION,
            figure_png(crop_figure(p), dpi=110),
        )
        for i, p in enumerate(panels)
    ]
    table = _metrics_table(runs)
    diagnoses = [_diagnosis(r, runs, data_root=data_root, device=device) for r in runs]
    return ReportModel(
        stamp=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        runs=[RunEntry(r.name, r.label, str(r.path)) for r in runs],
        table=table,
        diagnoses=diagnoses,
        curves=curves,
        crops=crop_figures,
        notes=notes,
    )
