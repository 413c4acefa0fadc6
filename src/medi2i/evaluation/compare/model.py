"""The compare report's model: everything the report says, as plain dataclasses.

:func:`~medi2i.evaluation.compare.build.build_report` fills a :class:`ReportModel` once from the
runs; :mod:`~medi2i.evaluation.compare.render` lays it out as HTML and as Markdown. Everything
here is final: numbers are formatted strings, the best cell of each column is marked, figures are
PNG bytes. A renderer only lays the model out; it never computes, ranks or rewords. This module
does no I/O and imports nothing but the standard library.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

__all__ = [
    "DiagnosisSection",
    "FindingLine",
    "MetricCell",
    "MetricRow",
    "MetricsTable",
    "ReportFigure",
    "ReportModel",
    "RunEntry",
]


@dataclass
class RunEntry:
    """One compared run: its name (unique in the report), what was trained, its directory."""

    name: str
    label: str
    path: str


@dataclass
class MetricCell:
    """One formatted metric value; ``best`` marks the best run of its column and split."""

    text: str
    best: bool = False


@dataclass
class MetricRow:
    """One row of the final-metrics table.

    Attributes:
        run: the run's name, or ``identity`` for the identity baseline.
        setup: what was trained (the run's label), or ``input as prediction``.
        source: where the metrics come from (``test``, ``val, epoch N``, ``test (which runs)``).
        metrics: one cell per metric column, in :attr:`MetricsTable.metric_headers` order.
        best_epoch: the best epoch and its value, ``-`` when unknown, empty for identity.
        epochs: epochs done, empty for identity.
        wall: wall time, empty for identity.
        identity: True for an identity-baseline row (shown apart; never best).
    """

    run: str
    setup: str
    source: str
    metrics: list[MetricCell]
    best_epoch: str = ""
    epochs: str = ""
    wall: str = ""
    identity: bool = False

    @property
    def cells(self) -> list[MetricCell]:
        """Every cell in column order (the text and run columns are never best)."""
        texts = [self.run, self.setup, self.source]
        infos = [self.best_epoch, self.epochs, self.wall]
        return [*map(MetricCell, texts), *self.metrics, *map(MetricCell, infos)]


@dataclass
class MetricsTable:
    """The final-metrics table: the runs' rows, then the identity row(s).

    Columns: the text columns (``text_headers``: run, setup, source), the metric columns
    (``metric_headers``), then the run columns (``info_headers``: best epoch, epochs, wall time).
    """

    text_headers: list[str]
    metric_headers: list[str]
    info_headers: list[str]
    rows: list[MetricRow]

    @property
    def headers(self) -> list[str]:
        """Every column's header, in order."""
        return [*self.text_headers, *self.metric_headers, *self.info_headers]


@dataclass
class FindingLine:
    """One applicable rule of a diagnosis: its title, verdict and whether it triggered."""

    title: str
    verdict: str
    triggered: bool


@dataclass
class DiagnosisSection:
    """The diagnosis of one run.

    Attributes:
        run: the run's name.
        heading: the run's legend label.
        error: why the diagnosis failed; when set, the other fields below are empty.
        baseline: the name of the run it was weighed against, or why there is none.
        notes: caveats of the whole diagnosis.
        findings: the rules that apply, in rule order.
        not_applicable: one line for the rules that do not apply, empty when all do.
        triggered_rules: ids of the triggered rules; None when the diagnosis failed.
    """

    run: str
    heading: str
    error: str = ""
    baseline: str = ""
    notes: list[str] = field(default_factory=list)
    findings: list[FindingLine] = field(default_factory=list)
    not_applicable: str = ""
    triggered_rules: list[str] | None = None


@dataclass
class ReportFigure:
    """A figure of the report: ``key`` names its PNG file and its HTML anchor."""

    key: str
    title: str
    caption: str
    png: bytes

    @property
    def base64(self) -> str:
        """The PNG as base64 text, for a ``data:`` URI."""
        return base64.b64encode(self.png).decode("ascii")


@dataclass
class ReportModel:
    """The whole report.

    Attributes:
        stamp: when it was generated (UTC, to the minute).
        runs: the compared runs, in the order given.
        table: the final-metrics table.
        diagnoses: one section per run, in run order.
        curves: the curves over epochs that some run logged.
        crops: the validation crop panels, one figure each.
        notes: what could not be shown, and why.
    """

    stamp: str
    runs: list[RunEntry]
    table: MetricsTable
    diagnoses: list[DiagnosisSection]
    curves: list[ReportFigure]
    crops: list[ReportFigure]
    notes: list[str]

    @property
    def figures(self) -> list[ReportFigure]:
        """Every figure: the curves, then the crops."""
        return [*self.curves, *self.crops]
