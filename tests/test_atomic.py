"""Atomic writes: a failed write leaves the previous file intact and no debris."""

from __future__ import annotations

import pytest

from medi2i.utils.atomic import atomic_path, atomic_write_text


def test_success_replaces_and_leaves_no_temp(tmp_path):
    dest = tmp_path / "sub" / "out.json"
    atomic_write_text(dest, "first")
    atomic_write_text(dest, "second")
    assert dest.read_text() == "second"
    assert [p.name for p in dest.parent.iterdir()] == ["out.json"]


def test_failure_keeps_previous_content(tmp_path):
    dest = tmp_path / "ckpt.pt"
    dest.write_text("good")
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("crash during save")
    assert dest.read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_temp_name_keeps_suffixes(tmp_path):
    with atomic_path(tmp_path / "vol.nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    assert (tmp_path / "vol.nii.gz").read_bytes() == b"x"


def test_result_has_normal_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "report.json", "{}")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_json_safe_makes_strict_json_of_nested_values():
    import json
    from pathlib import Path

    import numpy as np
    import torch

    from medi2i.utils.jsonsafe import json_safe

    value = {
        "nan": float("nan"),
        "inf": [1.0, float("inf"), -float("inf")],
        "tensor": torch.tensor(2.5),
        "int_tensor": torch.tensor(3),
        "numpy": (np.float32(0.5), np.int64(7), np.bool_(True)),
        "path": Path("a/b.png"),
        "plain": {"s": "x", "b": False, "n": None, "i": 4},
    }
    safe = json_safe(value)
    assert safe == {
        "nan": None,
        "inf": [1.0, None, None],
        "tensor": 2.5,
        "int_tensor": 3,
        "numpy": [0.5, 7, True],
        "path": "a/b.png",
        "plain": {"s": "x", "b": False, "n": None, "i": 4},
    }
    json.dumps(safe, allow_nan=False)  # strict JSON
