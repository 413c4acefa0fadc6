"""The automatic diagnosis: each of the user's decision rules triggers on synthetic logs that
should trigger it and stays quiet on logs that should not; run-directory reading edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from medi2i.evaluation.diagnose import (
    D_GAP_THRESHOLDS,
    RULES,
    Diagnosis,
    diagnose_run,
    format_diagnosis,
)
from medi2i.evaluation.runs import load_run

# --------------------------------------------------------------------------------------------
# synthetic run directories
# --------------------------------------------------------------------------------------------


def _config(d: bool, r: bool = False, **loss) -> dict:
    return {
        "seed": 0,
        "data": {"root": "data"},
        "model": {"R": {"enabled": r}, "D": {"enabled": d}},
        "loss": {
            "gan_mode": "lsgan",
            "gan_weight": 1.0,
            "feat_match_weight": 10.0,
            "r1_weight": 0.0,
            **loss,
        },
        "optim": {"grad_clip": 5.0, "D": {"grad_clip": None}},
        "train": {"epochs": 5, "steps_per_epoch": 10},
        "eval": {"best_metric": "psnr_mask"},
    }


def _epoch(epoch: int, d: bool = True, **over) -> dict:
    """One epochs.jsonl row; defaults describe a D run that is healthy but converged."""
    row = {
        "epoch": epoch,
        "train_w_recon": 0.67,
        "train_w_gan": 0.26 if d else 0.0,
        "train_w_fm": 0.50 if d else 0.0,
        "train_w_smooth": 0.0,
        "val_psnr_mask": 30.0,
        "val_hfen_mask": 0.50,
        "val_gmsd_mask": 0.030,
        "val_sharpness_mask": 0.97,
        "epoch_seconds": 10.0,
        "lr_G": 1e-3,
    }
    if d:
        row.update(
            train_D_real=0.80,
            train_D_fake=0.20,
            train_D_acc=0.85,
            train_clip_rate_D=0.05,
            train_clip_cut_D=0.01,
            train_grad_norm_D=2.0,
        )
    row.update(over)
    total = row["train_w_recon"] + row["train_w_gan"] + row["train_w_fm"] + row["train_w_smooth"]
    for part in ("recon", "gan", "fm", "smooth"):
        row.setdefault(f"train_share_{part}", 100.0 * row[f"train_w_{part}"] / total)
    return row


def write_run(
    path: Path,
    *,
    d: bool = True,
    r: bool = False,
    epochs: list[dict] | None = None,
    loss: dict | None = None,
    test: dict | None = None,
    best_epoch: int | None = None,
    steps: list[dict] | None = None,
) -> Path:
    """A run directory with config.yaml, summary.json, metrics/epochs.jsonl [, test, steps]."""
    path.mkdir(parents=True)
    epochs = epochs if epochs is not None else [_epoch(e, d) for e in range(1, 6)]
    (path / "config.yaml").write_text(yaml.safe_dump(_config(d, r, **(loss or {}))))
    metrics = path / "metrics"
    metrics.mkdir()
    (metrics / "epochs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    if steps is not None:
        (metrics / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    if best_epoch is None:
        best_epoch = max(epochs, key=lambda e: e["val_psnr_mask"])["epoch"]
    summary = {
        "mode": "G" + ("+R" if r else "") + ("+D" if d else ""),
        "epochs": len(epochs),
        "steps": 10 * len(epochs),
        "best": {"metric": "psnr_mask", "value": 0.0, "epoch": best_epoch},
        "wall_seconds": 50.0,
    }
    (path / "summary.json").write_text(json.dumps(summary))
    if test is not None:
        (path / "test_metrics.json").write_text(json.dumps({"model": test, "identity": {}}))
    return path


def _test_metrics(psnr: float, hfen: float, gmsd: float, sharp: float = 0.97) -> dict:
    return {"psnr_mask": psnr, "hfen_mask": hfen, "gmsd_mask": gmsd, "sharpness_mask": sharp}


# --------------------------------------------------------------------------------------------
# rule 1: D ineffective
# --------------------------------------------------------------------------------------------


def test_d_ineffective_triggers_when_outputs_equal_and_says_it_proves_nothing(tmp_path):
    epochs = [
        _epoch(e, train_D_real=0.4970, train_D_fake=0.4968, train_D_acc=0.501) for e in range(1, 6)
    ]
    f = diagnose_run(write_run(tmp_path / "run", epochs=epochs)).finding("d_ineffective")
    assert f.triggered and f.applicable
    assert f.evidence["gap"] == pytest.approx(0.0002, rel=1e-3)
    assert f.evidence["gap_threshold"] == 0.05
    assert "does not prove D useless" in f.verdict
    assert "Ablations weigh more" in f.verdict
    assert "No ablation given" in f.verdict  # and says so when none exists


def test_d_ineffective_quiet_when_d_separates(tmp_path):
    f = diagnose_run(write_run(tmp_path / "run")).finding("d_ineffective")
    assert not f.triggered and f.applicable
    assert f.evidence["gap"] == pytest.approx(0.6)
    assert "D separates real from fake" in f.verdict


def test_d_ineffective_needs_accuracy_at_chance_too(tmp_path):
    # equal means but D classifies most patches right: it does separate them
    epochs = [_epoch(e, train_D_real=0.5, train_D_fake=0.49, train_D_acc=0.70) for e in range(1, 4)]
    f = diagnose_run(write_run(tmp_path / "run", epochs=epochs)).finding("d_ineffective")
    assert not f.triggered
    assert "off chance" in f.verdict


@pytest.mark.parametrize(("mode", "expected"), [("lsgan", False), ("hinge", True)])
def test_d_ineffective_threshold_follows_the_gan_mode(tmp_path, mode, expected):
    # a gap of 0.07 is 7% of LSGAN's 0/1 targets but only 3.5% of hinge's -1/+1 margins
    epochs = [_epoch(e, train_D_real=0.07, train_D_fake=0.0, train_D_acc=0.5) for e in range(1, 4)]
    run = write_run(tmp_path / "run", epochs=epochs, loss={"gan_mode": mode})
    f = diagnose_run(run).finding("d_ineffective")
    assert f.triggered is expected
    assert f.evidence["gap_threshold"] == D_GAP_THRESHOLDS[mode]


def test_d_ineffective_weighs_the_g_only_ablation(tmp_path):
    equal = [
        _epoch(e, train_D_real=0.497, train_D_fake=0.497, train_D_acc=0.5) for e in range(1, 6)
    ]
    run = write_run(tmp_path / "gd", epochs=equal, test=_test_metrics(31.6, 0.45, 0.027))
    base = write_run(tmp_path / "g", d=False, test=_test_metrics(30.0, 0.50, 0.030))
    f = diagnose_run(run, baseline=base).finding("d_ineffective")
    assert f.triggered
    ablation = f.evidence["ablation"]
    assert ablation["psnr_mask"]["delta"] == pytest.approx(1.6)
    assert ablation["source"] == "test split"
    assert ablation["added"] == "D adds measurable quality"
    assert "lung PSNR +1.60 dB (better)" in f.verdict
    assert "No ablation" not in f.verdict


def test_ablation_flags_a_baseline_that_differs_in_more_than_d(tmp_path):
    run = write_run(tmp_path / "grd", r=True, test=_test_metrics(30.0, 0.5, 0.03))
    base = write_run(tmp_path / "g", d=False, test=_test_metrics(30.1, 0.5, 0.03))
    f = diagnose_run(run, baseline=base).finding("d_ineffective")
    assert "not a clean ablation" in f.verdict and "model.R.enabled" in f.verdict
    assert f.evidence["ablation"]["added"] == "no clear gain from D"


def test_rules_about_d_are_not_applicable_to_a_g_only_run(tmp_path):
    d = diagnose_run(write_run(tmp_path / "g", d=False))
    for rule in ("d_ineffective", "blurry_loss_weights", "d_clipping"):
        assert not d.finding(rule).triggered
        assert not d.finding(rule).applicable


# --------------------------------------------------------------------------------------------
# rule 2: D on but still blurry -> loss weights
# --------------------------------------------------------------------------------------------


def test_blurry_triggers_on_low_sharpness_and_recommends_weights(tmp_path):
    # the user's own numbers: recon 0.67 (47%), GAN 0.26 (18%), FM 0.50 (35%)
    run = write_run(tmp_path / "run", test=_test_metrics(30.0, 0.5, 0.03, sharp=0.85))
    f = diagnose_run(run).finding("blurry_loss_weights")
    assert f.triggered
    w = f.evidence["weights"]
    assert w["share_gan_pct"] == pytest.approx(18.2, abs=0.1)
    # gan_weight for a 35% share with the raw parts fixed: 0.35*(0.67+0.5)/(0.65*0.26) = 2.42
    assert w["gan_weight_for_aim"] == pytest.approx(2.4)
    # FM 10 -> 2 gives 0.26 / (0.67 + 0.1 + 0.26) = 25%, and even FM 0 only 28%
    assert w["share_at_feat_match"]["2"] == pytest.approx(25.24, abs=0.05)
    assert w["share_at_feat_match"]["0"] == pytest.approx(27.96, abs=0.05)
    assert w["feat_match_weight_for_aim"] is None
    assert "feat_match_weight 10 -> 2" in f.verdict
    assert "gan_weight 1 -> 2.4" in f.verdict
    assert "sharpness ratio 0.850 < 0.9" in f.verdict


def test_blurry_quiet_when_sharp_and_no_baseline(tmp_path):
    run = write_run(tmp_path / "run", test=_test_metrics(30.0, 0.5, 0.03, sharp=0.98))
    f = diagnose_run(run).finding("blurry_loss_weights")
    assert not f.triggered and f.applicable
    assert "G-only baseline" in f.verdict  # asks for the stronger test


def test_blurry_against_baseline_hfen_gmsd(tmp_path):
    base = write_run(tmp_path / "g", d=False, test=_test_metrics(30.0, 0.50, 0.030))
    same = write_run(tmp_path / "same", test=_test_metrics(30.0, 0.499, 0.0300, sharp=0.97))
    better = write_run(tmp_path / "better", test=_test_metrics(30.0, 0.45, 0.027, sharp=0.97))
    f_same = diagnose_run(same, baseline=base).finding("blurry_loss_weights")
    f_better = diagnose_run(better, baseline=base).finding("blurry_loss_weights")
    assert f_same.triggered and f_same.evidence["no_sharper_than_baseline"] is True
    assert "no better than G-only" in f_same.verdict
    assert not f_better.triggered and f_better.evidence["no_sharper_than_baseline"] is False


def test_blurry_with_gan_share_already_high_points_elsewhere(tmp_path):
    epochs = [
        _epoch(
            e,
            train_w_recon=0.05,
            train_w_gan=0.25,
            train_w_fm=0.02,
            train_D_real=0.497,
            train_D_fake=0.497,
            train_D_acc=0.5,
        )
        for e in range(1, 6)
    ]
    run = write_run(tmp_path / "run", epochs=epochs, test=_test_metrics(30, 0.5, 0.03, 0.87))
    f = diagnose_run(run).finding("blurry_loss_weights")
    assert f.triggered
    assert "already above target" in f.verdict
    assert "not a large share of the *gradient*" in f.verdict  # D at chance
    assert "gan_weight_for_aim" not in f.evidence["weights"]


# --------------------------------------------------------------------------------------------
# rule 3: D's clipping
# --------------------------------------------------------------------------------------------


def test_d_clipping_triggers_with_cut_fraction_and_suggestions(tmp_path):
    epochs = [
        _epoch(e, train_clip_rate_D=0.85, train_clip_cut_D=0.68, train_grad_norm_D=30.0)
        for e in range(1, 6)
    ]
    f = diagnose_run(write_run(tmp_path / "run", epochs=epochs)).finding("d_clipping")
    assert f.triggered
    assert f.evidence["clip_cut_D_when_fired"] == pytest.approx(0.8)
    assert f.evidence["grad_clip_D"] == 5.0
    assert f.evidence["suggested_grad_clip_D"] == pytest.approx(45.0)  # 1.5x mean norm
    assert "85% of steps" in f.verdict and "80% of the gradient's norm" in f.verdict
    assert "loss.r1_weight" in f.verdict and "optim.D.grad_clip to ~45" in f.verdict


def test_d_clipping_suggestion_uses_step_percentile_when_logged(tmp_path):
    epochs = [_epoch(e, train_clip_rate_D=0.9, train_grad_norm_D=30.0) for e in range(1, 6)]
    steps = [{"step": s, "grad_norm_D": float(s % 10 + 20)} for s in range(1, 51)]
    run = write_run(tmp_path / "run", epochs=epochs, steps=steps, loss={"r1_weight": 0.5})
    f = diagnose_run(run).finding("d_clipping")
    assert f.triggered
    assert f.evidence["suggested_grad_clip_D"] == pytest.approx(28.0)  # p90 of 20..29 (2 sig.)
    assert "Raise the R1 penalty (loss.r1_weight 0.5 -> 2)" in f.verdict


def test_d_clipping_quiet_when_rare(tmp_path):
    f = diagnose_run(write_run(tmp_path / "run")).finding("d_clipping")
    assert not f.triggered and f.applicable
    assert f.evidence["clip_rate_D"] == pytest.approx(0.05)


# --------------------------------------------------------------------------------------------
# rule 4: still improving
# --------------------------------------------------------------------------------------------


def test_g_only_still_improving_recommends_exp4(tmp_path):
    epochs = [_epoch(e, d=False, val_psnr_mask=28.0 + 0.5 * e) for e in range(1, 6)]
    f = diagnose_run(write_run(tmp_path / "g", d=False, epochs=epochs)).finding("still_improving")
    assert f.triggered
    assert f.evidence["run"]["slope_db_per_epoch"] == pytest.approx(0.5)
    assert "exp4" in f.verdict and "100+ epochs" in f.verdict


def test_converged_run_is_not_still_improving(tmp_path):
    values = [29.0, 30.0, 30.02, 29.98, 30.01]
    epochs = [_epoch(e, d=False, val_psnr_mask=v) for e, v in enumerate(values, start=1)]
    f = diagnose_run(write_run(tmp_path / "g", d=False, epochs=epochs)).finding("still_improving")
    assert not f.triggered and f.applicable
    assert abs(f.evidence["run"]["slope_db_per_epoch"]) < 0.1
    assert f.evidence["run"]["best_epoch"] == 3


def test_best_epoch_last_counts_as_still_improving(tmp_path):
    values = [30.0, 30.01, 30.0, 30.02]  # flat slope, but the best is the last epoch
    epochs = [_epoch(e, d=False, val_psnr_mask=v) for e, v in enumerate(values, start=1)]
    f = diagnose_run(write_run(tmp_path / "g", d=False, epochs=epochs)).finding("still_improving")
    assert f.triggered
    assert "best epoch 4 = last 4" in f.verdict


def test_baseline_still_improving_makes_comparison_premature(tmp_path):
    flat = [_epoch(e, val_psnr_mask=v) for e, v in enumerate([29, 30, 30.01, 29.99, 30], 1)]
    rising = [_epoch(e, d=False, val_psnr_mask=27.0 + e) for e in range(1, 6)]
    run = write_run(tmp_path / "gd", epochs=flat)
    base = write_run(tmp_path / "g", d=False, epochs=rising)
    f = diagnose_run(run, baseline=base).finding("still_improving")
    assert f.triggered
    assert not f.evidence["run"]["improving"] and f.evidence["baseline"]["improving"]
    assert "comparison with it is premature" in f.verdict


# --------------------------------------------------------------------------------------------
# the whole diagnosis, formatting, reading
# --------------------------------------------------------------------------------------------


def test_format_and_serialise(tmp_path):
    epochs = [_epoch(e, train_clip_rate_D=0.9, train_grad_norm_D=30.0) for e in range(1, 6)]
    d = diagnose_run(write_run(tmp_path / "run", epochs=epochs), last_epochs=2)
    assert isinstance(d, Diagnosis)
    assert [f.rule for f in d.findings] == list(RULES)
    assert d.epochs_used == [4, 5]
    text = format_diagnosis(d)
    assert "[!] D's gradient clipping fires on most steps (d_clipping)" in text
    assert "Baseline: none (no ablation)" in text
    assert text.splitlines()[-1] == "Triggered: d_clipping"
    assert "clip_rate_D=0.9" in text
    json.dumps(d.to_dict())
    with pytest.raises(KeyError, match="rules"):
        d.finding("nope")
    with pytest.raises(ValueError, match="last_epochs"):
        diagnose_run(tmp_path / "run", last_epochs=0)


def test_short_run_uses_what_there_is(tmp_path):
    d = diagnose_run(write_run(tmp_path / "run", epochs=[_epoch(1)]), last_epochs=3)
    assert d.epochs_used == [1]
    assert any("Only 1 epoch" in n for n in d.notes)
    f = d.finding("still_improving")
    assert f.triggered and f.evidence["run"]["slope_db_per_epoch"] is None


def test_load_run_rejects_non_runs_and_tolerates_truncated_logs(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a run directory"):
        load_run(tmp_path / "empty")
    run = write_run(tmp_path / "run", epochs=[_epoch(1), _epoch(2)])
    with open(run / "metrics" / "epochs.jsonl", "a") as fh:
        fh.write('{"epoch": 3, "val_psnr')  # killed mid-write
    rec = load_run(run)
    assert [e["epoch"] for e in rec.epochs] == [1, 2]
    assert rec.problems and "line 3" in rec.problems[0]
    assert rec.label == "G+D fm=10.0 gan=1.0" and rec.has_D and not rec.has_R
    metrics, source = rec.final_metrics()
    assert source == "val, epoch 2" and metrics["psnr_mask"] == 30.0


def test_load_run_without_config_or_summary(tmp_path):
    path = tmp_path / "partial"
    (path / "metrics").mkdir(parents=True)
    (path / "metrics" / "epochs.jsonl").write_text(
        json.dumps({"epoch": 1, "val_psnr": None, "val_psnr_mask": 20.0}) + "\n"
    )
    rec = load_run(path)
    assert rec.mode == "G" and rec.config == {} and rec.summary == {}
    x, y = rec.series("val_psnr")
    assert x.tolist() == [1.0] and y[0] != y[0]  # null -> NaN
    assert rec.identity_metrics() is None and rec.wall_seconds is None
