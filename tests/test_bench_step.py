"""benchmarks/bench_step.py on the tiny shared dataset: every figure is there and consistent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

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


def test_a_variant_is_timed_in_the_same_rounds_with_its_own_overrides(
    bench, dataset_root, tmp_path
):
    args = ["--quick", "--data", str(dataset_root), "--steps", "2", "--warmup", "0"]
    args += ["--modes", "G", "--variant", "data.batch_size=1", "--out", str(tmp_path / "s.json")]
    report = bench.main(args)
    g = report["modes"]["G"]
    # the variant's trainer got its overrides (batch 1 against the quick base's 2)
    assert g["images_per_step"] == 2 and g["variant_images_per_step"] == 1
    assert g["variant_step_seconds_median"] > 0 and g["variant_over_step"] > 0
    assert report["variant"] == ["data.batch_size=1"]
    assert "G with data.batch_size=1:" in bench.format_table(report)


def test_schedule_cost_weights_each_phase_by_its_epochs(bench):
    from medi2i.config import load_config
    from medi2i.training.phases import Phase, plan_phases

    modes = {"G": {"step_over_G": 1.0}, "G+R": {"step_over_G": 1.1}}
    modes["G+R+D"] = {"step_over_G": 1.7}
    # the demo's phases: G+R for 6 of 8 epochs, then D joins
    demo = plan_phases(load_config(Path(__file__).parents[1] / "configs" / "demo.yaml"))
    cost = bench.schedule_cost(modes, demo)
    assert cost["step_over_G"] == pytest.approx(0.75 * 1.1 + 0.25 * 1.7)
    assert [p["mode"] for p in cost["phases"]] == ["G+R", "G+R+D"]
    assert cost["phases"][1]["epochs"] == [7, 8]
    # the networks' listed order does not matter; one phase is that mode's own ratio
    assert bench.schedule_cost(modes, (Phase(1, 0, 5, ("D", "G", "R")),))["step_over_G"] == 1.7
    # a phase whose mode was not timed gives no figure rather than a wrong one
    assert bench.schedule_cost({"G": {"step_over_G": 1.0}}, demo) is None


def test_interleaved_timing_rotates_the_order_every_round(bench):
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = bench.interleaved_seconds(fns, warmup=1, rounds=4, device=torch.device("cpu"))
    assert {name: len(t) for name, t in times.items()} == {"a": 4, "b": 4, "c": 4}
    warm, timed = calls[:3], calls[3:]
    assert warm == ["a", "b", "c"]
    # round r starts at the r-th callable: none is always first or after the same neighbour
    assert [timed[3 * r] for r in range(4)] == ["a", "b", "c", "a"]
    assert timed[3:6] == ["b", "c", "a"]


def test_ratios_are_taken_round_by_round(bench):
    # the machine halves its speed after two rounds: a is always 2x b within a round
    a, b = [2.0, 2.0, 4.0, 4.0, 4.0], [1.0, 1.0, 2.0, 2.0, 2.0]
    assert bench.median_ratio(a, b) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        bench.median_ratio([1.0], [1.0, 2.0])
