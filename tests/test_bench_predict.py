"""benchmarks/bench_predict.py: each setting timed in a fresh process, rows and goals reported."""

from __future__ import annotations

import json

import pytest

from conftest import load_benchmark
from tinydata import train_tiny_g_only

pytestmark = pytest.mark.slow  # a tiny run and six fresh interpreter processes (about 30 s)


def test_bench_predict_times_each_setting_in_a_fresh_process(dataset_root, tmp_path):
    bench = load_benchmark("bench_predict")
    run = train_tiny_g_only(dataset_root, tmp_path / "run")
    out = tmp_path / "predict.json"
    report = bench.main(
        ["--run", str(run), "--data", str(dataset_root), "--split", "val", "--sizes", "32",
         "64", "--repeats", "3", "--tta", "identity,vflip", "--no-cli", "--out", str(out)]
    )  # fmt: skip
    assert json.loads(out.read_text())["settings"] == report["settings"]
    rows = report["settings"]
    assert [(r["size"], r["tta"], r["precision"]) for r in rows] == [
        (32, "none", "fp32"),
        (32, "none", "bf16"),
        (32, "identity,vflip", "fp32"),
        (64, "none", "fp32"),
        (64, "none", "bf16"),
        (64, "identity,vflip", "fp32"),
    ]
    for row in rows:
        assert row["calls"] == 3 and row["finite"]
        assert row["import_s"] > 0 and row["load_s"] > 0 and row["peak_rss_mb"] > 50
        low, high = row["per_image_spread_s"]
        assert low <= row["per_image_s"] <= high
        assert "goal_s" not in row  # goals are stated for 256 and 2048 px only
    assert "cli_one_image_s" not in report
    # a goal is judged on the median of the calls after the first, without TTA only
    probe = {"import_s": 1, "load_s": 1, "seconds": [9.0, 0.1, 0.2, 0.12], "peak_rss_mb": 1}
    probe.update(finite=True, threads=2)
    row = bench.summarise(probe, size=256, tta="")
    assert row["per_image_s"] == 0.12 and row["goal_met"] and row["first_call_s"] == 9.0
    assert "goal_s" not in bench.summarise(probe, size=256, tta="identity,shift")
