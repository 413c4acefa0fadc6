"""Helpers shared by the benchmark scripts: machine description, device sync, JSON report.

The scripts run as ``python benchmarks/bench_x.py``, which puts this folder first on
``sys.path``, so they import it as ``from _common import ...``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
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
