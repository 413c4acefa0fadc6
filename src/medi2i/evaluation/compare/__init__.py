"""Compare training runs side by side: one self-contained HTML report plus a Markdown twin.

``compare_runs([run_a, run_b, ...], "report.html")`` writes

* ``report.html`` - opens offline: every figure is embedded as a base64 PNG, the style sheet is
  inline, nothing is fetched;
* ``report.md`` beside it - the same tables, with the figures saved as PNG files in
  ``report_files/`` and linked relatively.

Contents: a table of final metrics per run, a report (test metrics when the run was tested, else
its last validation; the "metrics from" column says which, and the diagnosis never decides by the
test split) with the identity baseline (input taken as the prediction), best epoch and wall time;
the automatic diagnosis of each run (:mod:`medi2i.evaluation.diagnose`, each D run weighed
against a run without D from the same comparison); curves over epochs (validation metrics,
``D_real`` vs ``D_fake``, the composition of G's loss, gradient norms and clip rates, learning
rates); and the same validation crops rendered by every run's EMA generator (input | outputs |
reference) with error maps and high-pass detail, so blur can be seen and not only read.

Layout: :mod:`~medi2i.evaluation.compare.model` (the report model: plain dataclasses, built once),
:mod:`~medi2i.evaluation.compare.build` (the model from the runs: every number chosen, ranked and
formatted, the diagnoses, the figures), :mod:`~medi2i.evaluation.compare.crops` (the validation
crops rendered by each run's generator), :mod:`~medi2i.evaluation.compare.render` (the model
through the Jinja2 templates ``medi2i/evaluation/templates/compare.html.j2`` and
``compare.md.j2``) and :mod:`~medi2i.evaluation.compare.core` (``compare_runs``: load, build,
render, write). The two renderers read the same model, so the HTML and the Markdown cannot
disagree on a number. Import the public names from ``medi2i.evaluation.compare``.
"""

from __future__ import annotations

from medi2i.evaluation.compare.build import TABLE_METRICS
from medi2i.evaluation.compare.core import compare_runs

__all__ = ["TABLE_METRICS", "compare_runs"]
