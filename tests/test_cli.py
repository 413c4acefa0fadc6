"""The command line as a user runs it: real subprocesses, real files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from medi2i.cli import main
from medi2i.data.io import write_png


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "medi2i", *args], capture_output=True, text=True, cwd=cwd
    )


def test_config_show_resolves_overrides(capsys):
    assert main(["config", "show", "loss.feat_match_weight=2", "optim.skip_warmup=true"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["loss"]["feat_match_weight"] == 2.0
    assert shown["optim"]["skip_warmup"] is True
    assert shown["loss"]["lung_weight"] == 10.0


def test_config_error_is_one_clear_message_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss:\n  feat_match_wieght: 2\n")
    result = run_cli("config", "show", "--config", str(bad))
    assert result.returncode == 2
    assert "bad.yaml:2" in result.stderr and "did you mean 'feat_match_weight'" in result.stderr
    assert "Traceback" not in result.stderr


def make_pairs(root, split, n, size=(24, 28)):
    rng = np.random.default_rng(len(split) + n)
    for i in range(n):
        img = rng.integers(1000, 60000, size=size, dtype=np.uint16)
        write_png(root / split / "input" / f"p{i}.png", img)
        write_png(root / split / "target" / f"p{i}.png", (img * 0.9).astype(np.uint16))
        write_png(root / split / "mask" / f"p{i}.png", np.full(size, 255, np.uint8))


def test_data_check_reports_baseline(tmp_path):
    for split, n in (("train", 2), ("val", 1), ("test", 2)):
        make_pairs(tmp_path / "ds", split, n)
    out = tmp_path / "check.json"
    assert main(["data", "check", str(tmp_path / "ds"), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["test"]["pairs"] == 2 and report["test"]["image_shape"] == [24, 28]
    base = report["test"]["identity_baseline"]
    assert base["reference"] == "target"
    assert np.isfinite(base["psnr"]) and 0 < base["ssim"] < 1


@pytest.mark.slow
def test_data_check_lists_every_problem_exit_2(tmp_path):
    make_pairs(tmp_path / "ds", "train", 3)
    (tmp_path / "ds" / "train" / "target" / "p0.png").unlink()
    (tmp_path / "ds" / "train" / "mask" / "p2.png").unlink()
    result = run_cli("data", "check", str(tmp_path / "ds"), "--split", "train")
    assert result.returncode == 2
    assert "p0: has input, mask but no target" in result.stderr
    assert "p2: has input, target but no mask" in result.stderr


def test_verbose_flag_before_and_after_subcommand(tmp_path):
    result = run_cli("-v", "config", "show", "loss.gan_weight=2")
    assert result.returncode == 0
    assert "config overrides: loss.gan_weight=2" in result.stderr
    quiet = run_cli("config", "show", "loss.gan_weight=2")
    assert quiet.stderr == ""


@pytest.mark.slow
def test_data_drr_small_end_to_end(tmp_path):
    out = tmp_path / "bench"
    result = run_cli(
        "data",
        "drr",
        "--out",
        str(out),
        "--size",
        "48",
        "--count",
        "4",
        "--seed",
        "3",
        "--misalign-px",
        "2",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert (out / "preview.png").is_file() and (out / "manifest.csv").is_file()
    meta = json.loads((out / "benchmark.json").read_text())
    assert meta["settings"]["size"] == 48
    check = run_cli("data", "check", str(out), "data.normalization.mode=dtype")
    assert check.returncode == 0, check.stderr
    assert "identity baseline vs aligned_target" in check.stdout


def test_model_summary_counts(capsys):
    assert main(["model-summary", "model.G.preset=large", "--size", "64"]) == 0
    out = capsys.readouterr().out
    assert "60,802,177 parameters" in out
    assert "(1, 1, 64, 64)" in out
