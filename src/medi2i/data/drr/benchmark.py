"""Writing a whole benchmark: images, manifest, summary and preview (:func:`generate_benchmark`).

Samples are rendered by :func:`medi2i.data.drr.render.render_pair` from their own random streams,
in worker threads (each running torch single-threaded) or in the calling thread; the output is
the same either way. PNGs are uint16 ``round(v * 65535)`` (:func:`to_uint16`), masks uint8 0/255.

Output layout (read by :mod:`medi2i.data.pairs`)::

    OUT/{train,val,test}/{input,target,aligned,mask}/NNNNN.png
    OUT/manifest.csv      split,input,target,mask,aligned,<pose and displacement columns>
    OUT/benchmark.json    settings, display window, physics, CT files, counts, timing, version
    OUT/preview.png       input | target | aligned | lung mask | |target - aligned| x4

The output folder must be new or empty, or hold an earlier benchmark (marked by
``benchmark.json``'s ``format``) that ``overwrite`` replaces: only that benchmark's own files are
deleted.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import functools
import hashlib
import io
import json
import logging
import os
import platform
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medi2i.data.drr.ct import BODY_HU, locate_ct_data
from medi2i.data.drr.misalignment import SPLIT_IDS, sample_rng
from medi2i.data.drr.render import (
    DISPLAY_GAMMA,
    DISPLAY_HI_HEADROOM,
    DISPLAY_LO_PERCENTILE,
    LUNG_MASK_MIN_MM,
    display_window,
    render_pair,
)
from medi2i.data.drr.settings import DRRSettings, split_counts
from medi2i.data.drr.volume import (
    BONE_LABELS,
    BONE_RIM_HU,
    CARTILAGE_LABEL,
    HU_SOFT_TISSUE,
    LUNG_LABELS,
    MU_SOFT_PER_MM,
    MU_WATER_PER_MM,
    Z_EXTENSION_MM,
    ProjectionVolume,
    load_projection_volume,
)
from medi2i.data.io import write_png
from medi2i.utils.atomic import atomic_write_text
from medi2i.utils.formatting import significant
from medi2i.utils.progress import Progress
from medi2i.utils.version import __version__
from medi2i.viz import make_grid, overlay_mask, save_rgb_png

logger = logging.getLogger(__name__)

__all__ = ["BENCHMARK_FORMAT", "MANIFEST_COLUMNS", "generate_benchmark", "to_uint16"]

UINT16_MAX = 65535
IMAGE_KINDS = ("input", "target", "aligned", "mask")
MANIFEST_COLUMNS = (
    "split",
    "input",
    "target",
    "mask",
    "aligned",
    "rot_x_deg",
    "rot_y_deg",
    "rot_z_deg",
    "shift_x_mm",
    "shift_z_mm",
    "scale",
    "disp_max_px",
    "disp_mean_px",
    "disp_p95_px",
    "lung_fraction",
)
BENCHMARK_FORMAT = "medi2i-drr-benchmark"
_OWNED_FILES = ("benchmark.json", "manifest.csv", "preview.png")
_OWNED_IMAGE = re.compile(r"^\.?\d{5,}(\..*\.tmp)?\.png$")


def to_uint16(image: np.ndarray) -> np.ndarray:
    """Display image in [0, 1] -> uint16 ``round(v * 65535)``."""
    return np.round(np.clip(image, 0.0, 1.0) * UINT16_MAX).astype(np.uint16)


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse foreign non-empty folders; with ``overwrite`` remove only an earlier benchmark."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    marker = out / "benchmark.json"
    previous = None
    if marker.is_file():
        try:
            previous = json.loads(marker.read_text(encoding="utf-8")).get("format")
        except (OSError, ValueError, AttributeError):
            previous = None
    if previous != BENCHMARK_FORMAT:
        raise ValueError(
            f"output folder {out} is not empty and does not hold a medi2i DRR benchmark; "
            "choose a new or empty folder"
        )
    if not overwrite:
        raise ValueError(
            f"output folder {out} already holds a DRR benchmark; pass overwrite=True "
            "(--overwrite) to replace it, or choose another folder"
        )
    removed = 0
    for split in SPLIT_IDS:
        for kind in IMAGE_KINDS:
            folder = out / split / kind
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if path.is_file() and _OWNED_IMAGE.match(path.name):
                    path.unlink()
                    removed += 1
    for name in _OWNED_FILES:
        path = out / name
        if path.is_file():
            path.unlink()
            removed += 1
    logger.info("overwrite: removed %d files of the earlier benchmark in %s", removed, out)
    leftovers = [p for p in out.rglob("*") if p.is_file()]
    if leftovers:
        logger.warning(
            "%d files that are not part of a benchmark were left in %s (e.g. %s)",
            len(leftovers),
            out,
            leftovers[0],
        )


def _file_info(path: Path) -> dict[str, Any]:
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": _sha256(str(path))}


@functools.lru_cache(maxsize=4)
def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _preview(samples: list[dict[str, Any]]) -> np.ndarray:
    rows = []
    for sample in samples:
        diff = np.clip(np.abs(sample["target"] - sample["aligned"]) * 4.0, 0.0, 1.0)
        rows.append(
            [
                sample["input"],
                sample["target"],
                sample["aligned"],
                overlay_mask(sample["input"], sample["mask"]),
                diff,
            ]
        )
    size = samples[0]["input"].shape[1]
    labels = (
        ["input", "target (misaligned)", "aligned target", "lung mask", "|target-aligned| x4"]
        if size >= 128
        else None
    )
    return make_grid(rows, pad=2, labels=labels)


def _worker_count(settings: DRRSettings) -> int:
    if settings.workers > 0:
        return min(settings.workers, settings.count)
    return max(1, min(os.cpu_count() or 1, 8, settings.count))


@dataclass
class _SampleWriter:
    """Renders one sample, writes its four PNGs and returns its manifest row."""

    out: Path
    settings: DRRSettings
    window: tuple[float, float]
    volume: ProjectionVolume
    width: int

    def __call__(self, task: tuple[str, int, bool]) -> tuple[dict[str, str], dict | None]:
        split, index, keep = task
        rng = sample_rng(self.settings.seed, split, index)
        sample = render_pair(self.settings, rng, window=self.window, volume=self.volume)
        name = f"{index:0{self.width}d}.png"
        rel = {kind: f"{split}/{kind}/{name}" for kind in IMAGE_KINDS}
        for kind in ("input", "target", "aligned"):
            write_png(self.out / rel[kind], to_uint16(sample[kind]))
        write_png(self.out / rel["mask"], sample["mask"].astype(np.uint8) * np.uint8(255))
        stats = sample["disp_stats"]
        row = {"split": split, **{k: rel[k] for k in ("input", "target", "mask", "aligned")}}
        row.update({k: significant(v, 6) for k, v in sample["pose"].as_dict().items()})
        row["disp_max_px"] = significant(stats["max_px"], 6)
        row["disp_mean_px"] = significant(stats["mean_px"], 6)
        row["disp_p95_px"] = significant(stats["p95_px"], 6)
        row["lung_fraction"] = significant(float(sample["mask"].mean()), 6)
        if not keep:
            return row, None
        return row, {k: sample[k] for k in ("input", "target", "aligned", "mask")}


def _consume(
    results: Iterator[tuple[dict[str, str], dict[str, Any] | None]],
    rows: list[dict[str, str]],
    preview: list[dict[str, Any]],
    ticker: Progress,
) -> None:
    for row, sample in results:
        rows.append(row)
        if sample is not None:
            preview.append(sample)
        ticker.update()


def generate_benchmark(
    out_dir: str | os.PathLike, settings: DRRSettings, *, progress: bool = False
) -> dict[str, Any]:
    """Generate the whole benchmark into ``out_dir`` and return its summary.

    Args:
        out_dir: output folder; created if missing. It must be empty, or hold an earlier
            benchmark and ``settings.overwrite`` be true (then only that benchmark's own files
            are deleted; anything else is left alone).
        settings: the benchmark definition (validated here).
        progress: show a tqdm progress bar.

    Returns:
        The summary also written to ``OUT/benchmark.json`` (settings, counts, display window,
        physics constants, geometry, CT file sizes and hashes, ``seconds``, version).

    Raises:
        ValueError: for invalid settings or an output folder that must not be written.
        FileNotFoundError: if the CT data cannot be found.
    """
    settings.validate()
    out = Path(out_dir)
    ct_file, labels_file = locate_ct_data(settings.ct_path, settings.labels_path)
    _prepare_out_dir(out, settings.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    # Mark the folder as ours before writing images, so that an interrupted run can be replaced
    # with overwrite=True; the final summary replaces this marker.
    marker = {"format": BENCHMARK_FORMAT, "status": "incomplete"}
    marker["settings"] = dataclasses.asdict(settings)
    atomic_write_text(out / "benchmark.json", json.dumps(marker, indent=2) + "\n")
    counts = split_counts(settings.count, settings.val_fraction, settings.test_fraction)
    logger.info(
        "generating DRR benchmark in %s: %s pairs of %dx%d (seed %d, misalign %.3g px)",
        out,
        counts,
        settings.size,
        settings.size,
        settings.seed,
        settings.misalign_px,
    )
    start = time.perf_counter()
    volume = load_projection_volume(settings)
    window = display_window(settings)
    setup_seconds = time.perf_counter() - start

    width = max(5, len(str(max(counts.values()) - 1)))
    tasks = [
        (split, index, position < settings.preview_count)
        for position, (split, index) in enumerate(
            (split, index) for split, n in counts.items() for index in range(n)
        )
    ]
    workers = _worker_count(settings)
    writer = _SampleWriter(out, settings, window, volume, width)
    rows: list[dict[str, str]] = []
    preview: list[dict[str, Any]] = []
    ticker = Progress(
        settings.count, desc="DRR benchmark", unit="pair", enabled=progress, log=logger
    )
    try:
        if workers == 1:
            _consume(map(writer, tasks), rows, preview, ticker)
        else:
            # Threads, each running torch single-threaded: the heavy parts (grid_sample, zlib,
            # file writes) release the GIL, and unlike torch's intra-op threads, independent
            # samples never wait for each other (no spinning when the CPU is shared).
            logger.info("rendering with %d threads (1 torch thread each)", workers)
            threads_before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with ThreadPoolExecutor(
                    workers, initializer=torch.set_num_threads, initargs=(1,)
                ) as pool:
                    _consume(pool.map(writer, tasks), rows, preview, ticker)
            finally:
                torch.set_num_threads(threads_before)
    finally:
        ticker.close()

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "manifest.csv", buffer.getvalue())
    preview_info = None
    if preview:
        grid = _preview(preview)
        save_rgb_png(out / "preview.png", grid)
        preview_info = {"file": "preview.png", "height": grid.shape[0], "width": grid.shape[1]}

    seconds = time.perf_counter() - start
    summary: dict[str, Any] = {
        "format": BENCHMARK_FORMAT,
        "format_version": 1,
        "status": "complete",
        "medi2i_version": __version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": dataclasses.asdict(settings),
        "counts": counts,
        "seconds": round(seconds, 3),
        "timing": {
            "setup_seconds": round(setup_seconds, 3),
            "pairs_per_second": round(settings.count / max(seconds - setup_seconds, 1e-9), 3),
            "workers": workers,
            "torch_threads_per_worker": torch.get_num_threads() if workers == 1 else 1,
            "platform": platform.platform(),
        },
        "display": {
            "L_lo": window[0],
            "L_hi": window[1],
            "gamma": DISPLAY_GAMMA,
            "window_rule": f"L_lo = p{DISPLAY_LO_PERCENTILE:g} of the canonical input, "
            f"L_hi = {DISPLAY_HI_HEADROOM:g} * its maximum",
            "formula": "v = clip((L - L_lo) / (L_hi - L_lo), 0, 1) ** gamma; "
            "png = round(v * 65535)",
        },
        "physics": {
            "mu_water_per_mm": MU_WATER_PER_MM,
            "mu_soft_per_mm": MU_SOFT_PER_MM,
            "hu_soft_tissue": HU_SOFT_TISSUE,
            "bone_scale": settings.bone_scale,
            "lung_mask_min_mm": LUNG_MASK_MIN_MM,
            "body_hu": BODY_HU,
            "bone_rim_hu": BONE_RIM_HU,
            "bone_labels": list(BONE_LABELS)
            + ([CARTILAGE_LABEL] if settings.include_cartilage else []),
            "lung_labels": list(LUNG_LABELS),
            "input": "L = P(mu non-bone) + bone_scale * P(mu bone)",
            "aligned": "L = P(mu non-bone) + mu_soft * P(bone occupancy)",
        },
        "geometry": {
            "projection": "parallel, anterior-posterior",
            "display": "row 0 = superior; column 0 = patient right (heart on the image right)",
            "fov_mm": settings.fov_mm,
            "pixel_mm": settings.fov_mm / settings.size,
            "volume_shape_zyx": list(volume.data.shape[2:]),
            "volume_spacing_mm_xyz": list(volume.spacing_mm),
            "z_extension_mm": Z_EXTENSION_MM,
        },
        "misalignment": {
            "warp": "target = aligned(p + disp(p)), bilinear, border replicate",
            "max_px_drawn_from": [0.5 * settings.misalign_px, settings.misalign_px],
        },
        "ct": {"ct": _file_info(ct_file), "labels": _file_info(labels_file)},
        "files": {"manifest": "manifest.csv", "preview": preview_info},
    }
    atomic_write_text(out / "benchmark.json", json.dumps(summary, indent=2) + "\n")
    logger.info(
        "DRR benchmark done: %d pairs in %.1f s (%.1f pairs/s) -> %s",
        settings.count,
        seconds,
        settings.count / max(seconds, 1e-9),
        out,
    )
    return summary
