"""``compare_runs``: load the runs, build the report model once, render it twice, write the files.

The runs' names are made unique first (``parent/name``, then ``#2``...), so that tables and
legends are unambiguous. Every file goes through :mod:`medi2i.utils.atomic`: the HTML, the
Markdown beside it and the figures' PNG files in ``<stem>_files/`` (which the Markdown links).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medi2i.evaluation.compare.build import build_report
from medi2i.evaluation.compare.render import render_html, render_markdown
from medi2i.evaluation.runs import RunRecord, load_run
from medi2i.utils.atomic import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["compare_runs"]


def _unique_names(runs: list[RunRecord]) -> None:
    """Make run names unique (parent/name) so tables and legends are unambiguous."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.name] = counts.get(run.name, 0) + 1
    for run in runs:
        if counts[run.name] > 1:
            run.name = f"{run.path.resolve().parent.name}/{run.path.resolve().name}"
    seen: dict[str, int] = {}
    for run in runs:
        if run.name in seen:
            seen[run.name] += 1
            run.name = f"{run.name}#{seen[run.name]}"
        else:
            seen[run.name] = 1


def compare_runs(
    run_dirs: Sequence[str | Path],
    out_html: str | Path,
    *,
    data_root: str | None = None,
    crops: int = 3,
    crop_size: int = 96,
    device: str = "cpu",
) -> dict[str, Any]:
    """Write the comparison report of some runs.

    Args:
        run_dirs: training run directories, in the order they should appear.
        out_html: the HTML file to write; ``<stem>.md`` and ``<stem>_files/`` (the figures as
            PNG for the Markdown) are written beside it.
        data_root: where the dataset is now (replaces each run's ``data.root``); by default
            the config's root, relative to the current directory or the run's folders.
        crops: how many validation images to show as lung crops (0 = none).
        crop_size: side of the square crops, in pixels (smaller images are shown whole).
        device: where the generators run for the crops.

    Returns:
        ``{"html", "markdown", "figures_dir", "figures" (PNG paths), "runs" (name, label,
        path), "embedded_images", "crops" (panels shown), "notes" (what could not be shown),
        "diagnoses" (name -> triggered rules)}``.

    Raises:
        ValueError: no run given, or a path is not a run directory.
    """
    if not run_dirs:
        raise ValueError("compare_runs needs at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    _unique_names(runs)
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_md = out_html.with_suffix(".md")
    files_dir = out_html.parent / f"{out_html.stem}_files"
    files_dir.mkdir(parents=True, exist_ok=True)

    model = build_report(runs, data_root=data_root, crops=crops, crop_size=crop_size, device=device)
    written = []
    for figure in model.figures:
        path = files_dir / f"{figure.key}.png"
        atomic_write_bytes(path, figure.png)
        written.append(path)
    html_text = render_html(model)
    atomic_write_text(out_html, html_text)
    atomic_write_text(out_md, render_markdown(model, files_dir.name))
    embedded = html_text.count("data:image/png;base64,")
    log.info("wrote %s (%d images embedded) and %s", out_html, embedded, out_md)
    return {
        "html": str(out_html),
        "markdown": str(out_md),
        "figures_dir": str(files_dir),
        "figures": [str(p) for p in written],
        "runs": [{"name": r.name, "label": r.label, "path": r.path} for r in model.runs],
        "embedded_images": embedded,
        "crops": len(model.crops),
        "notes": model.notes,
        "diagnoses": {s.run: s.triggered_rules for s in model.diagnoses},
    }
