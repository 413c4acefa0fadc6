"""Fixtures shared by the test files, and the test suite's rules.

* ``slow``-marked tests (end-to-end runs of several seconds each) are deselected by a plain
  ``pytest`` (``addopts`` in pyproject.toml), so the development loop stays fast;
  ``bash scripts/test.sh`` - the README's test command, which CI runs - selects everything.
* :func:`dataset_root` is one small synthetic paired dataset (8/3/3 train/val/test pairs of
  32x32 chest-like images with lung masks) shared by every test file that trains tiny runs.
* :func:`load_benchmark` imports a script of ``benchmarks/`` (not a package) as a module.
* :func:`chromium` finds a headless Chromium the way the README installs it (the Debian package
  ``chromium``, or any ``chromium``/``chromium-browser``/``google-chrome`` on ``PATH``;
  ``MEDI2I_CHROMIUM`` names another executable) and skips the test, saying how to install one,
  when there is none.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tinydata import write_pairs

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> Path | None:
    """The headless browser the rendering tests use, or None."""
    named = os.environ.get("MEDI2I_CHROMIUM")
    if named:
        return Path(named) if Path(named).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Path of a Chromium executable; the test is skipped when none is installed."""
    found = find_chromium()
    if found is None:
        pytest.skip(
            "no headless Chromium: install it (Debian/Ubuntu: apt-get install chromium) or set "
            "MEDI2I_CHROMIUM to the executable"
        )
    return found


@pytest.fixture(scope="session")
def dataset_root(tmp_path_factory) -> Path:
    """A tiny paired dataset in the folder layout (read-only for the tests that use it)."""
    root = tmp_path_factory.mktemp("pairs")
    return write_pairs(root, {"train": 8, "val": 3, "test": 3}, np.random.default_rng(0))


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module named ``name``.

    The scripts import their sibling as ``from _common import ...``, so ``benchmarks/`` is on
    ``sys.path`` while the module runs; it is registered in ``sys.modules`` because dataclasses
    look their module up while being built.
    """
    sys.path.insert(0, str(BENCH_DIR))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH_DIR))
    return module
