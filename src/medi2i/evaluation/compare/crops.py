"""The compare report's validation crops: the same lung-dense crops rendered by every run.

:func:`crop_panels` loads each run's EMA generator and validation split, picks lung-dense and
varied crops from the first rendered run's validation images (:func:`pick_crops`) and builds one
:class:`~medi2i.evaluation.plots.CropPanel` per crop: input | each run's output | reference, with
``|output - reference|`` and the LoG detail (the HFEN filter), PSNR and HFEN computed on the crop.
Every image is in [0, 1] display units. A run that cannot be rendered gets an empty column and a
note, never an exception. Each run's EMA generator runs through a
:class:`~medi2i.inference.predictor.Predictor` on the whole image, as ``medi2i predict`` and
``medi2i evaluate`` run it (:func:`_run_generator` is the only place that calls it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_laplace

from medi2i.evaluation.plots import CropColumn, CropPanel, legend_label
from medi2i.evaluation.runs import RunRecord, resolve_data_paths
from medi2i.metrics import hfen, psnr

log = logging.getLogger(__name__)

__all__ = ["crop_panels", "densest_window", "pick_crops"]

#: How many validation images are scanned for lung-dense crops.
_CROP_CANDIDATES = 24


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


def densest_window(mask: np.ndarray, size: int) -> tuple[float, int, int]:
    """``(lung fraction, top, left)`` of the window with the most mask pixels."""
    return _lung_windows(mask, size)[0]


def pick_crops(
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


def _run_generator(gen: Any, item: dict[str, Any], device: str) -> np.ndarray:
    """A run's predictor on one dataset item: its whole-image output, (H, W) in [0, 1]."""
    out = gen.predict_normalised(item["input"][None].to(device))
    return _unit(gen.normalizer, out[0].cpu())


def _load_runs(
    runs: Sequence[RunRecord], *, data_root: str | None, device: str
) -> tuple[dict[str, tuple[Any, Any]], list[str]]:
    """``{run name: (EMA generator, validation dataset)}`` of the runs that load, and notes.

    Runs with the same data settings and normaliser share one dataset.
    """
    from medi2i.data.builders import build_dataset
    from medi2i.inference.loading import load_generator
    from medi2i.inference.predictor import Predictor

    notes: list[str] = []
    loaded: dict[str, tuple[Any, Any]] = {}
    cache: dict[str, Any] = {}
    for run in runs:
        if not run.has_checkpoint:
            notes.append(f"{run.name}: no checkpoint, not rendered")
            continue
        try:
            # dataset items are already normalised: the raw-image intensity check does not apply
            gen = Predictor(
                load_generator(run.path, weights="ema", device=device), intensity_check="off"
            )
            cfg = resolve_data_paths(gen.loaded.config, run.path, data_root)
            key = json.dumps(
                [cfg.data.model_dump(mode="json"), gen.normalizer.state_dict()],
                sort_keys=True,
                default=str,
            )
            if key not in cache:
                cache[key] = build_dataset(cfg, "val", normalizer=gen.normalizer, train=False)
            loaded[run.name] = (gen, cache[key])
        except Exception as exc:  # the report goes on without this run's column
            log.warning("cannot render crops for %s: %s", run.name, exc)
            notes.append(f"{run.name}: not rendered ({type(exc).__name__}: {exc})")
    return loaded, notes


def _column(title: str, full: np.ndarray, ref_crop: np.ndarray, sl: tuple) -> CropColumn:
    """A column of a panel: the crop ``sl`` of ``full`` against the reference crop."""
    crop = full[sl]
    p = psnr(crop, ref_crop, data_range=1.0)
    h = hfen(crop, ref_crop)
    return CropColumn(
        title=title,
        image=crop,
        error=np.abs(crop - ref_crop),
        detail=gaussian_laplace(full, 1.5, mode="reflect")[sl],
        subtitle=f"PSNR {p:.1f} dB, HFEN {h:.2f}",
    )


def _panel(
    runs: Sequence[RunRecord],
    loaded: dict[str, tuple[Any, Any]],
    choice: tuple[float, int, int, int],
    crop_size: int,
    device: str,
) -> CropPanel:
    """One crop (``(density, index, top, left)`` in the first loaded run's split) of every run."""
    density, index, top, left = choice
    ref_gen, ref_ds = next(iter(loaded.values()))
    item = ref_ds[index]
    name = str(item.get("name", index))
    ref_key = "aligned_target" if "aligned_target" in item else "target"
    full_in = _unit(ref_gen.normalizer, item["input"])
    full_ref = _unit(ref_gen.normalizer, item[ref_key])
    full_mask = item["mask"][0].numpy() > 0.5
    size = min(crop_size, *full_mask.shape)
    sl = (slice(top, top + size), slice(left, left + size))
    ref_crop = full_ref[sl]
    columns = [_column("input", full_in, ref_crop, sl)]
    for run in runs:
        title = _wrap_title(legend_label(run))
        if run.name not in loaded:
            columns.append(CropColumn(title=title, image=None, note="not rendered"))
            continue
        gen, ds = loaded[run.name]
        names = [rec.name for rec in ds.records]
        if name not in names:
            columns.append(CropColumn(title=title, image=None, note=f"no {name} in its val"))
            continue
        run_item = ds[names.index(name)]
        full_out = _run_generator(gen, run_item, device)
        run_ref = _unit(gen.normalizer, run_item[ref_key if ref_key in run_item else "target"])
        columns.append(_column(title, full_out, run_ref[sl], sl))
    ref_title = "reference (aligned)" if ref_key == "aligned_target" else "reference (target)"
    columns.append(_column(ref_title, full_ref, ref_crop, sl))
    columns[-1].error = None
    columns[-1].subtitle = f"lung mask ({density:.0%} of crop)"
    lo, hi = np.percentile(ref_crop, (0.5, 99.5))
    pad = 0.05 * max(hi - lo, 1e-3)
    window = (max(0.0, float(lo - pad)), min(1.0, float(hi + pad)))
    return CropPanel(name, full_in, full_mask, (top, left, size), columns, window)


def crop_panels(
    runs: Sequence[RunRecord],
    *,
    data_root: str | None,
    crops: int,
    crop_size: int,
    device: str,
) -> tuple[list[CropPanel], list[str]]:
    """Render ``crops`` lung-dense validation crops with every run's EMA generator.

    Returns:
        The panels, and notes on what could not be rendered.
    """
    if crops <= 0:
        return [], ["crops disabled"]
    loaded, notes = _load_runs(runs, data_root=data_root, device=device)
    if not loaded:
        return [], [
            *notes,
            "no run could be rendered (see notes; pass data_root= if the data moved)",
        ]
    _, ref_ds = next(iter(loaded.values()))
    # the first validation images' masks -> lung-dense, varied crops
    masks = [
        ref_ds[index]["mask"][0].numpy() > 0.5
        for index in range(min(len(ref_ds), _CROP_CANDIDATES))
    ]
    chosen = pick_crops(masks, crops, crop_size)
    return [_panel(runs, loaded, choice, crop_size, device) for choice in chosen], notes


def _wrap_title(text: str, width: int = 22) -> str:
    """``text`` broken into lines of at most ``width`` characters (a longer word stays whole)."""
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines)
