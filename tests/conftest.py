"""Fixtures shared by the test files, and the test suite's rules.

* ``slow``-marked tests (end-to-end runs of several seconds each) are deselected by a plain
  ``pytest`` (``addopts`` in pyproject.toml), so the development loop stays fast;
  ``bash scripts/test.sh`` - the README's test command, which CI runs - selects everything.
* :func:`dataset_root` is one small synthetic paired dataset (8/3/3 train/val/test pairs of
  32x32 chest-like images with lung masks) shared by every test file that trains tiny runs.
* :func:`chromium` finds a headless Chromium the way the README installs it (the Debian package
  ``chromium``, or any ``chromium``/``chromium-browser``/``google-chrome`` on ``PATH``;
  ``MEDI2I_CHROMIUM`` names another executable) and skips the test, saying how to install one,
  when there is none.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tinydata import write_pairs

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
