"""Matplotlib figures of training runs for the compare report.

Figures are built on :class:`matplotlib.figure.Figure` directly, never through ``pyplot``: no
global figure state, no GUI backend, and PNG rendering goes through matplotlib's Agg canvas
whatever backend the process selected (importing this module does not change it), so they are
safe in scripts, tests, notebooks and threads.
Each function returns a figure, or ``None`` when no run logged what it shows; :func:`figure_png`
renders one to PNG bytes. A run keeps the same colour in every figure (:func:`run_colors`).

Curves of training diagnostics (D outputs, loss shares, gradient norms, learning rates) use the
step log when it exists (x = fractional epoch), else the per-epoch means; validation metrics are
per epoch. Every curve is optional: a key no run logged draws "not logged" (the figures compare
runs of different modes). Keys are the logged names of :mod:`medi2i.run.scalars`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from medi2i.evaluation.diagnose.thresholds import GAN_SHARE_TARGET
from medi2i.evaluation.runs import RunRecord
from medi2i.losses import DECISION_THRESHOLDS
from medi2i.run.scalars import (
    D_ACC,
    D_FAKE,
    D_REAL,
    NETWORKS,
    PART_NAMES,
    PHASE,
    clip_rate_key,
    epoch_key,
    grad_norm_key,
    lr_key,
    share_key,
    val_key,
)

log = logging.getLogger(__name__)

__all__ = [
    "CropColumn",
    "CropPanel",
    "crop_figure",
    "discriminator_figure",
    "figure_png",
    "gradients_figure",
    "learning_rate_figure",
    "legend_label",
    "loss_composition_figure",
    "phase_starts",
    "run_colors",
    "validation_figure",
]

#: Validation metrics shown (lung = inside the mask), with how to read them.
VAL_PANELS: tuple[tuple[str, str], ...] = (
    ("psnr_mask", "PSNR lung (dB), higher is better"),
    ("ssim_mask", "SSIM lung, higher is better"),
    ("mae_mask", "MAE lung, lower is better"),
    ("hfen_mask", "HFEN lung, lower is better"),
    ("gmsd_mask", "GMSD lung, lower is better"),
    ("sharpness_mask", "sharpness ratio lung, 1 is best"),
)

_PART_STYLES = {
    "gan": ("GAN", "#d62728"),
    "fm": ("FM", "#ff7f0e"),
    "recon": ("recon", "#1f77b4"),
    "smooth": ("smooth (R)", "#2ca02c"),
    "perceptual": ("perceptual", "#9467bd"),
}
if set(_PART_STYLES) != set(PART_NAMES):  # a new loss part needs a label and a colour here
    raise ImportError(
        f"plots: loss parts {sorted(PART_NAMES)} need styles, got {sorted(_PART_STYLES)}"
    )

#: Loss parts of G, bottom to top of the stack (GAN first, so its top edge reads as its share).
SHARE_PARTS: tuple[tuple[str, str, str], ...] = tuple(
    (share_key(part), *_PART_STYLES[part]) for part in _PART_STYLES
)


def run_colors(runs: Sequence[RunRecord]) -> list[str]:
    """One colour per run (matplotlib's tab10 cycle), the same in every figure."""
    cycle = [f"C{i % 10}" for i in range(len(runs))]
    return cycle


def legend_label(run: RunRecord) -> str:
    """``name (label)``, or just the label when the directory name says the same."""
    return run.label if run.name == run.label else f"{run.name} ({run.label})"


def figure_png(fig: Figure, *, dpi: int = 100) -> bytes:
    """Render a figure to PNG bytes (Agg)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def _new_figure(rows: int, cols: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False))
    return fig, axes


def _series(run: RunRecord, key: str) -> tuple[np.ndarray, np.ndarray]:
    """A training diagnostic from the step log (x in epochs), else the epoch log."""
    if run.steps:
        x, y = run.series(key, source="steps")
        if np.isfinite(y).any():
            return x, y
    x, y = run.series(epoch_key(key))
    return x, y


def _legend(fig: Figure, runs: Sequence[RunRecord], colors: Sequence[str]) -> None:
    handles = [Line2D([], [], color=c, lw=2, label=legend_label(r)) for r, c in zip(runs, colors)]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3), fontsize=8)


def _epoch_axis(ax: Axes) -> None:
    """Label the x axis in epochs, with whole-epoch ticks."""
    ax.set_xlabel("epoch", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


#: How a phase switch is drawn (a vertical line in the run's colour) and explained.
_PHASE_LINE = {"ls": (0, (4, 3)), "lw": 1.0, "alpha": 0.8}
_PHASE_NOTE = "vertical dashes: a network joins (train.phases)"


def phase_starts(run: RunRecord) -> list[float]:
    """Where each later training phase of a run began (``train.phases``), in epochs on the
    curves' x axis: the end of the epoch before the first epoch logged with the new phase.
    Empty for a run of one phase (or one that did not log phases)."""
    x, y = run.series(PHASE)
    return [float(x[i] - 1) for i in range(1, y.size) if y[i] != y[i - 1]]


def _mark_phases(axes: Sequence[Axes], runs: Sequence[RunRecord], colors: Sequence[str]) -> bool:
    """Draw each run's phase switches on every axis; whether any run has one."""
    marked = False
    for run, color in zip(runs, colors):
        for start in phase_starts(run):
            marked = True
            for ax in axes:
                ax.axvline(start, color=color, **_PHASE_LINE)
    return marked


def _titled(fig: Figure, title: str, phases: bool) -> None:
    fig.suptitle(f"{title}\n{_PHASE_NOTE}" if phases else title, fontsize=11)


def _no_data(ax: Axes, text: str = "not logged") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.5")
    ax.set_axis_off()


def validation_figure(runs: Sequence[RunRecord]) -> Figure | None:
    """Validation metrics per epoch (EMA generator): PSNR/SSIM/MAE, HFEN/GMSD/sharpness (lung)."""
    if not any(r.epochs for r in runs):
        return None
    colors = run_colors(runs)
    fig, axes = _new_figure(2, 3, 12.0, 6.6)
    for ax, (key, title) in zip(axes.flat, VAL_PANELS):
        drawn = False
        for run, color in zip(runs, colors):
            x, y = run.series(val_key(key))
            if np.isfinite(y).any():
                ax.plot(x, y, "o-", color=color, ms=3, lw=1.5)
                drawn = True
        if key == "sharpness_mask" and drawn:
            ax.axhline(1.0, color="0.3", lw=0.8, ls="--")
            ax.axhline(0.9, color="0.6", lw=0.8, ls=":")
        if not drawn:
            _no_data(ax)
        ax.set_title(title, fontsize=9)
        _epoch_axis(ax)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    drawn_axes = [ax for ax in axes.flat if ax.axison]
    _titled(fig, "Validation (EMA weights)", _mark_phases(drawn_axes, runs, colors))
    _legend(fig, runs, colors)
    return fig


def discriminator_figure(runs: Sequence[RunRecord]) -> Figure | None:
    """``D_real`` vs ``D_fake``, their gap (log scale) and ``D_acc``, for the runs that trained D.

    The gap panel carries the ``d_ineffective`` thresholds of :mod:`medi2i.evaluation.diagnose`
    (dotted, one per GAN mode present): below it, D's outputs do not separate real from fake.
    """
    from medi2i.evaluation.diagnose import D_GAP_THRESHOLDS

    with_d = [(r, c) for r, c in zip(runs, run_colors(runs)) if r.has_D]
    if not with_d:
        return None
    fig, axes = _new_figure(1, 3, 13.0, 3.8)
    ax_out, ax_gap, ax_acc = axes.flat
    thresholds, gap_thresholds = set(), set()
    for run, color in with_d:
        curves = {}
        for key, style in ((D_REAL, "-"), (D_FAKE, "--")):
            x, y = _series(run, key)
            curves[key] = (x, y)
            if y.size:
                ax_out.plot(x, y, style, color=color, lw=1.4)
        (xr, yr), (_, yf) = curves[D_REAL], curves[D_FAKE]
        if yr.size and yr.shape == yf.shape:
            ax_gap.plot(xr, np.maximum(np.abs(yr - yf), 1e-6), color=color, lw=1.4)
        x, y = _series(run, D_ACC)
        if y.size:
            ax_acc.plot(x, y, "-", color=color, lw=1.4)
        thresholds.add(DECISION_THRESHOLDS.get(run.gan_mode, 0.5))
        gap_thresholds.add(D_GAP_THRESHOLDS.get(run.gan_mode, D_GAP_THRESHOLDS["lsgan"]))
    for t in thresholds:
        ax_out.axhline(t, color="0.5", lw=0.8, ls=":")
    for t in gap_thresholds:
        ax_gap.axhline(t, color="0.3", lw=0.9, ls=":")
    ax_out.set_title("D_real (solid) vs D_fake (dashed): mean raw output", fontsize=9)
    ax_gap.set_yscale("log")
    ax_gap.set_title("|D_real - D_fake| (dotted: 'D at chance' threshold)", fontsize=9)
    ax_acc.axhspan(0.45, 0.55, color="0.85", zorder=0)
    ax_acc.axhline(0.5, color="0.4", lw=0.8, ls="--")
    ax_acc.set_ylim(0.0, 1.0)
    ax_acc.set_title("D accuracy (grey band: chance, 0.5 +/- 0.05)", fontsize=9)
    for ax in (ax_out, ax_gap, ax_acc):
        _epoch_axis(ax)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    d_runs, d_colors = [r for r, _ in with_d], [c for _, c in with_d]
    _titled(fig, "Discriminator", _mark_phases(axes.flat, d_runs, d_colors))
    _legend(fig, d_runs, d_colors)
    return fig


def loss_composition_figure(runs: Sequence[RunRecord]) -> Figure | None:
    """Stacked shares (percent) of G's loss per run: GAN, FM, recon, smoothness, perceptual.

    Runs whose loss is reconstruction only (G-only) get no panel of their own when other runs
    have something to show; the title lists them.
    """
    usable = [r for r in runs if any(_series(r, key)[1].size for key, _, _ in SHARE_PARTS)]
    if not usable:
        return None

    def recon_only(run: RunRecord) -> bool:
        others = [_series(run, key)[1] for key, _, _ in SHARE_PARTS if key != share_key("recon")]
        return not any(np.nan_to_num(y).any() for y in others)

    omitted = [r for r in usable if recon_only(r)]
    if len(omitted) < len(usable):
        usable = [r for r in usable if r not in omitted]
    else:
        omitted = []
    cols = min(3, len(usable))
    rows = -(-len(usable) // cols)
    fig, axes = _new_figure(rows, cols, 4.0 * cols, 2.9 * rows + 0.6)
    for ax in axes.flat[len(usable) :]:
        ax.set_axis_off()
    phased = False
    for ax, run in zip(axes.flat, usable):
        x_ref = None
        stacks, labels, colors = [], [], []
        for key, label, color in SHARE_PARTS:
            x, y = _series(run, key)
            if not y.size:
                continue
            if x_ref is None:
                x_ref = x
            if x.shape != x_ref.shape:
                y = np.interp(x_ref, x, y)
            stacks.append(np.nan_to_num(y))
            labels.append(label)
            colors.append(color)
        ax.stackplot(x_ref, *stacks, labels=labels, colors=colors, alpha=0.85)
        if run.has_D:
            ax.axhline(GAN_SHARE_TARGET, color="k", lw=0.9, ls="--")
            ax.text(
                x_ref[0],
                GAN_SHARE_TARGET + 1.5,
                f"GAN target {GAN_SHARE_TARGET:.0f}%",
                fontsize=7,
                va="bottom",
            )
        phased = _mark_phases([ax], [run], ["k"]) or phased
        ax.set_ylim(0, 100)
        ax.set_xlim(x_ref[0], x_ref[-1] if x_ref[-1] > x_ref[0] else x_ref[0] + 1)
        ax.set_title(legend_label(run), fontsize=9)
        _epoch_axis(ax)
        ax.set_ylabel("% of G's loss", fontsize=8)
        ax.tick_params(labelsize=8)
    handles = [Patch(color=color, label=label) for _, label, color in SHARE_PARTS]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8)
    title = "Composition of G's loss (weighted parts, stacked)"
    if omitted:
        title += "\n100% recon, not shown: " + ", ".join(r.name for r in omitted)
    _titled(fig, title, phased)
    return fig


def gradients_figure(runs: Sequence[RunRecord]) -> Figure | None:
    """Gradient norms before clipping (log scale, clip limit dotted) and clip rates, per net."""
    nets = NETWORKS
    if not any(_series(r, grad_norm_key(n))[1].size for r in runs for n in nets):
        return None
    colors = run_colors(runs)
    fig, axes = _new_figure(2, 3, 12.0, 6.2)
    for col, net in enumerate(nets):
        ax_n, ax_c = axes[0, col], axes[1, col]
        drawn = False
        limits = set()
        for run, color in zip(runs, colors):
            x, y = _series(run, grad_norm_key(net))
            if not y.size:
                continue
            drawn = True
            ax_n.plot(x, y, color=color, lw=1.3)
            xc, yc = _series(run, clip_rate_key(net))
            if yc.size:
                ax_c.plot(xc, yc, color=color, lw=1.3)
            limit = run.cfg(f"optim.{net}.grad_clip") or run.cfg("optim.grad_clip")
            if limit:
                limits.add(float(limit))
        if not drawn:
            _no_data(ax_n, f"no {net} trained")
            _no_data(ax_c, f"no {net} trained")
        else:
            for limit in limits:
                ax_n.axhline(limit, color="0.3", lw=0.8, ls=":")
            ax_n.set_yscale("log")
            ax_c.set_ylim(-0.03, 1.03)
            ax_c.axhline(0.5, color="0.6", lw=0.8, ls="--")
        ax_n.set_title(f"grad norm {net} (before clipping; dotted: limit)", fontsize=9)
        ax_c.set_title(f"clip rate {net} (fraction of steps clipped)", fontsize=9)
        for ax in (ax_n, ax_c):
            _epoch_axis(ax)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
    drawn_axes = [ax for ax in axes.flat if ax.axison]
    _titled(fig, "Gradients and clipping", _mark_phases(drawn_axes, runs, colors))
    _legend(fig, runs, colors)
    return fig


def learning_rate_figure(runs: Sequence[RunRecord]) -> Figure | None:
    """Learning rates of G, R and D over training."""
    nets = NETWORKS
    if not any(_series(r, lr_key(n))[1].size for r in runs for n in nets):
        return None
    colors = run_colors(runs)
    fig, axes = _new_figure(1, 3, 12.0, 3.4)
    for ax, net in zip(axes.flat, nets):
        drawn = False
        for i, (run, color) in enumerate(zip(runs, colors)):
            x, y = _series(run, lr_key(net))
            if y.size:
                # runs often share a schedule: earlier runs drawn wider so overlaps stay visible
                width = 1.4 + 2.5 * (len(runs) - 1 - i) / max(1, len(runs) - 1)
                ax.plot(x, y, color=color, lw=width, alpha=0.9)
                drawn = True
        if not drawn:
            _no_data(ax, f"no {net} trained")
        else:
            ax.set_ylim(bottom=0.0)
        ax.set_title(f"learning rate {net}", fontsize=9)
        _epoch_axis(ax)
        ax.tick_params(labelsize=8)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.grid(alpha=0.3)
    drawn_axes = [ax for ax in axes.flat if ax.axison]
    _titled(fig, "Learning rates", _mark_phases(drawn_axes, runs, colors))
    _legend(fig, runs, colors)
    return fig


# --------------------------------------------------------------------------------------------
# validation crops
# --------------------------------------------------------------------------------------------


@dataclass
class CropColumn:
    """One column of a crop panel: an image crop, its error map and its high-pass detail.

    Arrays are 2D in [0, 1] units (shown through the panel's window); ``error`` is ``|image - ref|``
    and ``detail`` the Laplacian of Gaussian (sigma 1.5, the HFEN filter) of the image; None
    where a run could not be rendered (``note`` says why).
    """

    title: str
    image: np.ndarray | None
    error: np.ndarray | None = None
    detail: np.ndarray | None = None
    subtitle: str = ""
    note: str = ""


@dataclass
class CropPanel:
    """A validation image's lung crop rendered by every run.

    Attributes:
        name: the image's name in the split.
        full_input: the whole input image (display units) for the overview.
        full_mask: the whole lung mask (bool), outlined on the overview.
        box: ``(top, left, size)`` of the crop in the full image.
        columns: input, each run's EMA output, reference.
        window: display window of the crops (``[lo, hi]`` shown black to white), e.g. the
            reference crop's percentiles, so that soft-tissue detail fills the grey scale;
            the same for every column.
    """

    name: str
    full_input: np.ndarray
    full_mask: np.ndarray | None
    box: tuple[int, int, int]
    columns: list[CropColumn]
    window: tuple[float, float] = (0.0, 1.0)


def crop_figure(panel: CropPanel) -> Figure:
    """Overview with the crop box, then per column: crop (zoom), |error| and LoG detail.

    Pixels are shown with nearest-neighbour interpolation, so blur is the model's, not the
    figure's; every crop uses the panel's display window. Error maps share one colour scale
    (the 99th percentile of the runs' errors) and detail maps one symmetric grey scale (from
    the reference), so columns compare directly.
    """
    cols = 1 + len(panel.columns)
    cell = 1.85
    fig = Figure(figsize=(cell * cols, cell * 3 + 0.5), layout="constrained")
    axes = fig.subplots(3, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    top, left, size = panel.box
    lo, hi = panel.window
    ax = axes[0, 0]
    ax.imshow(panel.full_input, cmap="gray", vmin=0, vmax=1, interpolation="antialiased")
    if panel.full_mask is not None and panel.full_mask.any():
        ax.contour(panel.full_mask.astype(float), levels=[0.5], colors="#00c0ff", linewidths=0.6)
    ax.add_patch(Rectangle((left - 0.5, top - 0.5), size, size, fill=False, ec="yellow", lw=1.2))
    ax.set_title(f"{panel.name}: input (crop window {lo:.2f}-{hi:.2f})", fontsize=8)
    run_errors = [c.error for c in panel.columns[1:-1] if c.error is not None]
    pool = run_errors or [c.error for c in panel.columns if c.error is not None]
    err_max = float(np.percentile(np.concatenate([e.ravel() for e in pool]), 99)) if pool else 1
    err_max = max(err_max, 1e-6)
    ref = panel.columns[-1].detail
    det_max = float(np.percentile(np.abs(ref), 99)) if ref is not None else 1.0
    det_max = max(det_max, 1e-9)
    err_image = None
    for c, column in enumerate(panel.columns, start=1):
        ax_i, ax_e, ax_d = axes[0, c], axes[1, c], axes[2, c]
        if column.image is None:
            for a in (ax_i, ax_e, ax_d):
                _no_data(a, column.note or "n/a")
            ax_i.set_title(column.title, fontsize=8)
            continue
        ax_i.imshow(column.image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax_i.set_title(column.title, fontsize=8)
        if column.error is not None:
            err_image = ax_e.imshow(
                column.error, cmap="magma", vmin=0, vmax=err_max, interpolation="nearest"
            )
            if column.subtitle:
                ax_e.set_title(column.subtitle, fontsize=7)
        elif panel.full_mask is not None:  # the reference: show the crop's lung mask instead
            ax_e.imshow(
                panel.full_mask[top : top + size, left : left + size],
                cmap="gray", vmin=0, vmax=1, interpolation="nearest",
            )  # fmt: skip
            ax_e.set_title(column.subtitle or "lung mask", fontsize=7)
        else:
            ax_e.set_axis_off()
        if column.detail is not None:
            ax_d.imshow(
                column.detail, cmap="gray", vmin=-det_max, vmax=det_max, interpolation="nearest"
            )
        else:
            ax_d.set_axis_off()
    axes[1, 0].set_axis_off()
    if err_image is not None:
        cax = axes[1, 0].inset_axes([0.4, 0.05, 0.12, 0.9])
        fig.colorbar(err_image, cax=cax)
        cax.tick_params(labelsize=7)
        axes[1, 0].text(0.0, 0.5, "|error|", fontsize=8, transform=axes[1, 0].transAxes)
    axes[2, 0].set_axis_off()
    axes[2, 0].text(
        0.0, 0.5, "detail:\nLoG sigma 1.5\n(HFEN filter)", fontsize=8,
        transform=axes[2, 0].transAxes, va="center",
    )  # fmt: skip
    return fig
