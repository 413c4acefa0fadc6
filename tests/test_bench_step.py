"""benchmarks/bench_step.py on the tiny shared dataset: every figure is there and consistent."""

from __future__ import annotations

import json

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_step")


def test_step_benchmark_reports_every_mode(bench, dataset_root, tmp_path):
    out = tmp_path / "step.json"
    report = bench.main(
        [
            "--quick",
            "--data",
            str(dataset_root),
            "--steps",
            "1",
            "--warmup",
            "0",
            "--modes",
            "G",
            "G+D",
            "--out",
            str(out),
        ]
    )
    assert json.loads(out.read_text())["modes"].keys() == {"G", "G+D"}
    assert report["matmul_gflops"] > 0
    g, gd = report["modes"]["G"], report["modes"]["G+D"]
    assert g["step_over_G"] == pytest.approx(1.0)
    # D adds convolutions: more FLOPs per image than G alone
    assert gd["gflop_per_image"] > g["gflop_per_image"] > 0
    assert 0 <= g["outside_networks_share"] < 1
    assert gd["ratio_to_pix2pix_reference"] > 0
    assert report["data"]["images_per_second"] > 0
    assert "| G+D |" in bench.format_table(report)
