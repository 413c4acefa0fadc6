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
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medi2i.evaluation.diagnose import Diagnosis, diagnose_run
from medi2i.evaluation.plots import (
    CropColumn,
    CropPanel,
    crop_figure,
    discriminator_figure,
    figure_png,
    gradients_figure,
    learning_rate_figure,
    legend_label,
    loss_composition_figure,
    validation_figure,
)
from medi2i.evaluation.runs import RunRecord, finite_or_none, load_run, resolve_data_paths
from medi2i.utils.atomic import atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["TABLE_METRICS", "compare_runs"]

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

#: How many validation images are scanned for lung-dense crops.
_CROP_CANDIDATES = 24

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px auto;
       max-width: 1360px; padding: 0 16px; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 19px; margin-top: 32px;
  border-bottom: 1px solid #ddd; padding-bottom: 4px; } h3 { font-size: 15px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 4px 0; }
th, td { border: 1px solid #d0d0d0; padding: 4px 8px; text-align: right; }
th { background: #f3f3f6; } td.l, th.l { text-align: left; }
tr.identity td { color: #666; font-style: italic; background: #fafafa; }
td.best { font-weight: bold; background: #eaf6ea; }
.small { font-size: 12px; color: #555; } .muted { color: #777; }
figure { margin: 12px 0 24px 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 12px; color: #555; margin-top: 4px; max-width: 1100px; }
.finding { margin: 4px 0 8px 0; font-size: 13px; }
.tag { display: inline-block; padding: 0 6px; border-radius: 3px; font-size: 11px;
       font-weight: bold; margin-right: 6px; }
.tag.on { background: #fde2e1; color: #a31515; } .tag.off { background: #e6f4e6;
  color: #226622; } .tag.na { background: #eee; color: #777; }
code { background: #f3f3f6; padding: 0 3px; border-radius: 3px; font-size: 12px; }
"""


@dataclass
class _Figure:
    key: str
    title: str
    caption: str
    png: bytes


# --------------------------------------------------------------------------------------------
# formatting helpers
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


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# --------------------------------------------------------------------------------------------
# the metrics table
# --------------------------------------------------------------------------------------------


def _metrics_rows(runs: Sequence[RunRecord]) -> tuple[list[dict], list[dict]]:
    """Rows of the final-metrics table: one per run, then the identity baseline(s)."""
    rows = []
    for run in runs:
        metrics, source = run.final_metrics()
        rows.append(
            {
                "run": run.name,
                "setup": run.label,
                "source": source,
                "metrics": metrics,
                "best": _best_text(run),
                "epochs": run.epochs_done,
                "wall": _fmt_seconds(run.wall_seconds),
            }
        )
    identities: list[dict] = []
    seen: list[dict] = []
    for run in runs:
        ident = run.identity_metrics()
        if ident is None:
            continue
        key = {k: round(v, 6) for k, v in ident.items() if finite_or_none(v) is not None}
        if key in seen:
            identities[seen.index(key)]["runs"].append(run.name)
            continue
        seen.append(key)
        identities.append({"metrics": ident, "runs": [run.name]})
    ident_rows = []
    for ident in identities:
        shared = len(identities) == 1 and len(ident["runs"]) == len(runs)
        who = "all runs" if shared else ", ".join(ident["runs"])
        ident_rows.append(
            {
                "run": "identity",
                "setup": "input as prediction",
                "source": f"test ({who})",
                "metrics": ident["metrics"],
                "best": "",
                "epochs": "",
                "wall": "",
            }
        )
    if not ident_rows:
        ident_rows.append(
            {
                "run": "identity",
                "setup": "input as prediction",
                "source": "not available (no run was tested)",
                "metrics": {},
                "best": "",
                "epochs": "",
                "wall": "",
            }
        )
    return rows, ident_rows


def _best_cells(rows: Sequence[dict]) -> dict[str, set[int]]:
    """Indices of the best run row per metric, within rows of the same split.

    Test-split rows are compared with each other and validation rows with each other (a test
    number is never "beaten" by a validation one); a group needs two rows with a value.
    """
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault("test" if row["source"] == "test" else "val", []).append(i)
    best: dict[str, set[int]] = {}
    for key, _, higher in TABLE_METRICS:
        for members in groups.values():
            values = [(finite_or_none(rows[i]["metrics"].get(key)), i) for i in members]
            values = [(v, i) for v, i in values if v is not None]
            if len(values) < 2:
                continue
            if higher is None:
                winner = min(values, key=lambda t: abs(t[0] - 1.0))[1]
            else:
                winner = (max if higher else min)(values, key=lambda t: t[0])[1]
            best.setdefault(key, set()).add(winner)
    return best


_HEADERS = ["run", "setup", "metrics from"] + [h for _, h, _ in TABLE_METRICS]
_HEADERS += ["best epoch", "epochs", "wall time"]


def _table_html(rows: Sequence[dict], ident_rows: Sequence[dict]) -> str:
    best = _best_cells(rows)
    out = ['<table id="metrics">', "<tr>"]
    for i, h in enumerate(_HEADERS):
        out.append(f'<th class="{"l" if i < 3 else ""}">{_esc(h)}</th>')
    out.append("</tr>")
    for i, row in enumerate([*rows, *ident_rows]):
        is_ident = i >= len(rows)
        out.append('<tr class="identity">' if is_ident else "<tr>")
        for text in (row["run"], row["setup"], row["source"]):
            out.append(f'<td class="l">{_esc(text)}</td>')
        for key, _, _ in TABLE_METRICS:
            cls = ' class="best"' if not is_ident and i in best.get(key, ()) else ""
            out.append(f"<td{cls}>{_esc(_fmt_metric(key, row['metrics'].get(key)))}</td>")
        for key in ("best", "epochs", "wall"):
            out.append(f"<td>{_esc(row[key])}</td>")
        out.append("</tr>")
    out.append("</table>")
    return "\n".join(out)


def _table_md(rows: Sequence[dict], ident_rows: Sequence[dict]) -> str:
    best = _best_cells(rows)
    lines = ["| " + " | ".join(_HEADERS) + " |", "|" + "---|" * len(_HEADERS)]
    for i, row in enumerate([*rows, *ident_rows]):
        is_ident = i >= len(rows)
        cells = [row["run"], row["setup"], row["source"]]
        for key, _, _ in TABLE_METRICS:
            text = _fmt_metric(key, row["metrics"].get(key))
            cells.append(f"**{text}**" if not is_ident and i in best.get(key, ()) else text)
        cells += [row["best"], row["epochs"], row["wall"]]
        if is_ident:
            cells = [f"*{c}*" if str(c) not in ("", "-") else str(c) for c in cells]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return "\n".join(lines)


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


def _diagnoses(
    runs: Sequence[RunRecord], *, data_root: str | None = None, device: str = "cpu"
) -> list[tuple[RunRecord, Diagnosis | None, str]]:
    out = []
    for run in runs:
        base = _baseline_for(run, runs)
        try:
            d = diagnose_run(
                run.path,
                baseline=base.path if base else None,
                data_root=data_root,
                device=device,
            )
            out.append((run, d, ""))
        except Exception as exc:  # a report must not die on one odd run
            log.warning("diagnosis of %s failed: %s", run.path, exc)
            out.append((run, None, f"diagnosis failed: {exc}"))
    return out


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


def _diagnoses_html(items) -> str:
    out = []
    for run, d, error in items:
        out.append(f"<h3>{_esc(legend_label(run))}</h3>")
        if d is None:
            out.append(f'<p class="muted">{_esc(error)}</p>')
            continue
        base = Path(d.baseline).name if d.baseline else "none (no ablation in this comparison)"
        out.append(f'<p class="small">weighed against: {_esc(base)}</p>')
        for note in d.notes:
            out.append(f'<p class="small">Note: {_esc(note)}</p>')
        for f in d.findings:
            if not f.applicable:
                continue
            cls, tag = ("on", "TRIGGERED") if f.triggered else ("off", "ok")
            out.append(
                f'<div class="finding"><span class="tag {cls}">{tag}</span>'
                f"<b>{_esc(f.title)}</b><br />{_esc(f.verdict)}</div>"
            )
        skipped = _not_applicable(d)
        if skipped:
            out.append(f'<div class="finding"><span class="tag na">n/a</span>{_esc(skipped)}</div>')
    return "\n".join(out)


def _diagnoses_md(items) -> str:
    lines = []
    for run, d, error in items:
        lines.append(f"### {legend_label(run)}")
        lines.append("")
        if d is None:
            lines.append(f"_{error}_")
            lines.append("")
            continue
        base = Path(d.baseline).name if d.baseline else "none (no ablation in this comparison)"
        lines.append(f"Weighed against: {base}")
        lines.append("")
        for note in d.notes:
            lines.append(f"> Note: {note}")
            lines.append("")
        for f in d.findings:
            if f.applicable:
                tag = "**TRIGGERED**" if f.triggered else "ok"
                lines.append(f"- {tag} - *{f.title}*: {f.verdict}")
        skipped = _not_applicable(d)
        if skipped:
            lines.append(f"- n/a - {skipped}")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# validation crops
# --------------------------------------------------------------------------------------------


#: Kept under its old name for callers of this module; the logic is shared with the diagnosis.
_resolve_data = resolve_data_paths


def _lung_windows(mask: np.ndarray, size: int) -> list[tuple[float, int, int]]:
    """``(lung fraction, top, left)`` of ``size``-square windows, densest first.

    Windows lie on a grid of stride ``size // 8`` (plus the last row/column); box sums come from
    an integral image, so this is cheap at any image size.
    """
    h, w = mask.shape
    integral = np.pad(mask.astype(np.float64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    stride = max(1, size // 8)
    tops = np.asarray(sorted(set(range(0, h - size + 1, stride)) | {h - size}))
    lefts = np.asarray(sorted(set(range(0, w - size + 1, stride)) | {w - size}))
    t, l_ = tops[:, None], lefts[None, :]
    sums = (
        integral[t + size, l_ + size]
        - integral[t, l_ + size]
        - integral[t + size, l_]
        + integral[t, l_]
    )
    order = np.argsort(-sums, axis=None, kind="stable")
    ii, jj = np.unravel_index(order, sums.shape)
    area = float(size * size)
    return [(float(sums[i, j]) / area, int(tops[i]), int(lefts[j])) for i, j in zip(ii, jj)]


def _densest_window(mask: np.ndarray, size: int) -> tuple[float, int, int]:
    """``(lung fraction, top, left)`` of the window with the most mask pixels."""
    return _lung_windows(mask, size)[0]


def _pick_crops(
    masks: Sequence[np.ndarray], crops: int, size: int, *, min_density: float = 0.5
) -> list[tuple[float, int, int, int]]:
    """``(density, image index, top, left)`` of ``crops`` lung-dense, varied crops.

    Images are taken densest first, one crop each; each takes its densest window that does not
    overlap an already chosen box by more than a quarter (so paired slices of one patient do
    not all show the same spot), falling back to its densest window when none with at least
    ``min_density`` lung is left. With fewer images than crops, images are reused.
    """
    windows = [_lung_windows(m, min(size, *m.shape)) for m in masks]
    order = sorted(range(len(masks)), key=lambda i: (-windows[i][0][0], i))
    chosen: list[tuple[float, int, int, int]] = []
    boxes: list[tuple[int, int, int]] = []

    def overlap(top: int, left: int, s: int) -> float:
        worst = 0.0
        for bt, bl, bs in boxes:
            dy = max(0, min(top + s, bt + bs) - max(top, bt))
            dx = max(0, min(left + s, bl + bs) - max(left, bl))
            worst = max(worst, dy * dx / float(s * s))
        return worst

    passes = -(-crops // max(1, len(order)))  # reuse images when there are fewer than crops
    for pass_ in range(passes):
        for index in order:
            if len(chosen) == crops:
                return chosen
            s = min(size, *masks[index].shape)
            free = (
                w for w in windows[index] if w[0] >= min_density and overlap(w[1], w[2], s) <= 0.25
            )
            pick = next(free, None)
            if pick is None:
                if pass_ > 0:  # a reused image only adds a new, separate spot
                    continue
                pick = windows[index][0]
            chosen.append((pick[0], index, pick[1], pick[2]))
            boxes.append((pick[1], pick[2], s))
    return chosen


def _unit(normalizer: Any, tensor: Any) -> np.ndarray:
    """(1, H, W) tensor in the network range -> (H, W) float array in [0, 1]."""
    arr = np.asarray(tensor.detach().cpu().float().numpy()[0], dtype=np.float64)
    return np.clip(normalizer.output_to_unit(arr), 0.0, 1.0)


def _crop_panels(
    runs: Sequence[RunRecord],
    *,
    data_root: str | None,
    crops: int,
    crop_size: int,
    device: str,
) -> tuple[list[CropPanel], list[str]]:
    """Render ``crops`` lung-dense validation crops with every run's EMA generator."""
    import torch
    from scipy.ndimage import gaussian_laplace

    from medi2i.data.dataset import build_dataset
    from medi2i.inference.loading import load_generator
    from medi2i.metrics import hfen, psnr

    notes: list[str] = []
    if crops <= 0:
        return [], ["crops disabled"]
    loaded: dict[str, Any] = {}
    datasets: dict[str, Any] = {}
    cache: dict[str, Any] = {}
    for run in runs:
        if not run.has_checkpoint:
            notes.append(f"{run.name}: no checkpoint, not rendered")
            continue
        try:
            gen = load_generator(run.path, weights="ema", device=device)
            cfg = _resolve_data(gen.config, run.path, data_root)
            key = json.dumps(
                [cfg.data.model_dump(mode="json"), gen.normalizer.state_dict()],
                sort_keys=True,
                default=str,
            )
            if key not in cache:
                cache[key] = build_dataset(cfg, "val", normalizer=gen.normalizer, train=False)
            loaded[run.name], datasets[run.name] = gen, cache[key]
        except Exception as exc:  # the report goes on without this run's column
            log.warning("cannot render crops for %s: %s", run.name, exc)
            notes.append(f"{run.name}: not rendered ({type(exc).__name__}: {exc})")
    if not loaded:
        return [], [
            *notes,
            "no run could be rendered (see notes; pass data_root= if the data moved)",
        ]
    first = next(iter(loaded))
    ref_ds, ref_norm = datasets[first], loaded[first].normalizer
    # the first validation images' masks -> lung-dense, varied crops
    masks = [
        ref_ds[index]["mask"][0].numpy() > 0.5
        for index in range(min(len(ref_ds), _CROP_CANDIDATES))
    ]
    chosen = _pick_crops(masks, crops, crop_size)
    panels: list[CropPanel] = []
    for density, index, top, left in chosen:
        item = ref_ds[index]
        name = str(item.get("name", index))
        ref_key = "aligned_target" if "aligned_target" in item else "target"
        full_in = _unit(ref_norm, item["input"])
        full_ref = _unit(ref_norm, item[ref_key])
        full_mask = item["mask"][0].numpy() > 0.5
        size = min(crop_size, *full_mask.shape)
        sl = (slice(top, top + size), slice(left, left + size))
        ref_crop = full_ref[sl]

        def column(
            title: str, full: np.ndarray, ref_crop: np.ndarray = ref_crop, sl: tuple = sl
        ) -> CropColumn:
            crop = full[sl]
            err = np.abs(crop - ref_crop)
            p = psnr(crop, ref_crop, data_range=1.0)
            h = hfen(crop, ref_crop)
            return CropColumn(
                title=title,
                image=crop,
                error=err,
                detail=gaussian_laplace(full, 1.5, mode="reflect")[sl],
                subtitle=f"PSNR {p:.1f} dB, HFEN {h:.2f}",
            )

        columns = [column("input", full_in)]
        for run in runs:
            title = _wrap_title(legend_label(run))
            if run.name not in loaded:
                columns.append(CropColumn(title=title, image=None, note="not rendered"))
                continue
            gen, ds = loaded[run.name], datasets[run.name]
            names = [rec.name for rec in ds.records]
            if name not in names:
                columns.append(CropColumn(title=title, image=None, note=f"no {name} in its val"))
                continue
            run_item = ds[names.index(name)]
            x = run_item["input"][None].to(device)
            with torch.no_grad():
                out = gen.generator(x).float()
            full_out = _unit(gen.normalizer, out[0])
            run_ref = _unit(gen.normalizer, run_item[ref_key if ref_key in run_item else "target"])
            columns.append(column(title, full_out, run_ref[sl]))
        ref_title = "reference (aligned)" if ref_key == "aligned_target" else "reference (target)"
        columns.append(column(ref_title, full_ref))
        columns[-1].error = None
        columns[-1].subtitle = f"lung mask ({density:.0%} of crop)"
        lo, hi = np.percentile(ref_crop, (0.5, 99.5))
        pad = 0.05 * max(hi - lo, 1e-3)
        window = (max(0.0, float(lo - pad)), min(1.0, float(hi + pad)))
        panels.append(CropPanel(name, full_in, full_mask, (top, left, size), columns, window))
    return panels, notes


def _wrap_title(text: str, width: int = 22) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------

_FIGURES = (
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
    notes: list[str] = []

    figures: list[_Figure] = []
    for key, title, build, caption in _FIGURES:
        fig = build(runs)
        if fig is None:
            notes.append(f"{title}: not logged by any run")
            continue
        figures.append(_Figure(key, title, caption, figure_png(fig)))
    try:
        panels, crop_notes = _crop_panels(
            runs, data_root=data_root, crops=crops, crop_size=crop_size, device=device
        )
    except Exception as exc:  # the curves and tables are still worth writing
        log.warning("validation crops failed: %s", exc)
        panels, crop_notes = [], [f"validation crops failed: {type(exc).__name__}: {exc}"]
    notes.extend(crop_notes)
    crop_figs = [
        _Figure(
            f"crop_{i + 1}",
            f"Validation crop {i + 1}: {p.name}",
            "Top: the crop (nearest-neighbour zoom); middle: |output - reference| on one colour "
            "scale; bottom: LoG detail (what HFEN measures). Numbers are computed on the crop.",
            figure_png(crop_figure(p), dpi=110),
        )
        for i, p in enumerate(panels)
    ]
    written = []
    for f in [*figures, *crop_figs]:
        path = files_dir / f"{f.key}.png"
        path.write_bytes(f.png)
        written.append(path)

    rows, ident_rows = _metrics_rows(runs)
    diagnoses = _diagnoses(runs, data_root=data_root, device=device)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    html_text = _render_html(runs, rows, ident_rows, diagnoses, figures, crop_figs, notes, stamp)
    md_text = _render_md(
        runs, rows, ident_rows, diagnoses, figures, crop_figs, notes, stamp, files_dir.name
    )
    atomic_write_text(out_html, html_text)
    atomic_write_text(out_md, md_text)
    embedded = html_text.count("data:image/png;base64,")
    log.info("wrote %s (%d images embedded) and %s", out_html, embedded, out_md)
    return {
        "html": str(out_html),
        "markdown": str(out_md),
        "figures_dir": str(files_dir),
        "figures": [str(p) for p in written],
        "runs": [{"name": r.name, "label": r.label, "path": str(r.path)} for r in runs],
        "embedded_images": embedded,
        "crops": len(panels),
        "notes": notes,
        "diagnoses": {
            run.name: [f.rule for f in d.triggered] if d is not None else None
            for run, d, _ in diagnoses
        },
    }


def _render_html(runs, rows, ident_rows, diagnoses, figures, crop_figs, notes, stamp) -> str:
    def img(f: _Figure) -> str:
        data = base64.b64encode(f.png).decode("ascii")
        return (
            f'<figure id="{_esc(f.key)}"><img alt="{_esc(f.title)}" '
            f'src="data:image/png;base64,{data}" /><figcaption><b>{_esc(f.title)}.</b> '
            f"{_esc(f.caption)}</figcaption></figure>"
        )

    run_list = "".join(
        f'<li><b>{_esc(r.name)}</b>: {_esc(r.label)} <span class="muted">({_esc(r.path)})'
        "</span></li>"
        for r in runs
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8" />',
        '<meta name="viewport" content="width=device-width, initial-scale=1" />',
        f"<title>medi2i run comparison ({len(runs)} runs)</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<h1>medi2i run comparison</h1>",
        f'<p class="small">Generated {_esc(stamp)}. Runs:</p>',
        f'<ul class="small">{run_list}</ul>',
        "<h2>Final metrics</h2>",
        '<p class="small">Test split (EMA weights, best checkpoint) when the run was tested, '
        "else its last validation. Lung = inside the mask. Best run per column in bold; the "
        "identity row (input taken as the prediction) is the floor every number is read "
        "against.</p>",
        _table_html(rows, ident_rows),
        "<h2>Diagnosis</h2>",
        '<p class="small">The decision rules applied to each run\'s logs '
        "(<code>medi2i diagnose</code>). D runs are weighed against a run without D from this "
        "comparison when there is one; ablations weigh more than D's outputs.</p>",
        _diagnoses_html(diagnoses),
        "<h2>Curves</h2>",
        *(img(f) for f in figures),
        "<h2>Validation crops</h2>",
        '<p class="small">The same lung-dense crops of validation images, rendered by each '
        "run's EMA generator.</p>",
        *(img(f) for f in crop_figs),
    ]
    if not crop_figs:
        parts.append('<p class="muted">No crops could be rendered.</p>')
    if notes:
        parts.append("<h2>Notes</h2>")
        items = "".join(f"<li>{_esc(n)}</li>" for n in notes)
        parts.append(f'<ul class="small">{items}</ul>')
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _render_md(
    runs, rows, ident_rows, diagnoses, figures, crop_figs, notes, stamp, files_name
) -> str:
    lines = [
        "# medi2i run comparison",
        "",
        f"Generated {stamp}. Runs:",
        "",
        *(f"- **{r.name}**: {r.label} (`{r.path}`)" for r in runs),
        "",
        "## Final metrics",
        "",
        "Test split (EMA weights, best checkpoint) when the run was tested, else its last "
        "validation. Lung = inside the mask. Best run per column in bold; the identity row "
        "(input as prediction) is the floor.",
        "",
        _table_md(rows, ident_rows),
        "",
        "## Diagnosis",
        "",
        _diagnoses_md(diagnoses),
        "## Curves",
        "",
    ]

    def block(f: _Figure) -> list[str]:
        return [f"### {f.title}", "", f"![{f.title}]({files_name}/{f.key}.png)", "", f.caption, ""]

    for f in figures:
        lines += block(f)
    lines += ["## Validation crops", ""]
    for f in crop_figs:
        lines += block(f)
    if not crop_figs:
        lines += ["No crops could be rendered.", ""]
    if notes:
        lines += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(lines)
