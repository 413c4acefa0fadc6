"""Evaluation of a split: per-image metrics for model and identity, summary with bootstrap CIs,
worst-case grid, table."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medi2i.evaluation.evaluate import bootstrap_ci, evaluate_split, format_table
from medi2i.inference import Predictor, load_generator
from medi2i.inference.scoring import METRIC_COLUMNS
from tinydata import SIZE, train_tiny_g_only, write_pairs

N_TEST = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Pairs whose "measured" target is shifted by a pixel; ``eval`` also has the aligned truth."""
    rng = np.random.default_rng(0)
    train_root = write_pairs(
        tmp_path_factory.mktemp("train_data"),
        {"train": 4, "val": 2, "test": N_TEST},
        rng,
        target_shift=1,
    )
    eval_root = write_pairs(
        tmp_path_factory.mktemp("eval_data"), {"test": N_TEST}, rng, aligned=True, target_shift=1
    )
    return {"train": train_root, "eval": eval_root}


@pytest.fixture(scope="module")
def tiny_run(data, tmp_path_factory) -> Path:
    return train_tiny_g_only(data["train"], tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def evaluated(tiny_run, data, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("eval")
    predictor = Predictor.from_run(tiny_run, tta=["identity", "vflip"])
    summary = evaluate_split(
        predictor, out_dir=out, data_root=data["eval"], bootstrap=200, worst_k=3, progress=False
    )
    return summary, out


def test_evaluate_writes_reports_with_identity_rows(evaluated):
    summary, out = evaluated
    with (out / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * N_TEST
    assert [r["method"] for r in rows[:2]] == ["model", "identity"]
    assert {r["name"] for r in rows} == {f"{i:03d}" for i in range(N_TEST)}
    assert list(rows[0])[2:] == list(METRIC_COLUMNS)
    identity = [r for r in rows if r["method"] == "identity"]
    assert all(float(r["bsr"]) == 0.0 for r in identity)  # the input removes no bone

    saved = json.loads((out / "summary.json").read_text())
    assert saved["reference"] == summary["reference"] == "aligned_target"
    assert saved["images"] == N_TEST and saved["split"] == "test"
    assert saved["tta"] == ["identity", "vflip"] and saved["weights"] == "ema"
    assert saved["checkpoint"].endswith("best.pt")
    assert saved["bootstrap"]["resamples"] == 200
    for method in ("model", "identity"):
        for metric, stats in saved["methods"][method].items():
            if stats["mean"] is None:
                continue
            assert stats["ci_low"] <= stats["mean"] <= stats["ci_high"], (method, metric)
            assert stats["n"] + stats["n_not_finite"] == N_TEST
    psnr = saved["methods"]["identity"]["psnr"]
    assert psnr["mean"] == pytest.approx(np.mean([float(r["psnr"]) for r in identity]), rel=1e-5)
    delta = saved["model_minus_identity"]["psnr"]
    assert delta["mean"] == pytest.approx(
        saved["methods"]["model"]["psnr"]["mean"] - psnr["mean"], rel=1e-5, abs=1e-4
    )

    # worst cases: the 3 lowest model lung PSNRs, sorted, one grid row each, 4 columns
    worst = saved["worst_cases"]
    model_psnr = sorted(float(r["psnr_mask"]) for r in rows if r["method"] == "model")
    assert [w["psnr_mask"] for w in worst] == pytest.approx(model_psnr[:3], rel=1e-4)
    grid = np.asarray(Image.open(out / "worst_cases.png"))
    assert grid.ndim == 3 and grid.shape[2] == 3
    assert grid.shape[1] > 4 * SIZE and grid.shape[0] > 3 * SIZE


def test_format_table(evaluated):
    summary, _ = evaluated
    table = format_table(summary)
    lines = table.splitlines()
    assert "aligned_target" in lines[0] and "identity, vflip" in lines[0]
    assert lines[1].split()[:5] == ["metric", "better", "model", "identity", "model"]
    assert any(line.startswith("psnr_mask") for line in lines)
    assert any(line.startswith("blur_effect") for line in lines)
    assert any(line.split()[:2] == ["bsr_lit", "higher"] for line in lines)


def test_evaluate_reference_is_target_without_aligned(tiny_run, tmp_path):
    loaded = load_generator(tiny_run)  # a LoadedGenerator works too (plain prediction)
    summary = evaluate_split(loaded, out_dir=tmp_path, bootstrap=50, worst_k=0, progress=False)
    assert summary["reference"] == "target" and summary["tta"] == ["identity"]
    assert not (tmp_path / "worst_cases.png").exists()
    assert (tmp_path / "metrics.csv").is_file() and (tmp_path / "summary.json").is_file()


def test_evaluate_refuses_a_model_with_non_finite_output(tiny_run, data, tmp_path, monkeypatch):
    predictor = Predictor.from_run(tiny_run)
    real = predictor.generator.forward
    monkeypatch.setattr(predictor.generator, "forward", lambda x: real(x) * float("nan"))
    with pytest.raises(ValueError, match=rf"NaN or infinite values on {N_TEST} of {N_TEST} test"):
        evaluate_split(predictor, out_dir=tmp_path / "e", data_root=data["eval"], progress=False)
    assert not (tmp_path / "e" / "summary.json").exists()


def test_bootstrap_ci():
    rng = np.random.default_rng(5)
    values = rng.normal(10.0, 2.0, size=50)
    low, high = bootstrap_ci(values, resamples=500, rng=np.random.default_rng(1))
    assert low <= values.mean() <= high
    assert (low, high) == bootstrap_ci(values, resamples=500, rng=np.random.default_rng(1))
    # about +-1.96 standard errors
    se = values.std(ddof=1) / math.sqrt(values.size)
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.25)
    assert bootstrap_ci(np.full(7, 0.1)) == (pytest.approx(0.1), pytest.approx(0.1))
    assert bootstrap_ci([3.0]) == (3.0, 3.0)
    with pytest.raises(ValueError):
        bootstrap_ci([])
