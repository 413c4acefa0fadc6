"""benchmarks/ablation_variants.py: options paired with the base arm by seed, honest verdicts."""

from __future__ import annotations

import json

import pytest
from scipy import stats

from conftest import load_benchmark


def _write(folder, psnr: list[float], hfen: list[float], user: list[str]) -> None:
    runs = [
        {
            "arm": "G+R+D",
            "seed": seed,
            "group": "ablation",
            "status": "ok",
            "metrics": {"psnr_mask": p, "hfen_mask": h, "gmsd_mask": 0.02, "bsr_lit": 0.98},
            "train": {"seconds_per_step": 2.0 + seed},
        }
        for seed, (p, h) in enumerate(zip(psnr, hfen))
    ]
    folder.mkdir()
    report = {"runs": runs, "overrides": {"user": user, "common": ["x=1"]}}
    (folder / "ablation.json").write_text(json.dumps(report))


def test_options_are_paired_by_seed_and_judged_by_their_intervals(tmp_path):
    bench = load_benchmark("ablation_variants")
    _write(tmp_path / "base", [37.0, 38.0, 39.0], [0.50, 0.55, 0.60], [])
    # +0.5, +0.6, +0.4 dB: a seed-to-seed spread of 1 dB in the means, yet a clear paired gain
    _write(tmp_path / "up", [37.5, 38.6, 39.4], [0.50, 0.55, 0.60], ["loss.a=1"])
    _write(tmp_path / "noise", [37.5, 37.6, 39.2], [0.52, 0.53, 0.61], ["loss.b=2"])
    out = tmp_path / "out"
    report = bench.main(
        [str(tmp_path / "base"), f"up={tmp_path / 'up'}", f"noise={tmp_path / 'noise'}",
         "--base-name", "demo", "--out", str(out)]
    )  # fmt: skip
    up = report["options"]["up"]["diff"]["psnr_mask"]
    half = stats.t.ppf(0.975, 2) * 0.1 / 3**0.5  # std of (0.5, 0.6, 0.4) is 0.1
    assert up["mean"] == pytest.approx(0.5) and up["ci_low"] == pytest.approx(0.5 - half)
    assert report["options"]["up"]["verdict"] == "better"
    assert report["options"]["noise"]["verdict"] == "no difference"
    assert report["options"]["demo"]["diff"]["psnr_mask"]["mean"] == 0.0
    assert report["options"]["up"]["seconds_per_step"] == pytest.approx(3.0)
    assert report["overrides"] == {"demo": [], "up": ["loss.a=1"], "noise": ["loss.b=2"]}
    text = (out / "variants.md").read_text()
    assert "| up | 3 | 38.5 | +0.50 [" in text and "- up: loss.a=1" in text
    assert json.loads((out / "variants.json").read_text())["options"].keys() == {
        "demo",
        "up",
        "noise",
    }
    worse_hfen = {"psnr_mask": {"mean": 0.1, "ci_low": -0.1, "ci_high": 0.3}}
    worse_hfen["hfen_mask"] = {"mean": 0.02, "ci_low": 0.01, "ci_high": 0.03}
    assert bench.verdict(worse_hfen) == "worse"
    worse_hfen["psnr_mask"] = {"mean": 0.5, "ci_low": 0.2, "ci_high": 0.8}
    assert bench.verdict(worse_hfen) == "mixed"
    # the relative interval shown in the table decides, not the absolute one
    shown = {"mean": 4.8, "ci_low": -0.1, "ci_high": 9.7}
    worse_hfen["hfen_mask"]["relative_pct"] = shown
    worse_hfen["psnr_mask"] = {"mean": -0.4, "ci_low": -1.1, "ci_high": 0.4}
    assert bench.verdict(worse_hfen) == "no difference"
    with pytest.raises(SystemExit, match="has no successful G\\+R run"):
        bench.main([str(tmp_path / "base"), f"x={tmp_path / 'up'}", "--arm", "G+R"])
