"""Helpers shared by the benchmark scripts: machine description, device sync, JSON report.

The scripts run as ``python benchmarks/bench_x.py``, which puts this folder first on
``sys.path``, so they import it as ``from _common import ...``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medi2i.utils.atomic import atomic_write_text


def machine_info(device: torch.device | None = None) -> dict[str, object]:
    """Describe the machine, library versions and (if given) the device a timing was taken on."""
    info: dict[str, object] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    if device is not None:
        info["device"] = str(device)
    if hasattr(os, "getloadavg"):  # other processes sharing the CPU inflate the times
        info["load_average_1min_at_start"] = round(os.getloadavg()[0], 2)
    try:  # the CPU model name, where Linux exposes it
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a timer read afterwards is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_report(path: str | os.PathLike, report: dict) -> Path:
    """Write ``report`` as indented JSON to ``path`` atomically (parent folders created)."""
    return atomic_write_text(path, json.dumps(report, indent=2) + "\n")


def load_run_split(
    run: str | os.PathLike, data: str | os.PathLike, split: str, *, weights: str, device
) -> tuple[Any, Any, float]:
    """A run's generator and one split of a dataset, normalised as the run was trained.

    Returns:
        ``(loaded, dataset, data_range)``: the :class:`~medi2i.inference.LoadedGenerator`,
        the split's dataset (no augmentation) and the width of the network's value range.
    """
    from medi2i.data.builders import build_dataset
    from medi2i.inference import load_generator

    loaded = load_generator(run, weights=weights, device=device)
    cfg = loaded.config.model_copy(deep=True)
    cfg.data.root, cfg.data.manifest = str(data), None
    dataset = build_dataset(cfg, split, normalizer=loaded.normalizer, train=False)
    return loaded, dataset, float(loaded.normalizer.out_hi - loaded.normalizer.out_lo)


_PREDICT_PROBE = textwrap.dedent(
    """
    import json, resource, sys, time
    start = time.perf_counter()
    import numpy as np, torch
    from medi2i.data.io import read_image
    from medi2i.inference import Predictor
    imported = time.perf_counter()
    run, tta, precision, sources = sys.argv[1], sys.argv[4], sys.argv[6], sys.argv[7:]
    size, tile, repeats = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[5])
    transforms = tta.split(",") if tta else None
    predictor = Predictor.from_run(
        run, tile=tile or None, batch_size=1, tta=transforms, precision=precision)
    loaded = time.perf_counter()
    images = []
    for source in sources:
        image, meta = read_image(source)
        if image.shape != (size, size):
            image = torch.nn.functional.interpolate(
                torch.from_numpy(image.astype(np.float32))[None, None], size=(size, size),
                mode="bilinear", align_corners=False)[0, 0].numpy()
        images.append((image, meta.stored_dtype, source))
    seconds, finite = [], True
    for k in range(repeats):
        image, dtype, source = images[k % len(images)]
        t0 = time.perf_counter()
        out = predictor(image, stored_dtype=dtype, source=source)
        seconds.append(time.perf_counter() - t0)
        finite = finite and bool(np.isfinite(out).all())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"import_s": imported - start, "load_s": loaded - imported,
                      "seconds": seconds, "peak_rss_mb": peak, "finite": finite,
                      "threads": torch.get_num_threads()}))
    """
)


def predict_probe(
    run: str | os.PathLike,
    sources: list[Path],
    *,
    size: int,
    tile: int = 0,
    tta: str = "",
    repeats: int = 1,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Time :class:`medi2i.Predictor` as ``medi2i predict`` uses it, in a fresh process.

    The process imports medi2i (``import_s``), loads the run (``load_s``), then predicts
    ``repeats`` images (``sources`` in turn, read in their stored units and resized to
    ``size`` x ``size`` when they differ) and reports each call's seconds and its peak resident
    memory (``peak_rss_mb``: the whole process, Python and torch included).

    Args:
        run: run directory or checkpoint.
        sources: image files to predict.
        size: side of the predicted images in px.
        tile: tile side (0: whole-image prediction, no tiling).
        tta: comma-separated TTA transforms ("" for none).
        repeats: predictions to time.
        precision: G's precision (``fp32``, ``bf16``; see :class:`medi2i.Predictor`).

    Raises:
        RuntimeError: the probe failed (its stderr is in the message).
    """
    cmd = [sys.executable, "-c", _PREDICT_PROBE, str(run), str(size), str(tile), tta]
    cmd += [str(repeats), precision, *map(str, sources)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"prediction probe ({size} px, tile {tile}) failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])
