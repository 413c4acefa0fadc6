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
