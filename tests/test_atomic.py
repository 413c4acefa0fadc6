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
