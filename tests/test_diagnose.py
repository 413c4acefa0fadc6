"""The automatic diagnosis: each rule triggers on synthetic run directories that should trigger
it and stays quiet on those that should not; verdicts rest on validation (never test), on
confidence intervals and on gradient shares; run-directory reading edge cases; the CLI. The
rules' decisions (status, case, evidence) are also checked directly, without their wording."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

import medi2i.evaluation.diagnose.comparison as comparison_mod
from medi2i.cli import main
from medi2i.evaluation.diagnose import (
    D_GAP_THRESHOLDS,
    NOT_APPLICABLE,
    NOT_EVALUATED,
    NOT_TRIGGERED,
    RULES,
    TRIGGERED,
    Decision,
    Diagnosis,
    MetricComparison,
    PerImageMetrics,
    ablation_plans,
    ci_verdict,
    diagnose_run,
    evaluate_val_per_image,
    format_diagnosis,
    welch_interval,
)
from medi2i.evaluation.diagnose.ablation import _rule_ablation
from medi2i.evaluation.diagnose.progress import _rule_still_improving
from medi2i.evaluation.diagnose.rules import (
    _rule_conditional_d,
    _rule_d_clipping,
    _rule_d_ineffective,
    _rule_diverged,
    _rule_misaligned,
    _rule_unstable,
)
from medi2i.evaluation.diagnose.weights import _rule_blurry
from medi2i.evaluation.diagnose.wording import _TEXTS, word
from medi2i.evaluation.runs import MissingScalarError, load_run

# --------------------------------------------------------------------------------------------
# synthetic run directories
# --------------------------------------------------------------------------------------------


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


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
    row.setdefault("train_loss_G", total)
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
    config: dict | None = None,
    summary: dict | None = None,
    seed: int = 0,
) -> Path:
    """A run directory with config.yaml, summary.json, metrics/epochs.jsonl [, test, steps]."""
    path.mkdir(parents=True)
    epochs = epochs if epochs is not None else [_epoch(e, d) for e in range(1, 6)]
    cfg = _merge(_config(d, r, **(loss or {})), config or {})
    cfg["seed"] = seed
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    metrics = path / "metrics"
    metrics.mkdir()
    (metrics / "epochs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    if steps is not None:
        (metrics / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    if best_epoch is None:
        best_epoch = max(epochs, key=lambda e: e.get("val_psnr_mask", 0))["epoch"]
    doc = {
        "mode": "G" + ("+R" if r else "") + ("+D" if d else ""),
        "epochs": len(epochs),
        "steps": 10 * len(epochs),
        "best": {"metric": "psnr_mask", "value": 0.0, "epoch": best_epoch},
        "wall_seconds": 50.0,
        **(summary or {}),
    }
    (path / "summary.json").write_text(json.dumps(doc))
    if test is not None:
        (path / "test_metrics.json").write_text(json.dumps({"model": test, "identity": {}}))
    return path


def _test_metrics(psnr: float, hfen: float, gmsd: float, sharp: float = 0.97) -> dict:
    return {"psnr_mask": psnr, "hfen_mask": hfen, "gmsd_mask": gmsd, "sharpness_mask": sharp}


def _per_image(run: Path, psnr, hfen, gmsd) -> PerImageMetrics:
    n = len(psnr)
    return PerImageMetrics(
        run=str(run),
        checkpoint=str(run / "checkpoints" / "best.pt"),
        epoch=5,
        reference="aligned_target",
        units="normalised [0, 1], data_range 1",
        names=[f"{i:03d}.png" for i in range(n)],
        values={
            "psnr_mask": np.asarray(psnr, float),
            "hfen_mask": np.asarray(hfen, float),
            "gmsd_mask": np.asarray(gmsd, float),
        },
    )


@pytest.fixture
def fake_eval(monkeypatch):
    """Replace the per-image validation evaluation by fixed values per run directory name."""
    table: dict[str, PerImageMetrics] = {}
    calls: list[str] = []

    def fake(run_dir, **kwargs):
        name = Path(run_dir).name
        calls.append(name)
        if name not in table:
            raise FileNotFoundError(f"{run_dir}: no checkpoint found")
        return table[name]

    # patched where the comparison calls it
    monkeypatch.setattr(comparison_mod, "evaluate_val_per_image", fake)
    return table, calls


# --------------------------------------------------------------------------------------------
# reading: validation for decisions, test for reports
# --------------------------------------------------------------------------------------------


def test_decision_metrics_are_validation_of_the_best_epoch_never_test(tmp_path):
    epochs = [_epoch(e, val_psnr_mask=v) for e, v in enumerate([29.0, 31.0, 30.0], start=1)]
    rec = load_run(write_run(tmp_path / "run", epochs=epochs, test=_test_metrics(35, 0.1, 0.01)))
    metrics, source = rec.decision_metrics()
    assert source == "val, best epoch 2" and metrics["psnr_mask"] == 31.0
    report, report_source = rec.final_metrics()
    assert report_source == "test" and report["psnr_mask"] == 35  # reports may show test
    # no best epoch recorded: the last validated epoch
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"mode": "G+D"}))
    metrics, source = load_run(tmp_path / "run").decision_metrics()
    assert source == "val, last epoch 3" and metrics["psnr_mask"] == 30.0


def test_blurry_is_judged_by_validation_even_when_test_says_sharp(tmp_path):
    epochs = [_epoch(e, val_sharpness_mask=0.85) for e in range(1, 6)]
    run = write_run(tmp_path / "run", epochs=epochs, test=_test_metrics(30, 0.5, 0.03, sharp=0.99))
    d = diagnose_run(run)
    f = d.finding("blurry_loss_weights")
    assert f.triggered and f.evidence["source"].startswith("val, best epoch")
    assert f.evidence["sharpness_mask"] == pytest.approx(0.85)
    assert "validation lung sharpness ratio 0.850 < 0.9" in f.verdict
    assert d.test_report["sharpness_mask"] == 0.99  # kept for reference only
    text = format_diagnosis(d)
    assert "Decisions use validation metrics (val, best epoch" in text
    assert "Test metrics, for reference only" in text


def test_ablation_uses_validation_when_test_disagrees(tmp_path, fake_eval):
    # test says D gains 1.6 dB; the validation images say nothing changed
    table, _ = fake_eval
    psnr = [30.0, 31.0, 29.5, 30.5, 30.2, 29.8]
    run = write_run(tmp_path / "gd", test=_test_metrics(31.6, 0.45, 0.027))
    base = write_run(tmp_path / "g", d=False, test=_test_metrics(30.0, 0.50, 0.030))
    table["gd"] = _per_image(run, psnr, [0.5] * 6, [0.03] * 6)
    table["g"] = _per_image(base, psnr, [0.5] * 6, [0.03] * 6)
    f = diagnose_run(run, baseline=base).finding("ablation")
    assert f.evidence["metrics"]["psnr_mask"]["delta"] == pytest.approx(0.0)
    assert f.evidence["metrics"]["psnr_mask"]["verdict"] == "within noise"
    assert "validation split" in f.evidence["source"]
    assert "+1.6" not in f.verdict


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------


def test_ci_verdict_and_welch_interval_against_scipy():
    assert ci_verdict(0.1, 0.5, True) == "better" and ci_verdict(0.1, 0.5, False) == "worse"
    assert ci_verdict(-0.5, -0.1, True) == "worse" and ci_verdict(-0.5, -0.1, False) == "better"
    assert ci_verdict(-0.1, 0.1, True) == "within noise" and ci_verdict(None, None, True) == "no CI"
    a, b = [30.9, 31.0, 31.2], [30.0, 30.1, 29.8, 30.2]
    delta, low, high, method = welch_interval(a, b)
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    assert delta == pytest.approx(np.mean(a) - np.mean(b))
    assert (low, high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert "Welch" in method
    # one run against several: the several's spread stands for both
    delta, low, high, method = welch_interval([31.0], [30.0, 30.2, 29.8])
    half = stats.t.ppf(0.975, 2) * 0.2 * np.sqrt(1 + 1 / 3)
    assert (low, high) == pytest.approx((1.0 - half, 1.0 + half))
    assert welch_interval([31.0], [30.0])[1:3] == (None, None)
    with pytest.raises(ValueError, match="at least one"):
        welch_interval([], [1.0])


# --------------------------------------------------------------------------------------------
# ablation: intervals, missing ablations
# --------------------------------------------------------------------------------------------


def test_paired_ci_within_noise_when_differences_straddle_zero(tmp_path, fake_eval):
    table, _ = fake_eval
    base_psnr = np.array([30.0, 31.0, 29.5, 30.5, 30.2, 29.8, 30.9, 30.1])
    # a mean gain of +0.5 dB - more than a fixed 0.2 dB margin would call a gain - but images
    # disagree in sign, so the interval straddles zero
    diffs = np.array([2.0, -1.0, 1.5, -0.8, 1.8, -1.2, 1.0, 0.7])
    run = write_run(tmp_path / "gd")
    base = write_run(tmp_path / "g", d=False)
    table["gd"] = _per_image(run, base_psnr + diffs, [0.5] * 8, [0.03] * 8)
    table["g"] = _per_image(base, base_psnr, [0.5] * 8, [0.03] * 8)
    f = diagnose_run(run, baseline=base).finding("ablation")
    psnr = f.evidence["metrics"]["psnr_mask"]
    assert psnr["delta"] == pytest.approx(diffs.mean())
    assert psnr["ci_low"] < 0 < psnr["ci_high"]
    assert psnr["verdict"] == "within noise" and psnr["n"] == 8
    assert "paired bootstrap over 8 validation images" in psnr["method"]
    assert f.evidence["outcome"] == "no measurable difference from D (within noise)"
    assert f.triggered  # D adds nothing measurable: worth acting on
    assert "lung PSNR +0.50 dB [" in f.verdict and "(within noise)" in f.verdict


def test_paired_ci_better_when_every_image_gains(tmp_path, fake_eval):
    table, _ = fake_eval
    base_psnr = np.array([30.0, 31.0, 29.5, 30.5, 30.2, 29.8])
    gain = np.array([1.5, 1.7, 1.4, 1.8, 1.6, 1.6])
    run = write_run(tmp_path / "gd")
    base = write_run(tmp_path / "g", d=False)
    table["gd"] = _per_image(run, base_psnr + gain, [0.45] * 6, [0.027] * 6)
    table["g"] = _per_image(base, base_psnr, [0.50] * 6, [0.030] * 6)
    d = diagnose_run(run, baseline=base)
    f = d.finding("ablation")
    psnr = f.evidence["metrics"]["psnr_mask"]
    assert psnr["ci_low"] > 1.3 and psnr["ci_high"] < 1.9 and psnr["verdict"] == "better"
    assert f.evidence["metrics"]["hfen_mask"]["verdict"] == "better"  # lower HFEN is better
    assert f.evidence["outcome"] == "D adds measurable quality"
    assert not f.triggered
    assert d.finding("d_ineffective").evidence["ablation"] == "D adds measurable quality"


def test_no_eval_says_it_has_no_interval(tmp_path, fake_eval):
    _, calls = fake_eval
    run = write_run(tmp_path / "gd", epochs=[_epoch(e, val_psnr_mask=31.0) for e in (1, 2)])
    base = write_run(tmp_path / "g", d=False, epochs=[_epoch(e, d=False) for e in (1, 2)])
    f = diagnose_run(run, baseline=base, evaluate=False).finding("ablation")
    assert calls == []  # nothing evaluated
    assert f.evidence["metrics"]["psnr_mask"]["delta"] == pytest.approx(1.0)
    assert f.evidence["metrics"]["psnr_mask"]["verdict"] == "no CI"
    assert "NO confidence interval" in f.evidence["source"]
    assert "undecided: no confidence interval" in f.evidence["outcome"]


def test_failed_evaluation_falls_back_to_logged_means_and_says_why(tmp_path, fake_eval):
    run = write_run(tmp_path / "gd")  # fake_eval has no entry: "no checkpoint"
    base = write_run(tmp_path / "g", d=False)
    f = diagnose_run(run, baseline=base).finding("ablation")
    assert "gd could not be evaluated (FileNotFoundError" in f.evidence["source"]
    assert f.evidence["metrics"]["psnr_mask"]["verdict"] == "no CI"


def test_several_seeds_use_a_welch_interval_of_per_seed_means(tmp_path):
    run_psnr, base_psnr = [30.9, 31.0, 31.2], [30.0, 30.1, 29.8]
    runs = [
        write_run(tmp_path / f"gd{s}", epochs=[_epoch(1, val_psnr_mask=v)], seed=s)
        for s, v in enumerate(run_psnr)
    ]
    bases = [
        write_run(tmp_path / f"g{s}", d=False, epochs=[_epoch(1, d=False, val_psnr_mask=v)], seed=s)
        for s, v in enumerate(base_psnr)
    ]
    d = diagnose_run(runs, baseline=bases, evaluate=False)
    psnr = d.finding("ablation").evidence["metrics"]["psnr_mask"]
    ci = stats.ttest_ind(run_psnr, base_psnr, equal_var=False).confidence_interval(0.95)
    assert (psnr["ci_low"], psnr["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert psnr["verdict"] == "better" and psnr["n"] == [3, 3]
    assert "Welch" in psnr["method"]
    assert d.runs == [str(p) for p in runs] and len(d.baselines) == 3
    # the same spread around equal means: within noise
    noisy = [
        write_run(tmp_path / f"n{s}", epochs=[_epoch(1, val_psnr_mask=v)], seed=s)
        for s, v in enumerate([29.4, 30.6, 30.1])
    ]
    psnr = diagnose_run(noisy, baseline=bases, evaluate=False).finding("ablation")
    assert psnr.evidence["metrics"]["psnr_mask"]["verdict"] == "within noise"


def test_seed_runs_sharing_a_seed_are_flagged(tmp_path):
    runs = [write_run(tmp_path / f"gd{i}", seed=0) for i in range(2)]
    base = write_run(tmp_path / "g", d=False)
    d = diagnose_run(runs, baseline=base, evaluate=False)
    assert any("share a seed" in n for n in d.notes)


def test_missing_ablation_prints_the_exact_commands(tmp_path):
    run = write_run(tmp_path / "grd", r=True)
    d = diagnose_run(run)
    f = d.finding("ablation")
    assert f.triggered
    no_d = f"medi2i train --config {run}/config.yaml model.D.enabled=false --out {run}-noD"
    no_r = f"medi2i train --config {run}/config.yaml model.R.enabled=false --out {run}-noR"
    assert f.evidence["commands"] == [no_d, no_r]
    assert no_d in f.verdict and "provisional" in f.verdict
    assert "provisional" in d.finding("d_ineffective").verdict
    text = format_diagnosis(d)
    assert f"    $ {no_d}" in text.splitlines()  # whole, on one line
    plans = ablation_plans(load_run(run))
    assert [(p.arm, p.overrides, p.out) for p in plans] == [
        ("D", ("model.D.enabled=false",), f"{run}-noD"),
        ("R", ("model.R.enabled=false",), f"{run}-noR"),
    ]


def test_no_missing_ablation_for_d_when_a_run_without_d_is_given(tmp_path, fake_eval):
    table, _ = fake_eval
    run = write_run(tmp_path / "gd")
    base = write_run(tmp_path / "g", d=False)
    table["gd"] = _per_image(run, [31, 32, 30, 31], [0.4] * 4, [0.02] * 4)
    table["g"] = _per_image(base, [30, 31, 29, 30], [0.5] * 4, [0.03] * 4)
    f = diagnose_run(run, baseline=base).finding("ablation")
    assert "commands" not in f.evidence and "provisional" not in f.verdict
    assert not diagnose_run(write_run(tmp_path / "g2", d=False)).finding("ablation").applicable


def test_ablation_flags_a_baseline_that_differs_in_more_than_d(tmp_path):
    run = write_run(tmp_path / "gd", loss={"lung_weight": 10.0})
    base = write_run(tmp_path / "g", d=False, loss={"lung_weight": 1.0})
    f = diagnose_run(run, baseline=base, evaluate=False).finding("ablation")
    assert "not a clean ablation" in f.verdict and "loss.lung_weight" in f.verdict


# --------------------------------------------------------------------------------------------
# misaligned pairs, conditional D
# --------------------------------------------------------------------------------------------


def test_misaligned_pairs_without_r_trigger_and_block_weight_advice(tmp_path):
    cfg = {"data": {"misalign": {"max_px": 4.0}}}
    epochs = [_epoch(e, val_sharpness_mask=0.8, train_gshare_gan=4.0) for e in range(1, 4)]
    run = write_run(tmp_path / "gd", config=cfg, epochs=epochs)
    d = diagnose_run(run)
    f = d.finding("misaligned_without_r")
    assert f.triggered and f.evidence["misaligned"] is True and f.evidence["source"] == "config"
    assert "data.misalign.max_px=4" in f.verdict and "median" in f.verdict
    assert f"model.R.enabled=true --out {run}-R" in f.verdict
    blurry = d.finding("blurry_loss_weights")
    assert not blurry.triggered and not blurry.applicable
    assert "feat_match_weight" not in blurry.verdict and "gan_weight" not in blurry.verdict
    assert "Setup: pairs misaligned (simulated misalignment" in format_diagnosis(d)


@pytest.mark.parametrize(
    ("r", "summary", "config", "triggered", "applicable"),
    [
        (True, {"pairs": {"misaligned": True, "reason": "aligned/ folder"}}, {}, False, True),
        (False, {"pairs": {"misaligned": False, "reason": "no aligned/"}}, {}, False, True),
        (False, {"pairs": {"misaligned": True, "reason": "aligned/ folder"}}, {}, True, True),
        (False, {}, {"data": {"pairs": "misaligned", "train_target": "aligned"}}, False, True),
        (False, {}, {}, False, False),  # auto, no simulated shift: not logged
    ],
)
def test_misaligned_rule_reads_summary_then_config(
    tmp_path, r, summary, config, triggered, applicable
):
    run = write_run(tmp_path / "run", r=r, summary=summary, config=config)
    f = diagnose_run(run).finding("misaligned_without_r")
    assert (f.triggered, f.applicable) == (triggered, applicable)
    if not applicable:
        assert "not logged" in f.verdict


def test_conditional_d_with_misaligned_pairs(tmp_path):
    misaligned = {"pairs": {"misaligned": True, "reason": "aligned/ folder"}}
    cond = write_run(tmp_path / "cond", r=True, summary={**misaligned, "D_conditional": True})
    f = diagnose_run(cond).finding("conditional_d_misaligned")
    assert f.triggered and "reward" in f.verdict and "model.D.conditional=no" in f.verdict
    uncond = write_run(tmp_path / "uncond", r=True, summary={**misaligned, "D_conditional": False})
    assert not diagnose_run(uncond).finding("conditional_d_misaligned").triggered
    # an older run: no summary entries; config auto meant "conditional when R is off"
    old = write_run(tmp_path / "old", config={"data": {"misalign": {"max_px": 3}}})
    f = diagnose_run(old).finding("conditional_d_misaligned")
    assert f.triggered and "older trainer" in f.evidence["D_conditional_source"]
    aligned = write_run(
        tmp_path / "aligned", summary={"pairs": {"misaligned": False, "reason": "x"}}
    )
    assert not diagnose_run(aligned).finding("conditional_d_misaligned").triggered
    no_d = write_run(tmp_path / "g", d=False, summary=misaligned)
    assert not diagnose_run(no_d).finding("conditional_d_misaligned").applicable
    # D judging the warped output shares the targets' misalignment: not flagged
    in_frame = write_run(
        tmp_path / "frame",
        r=True,
        summary={**misaligned, "D_conditional": True},
        config={"model": {"D": {"frame": "target"}}},
    )
    f = diagnose_run(in_frame).finding("conditional_d_misaligned")
    assert not f.triggered and "target's frame" in f.verdict


# --------------------------------------------------------------------------------------------
# unstable training
# --------------------------------------------------------------------------------------------

_REAL_LOSS = [0.160, 0.118, 0.100, 0.204, 0.198, 0.201]
_REAL_PSNR = [28.0, 30.1, 31.2, 25.6, 25.9, 25.7]


def _collapsing_g_only() -> list[dict]:
    return [
        _epoch(e, d=False, train_w_recon=loss, val_psnr_mask=psnr)
        for e, (loss, psnr) in enumerate(zip(_REAL_LOSS, _REAL_PSNR), start=1)
    ]


def test_unstable_training_found_in_the_epoch_log(tmp_path):
    run = write_run(tmp_path / "g", d=False, epochs=_collapsing_g_only())
    f = diagnose_run(run).finding("unstable_training")
    assert f.triggered
    ev = f.evidence["g"]
    assert ev["source"] == "epoch log" and ev["best_epoch"] == 3
    assert [(j["epoch"], j["key"]) for j in ev["jumps"]] == [
        (4, "train_w_recon"),
        (4, "val_psnr_mask"),
    ]
    assert "best checkpoint (epoch 3) predates the jump at epoch 4" in f.verdict
    assert "not trustworthy" in f.verdict


def test_unstable_training_prefers_the_runs_own_record(tmp_path):
    jump = {"epoch": 2, "key": "train_loss_G", "before": 0.1, "after": 0.3, "message": "G blew up"}
    run = write_run(tmp_path / "run", summary={"instabilities": [jump]}, best_epoch=1)
    f = diagnose_run(run).finding("unstable_training")
    assert f.triggered and f.evidence["run"]["source"] == "summary.json"
    assert "G blew up" in f.verdict
    # an empty record wins over the log too
    quiet = write_run(
        tmp_path / "quiet", d=False, epochs=_collapsing_g_only(), summary={"instabilities": []}
    )
    assert not diagnose_run(quiet).finding("unstable_training").triggered


def test_stable_runs_and_unlogged_runs(tmp_path):
    healthy = [_epoch(e, train_loss_G=1.0 / e, val_psnr_mask=25 + e) for e in range(1, 6)]
    f = diagnose_run(write_run(tmp_path / "ok", epochs=healthy)).finding("unstable_training")
    assert not f.triggered and f.applicable
    # a G-only run: with D on, a log without D's keys is refused (require_series)
    bare = write_run(tmp_path / "bare", d=False, epochs=[{"epoch": 1, "lr_G": 1e-3}], best_epoch=1)
    assert not diagnose_run(bare).finding("unstable_training").applicable


def test_an_unstable_baseline_makes_the_ablation_untrustworthy(tmp_path, fake_eval):
    table, _ = fake_eval
    run = write_run(tmp_path / "gd")
    base = write_run(tmp_path / "g", d=False, epochs=_collapsing_g_only())
    table["gd"] = _per_image(run, [31, 32, 30, 31], [0.4] * 4, [0.02] * 4)
    table["g"] = _per_image(base, [30, 31, 29, 30], [0.5] * 4, [0.03] * 4)
    d = diagnose_run(run, baseline=base)
    assert "The baseline g trained unstably" in d.finding("unstable_training").verdict
    f = d.finding("ablation")
    assert f.triggered and "not trustworthy: g trained unstably" in f.verdict


# --------------------------------------------------------------------------------------------
# D ineffective
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
    assert "No ablation without D" in f.verdict


def test_d_ineffective_quiet_when_d_separates(tmp_path):
    f = diagnose_run(write_run(tmp_path / "run")).finding("d_ineffective")
    assert not f.triggered and f.applicable
    assert f.evidence["gap"] == pytest.approx(0.6)
    assert "D separates real from fake" in f.verdict


def test_d_ineffective_needs_accuracy_at_chance_too(tmp_path):
    epochs = [_epoch(e, train_D_real=0.5, train_D_fake=0.49, train_D_acc=0.70) for e in range(1, 4)]
    f = diagnose_run(write_run(tmp_path / "run", epochs=epochs)).finding("d_ineffective")
    assert not f.triggered
    assert "off chance" in f.verdict


@pytest.mark.parametrize(("mode", "expected"), [("lsgan", False), ("hinge", True)])
def test_d_ineffective_threshold_follows_the_gan_mode(tmp_path, mode, expected):
    epochs = [_epoch(e, train_D_real=0.07, train_D_fake=0.0, train_D_acc=0.5) for e in range(1, 4)]
    run = write_run(tmp_path / "run", epochs=epochs, loss={"gan_mode": mode})
    f = diagnose_run(run).finding("d_ineffective")
    assert f.triggered is expected
    assert f.evidence["gap_threshold"] == D_GAP_THRESHOLDS[mode]


def test_rules_about_d_are_not_applicable_to_a_g_only_run(tmp_path):
    d = diagnose_run(write_run(tmp_path / "g", d=False))
    for rule in ("d_ineffective", "blurry_loss_weights", "d_clipping", "conditional_d_misaligned"):
        assert not d.finding(rule).triggered
        assert not d.finding(rule).applicable


# --------------------------------------------------------------------------------------------
# blurry -> loss weights from gradient shares
# --------------------------------------------------------------------------------------------


def _gshare_epochs(**over) -> list[dict]:
    # value shares: recon 47%, GAN 18%, FM 35% (a real run's numbers); gradient shares 83/4/13
    base = {
        "val_sharpness_mask": 0.85,
        "train_gshare_recon": 83.0,
        "train_gshare_gan": 4.0,
        "train_gshare_fm": 13.0,
        "train_gshare_smooth": 0.0,
    }
    return [_epoch(e, **{**base, **over}) for e in range(1, 6)]


def test_blurry_recommends_weights_from_the_gradient_shares(tmp_path):
    f = diagnose_run(write_run(tmp_path / "run", epochs=_gshare_epochs())).finding(
        "blurry_loss_weights"
    )
    assert f.triggered
    assert "GAN term's gradient share is 4%; FM 13%, recon 83%" in f.verdict
    w = f.evidence["weights"]
    assert w["gshare_pct"]["gan"] == 4.0 and w["solved_from"] == "gradient shares"
    # gan_weight for 35%: 0.35 * (83 + 13) / (0.65 * 4) = 12.9 -> 13
    assert w["gan_weight_for_aim"] == pytest.approx(13.0)
    # FM 10 -> 2 scales FM's gradient to 2.6: 4 / (83 + 2.6 + 4) = 4.46%, not the 25% the value
    # shares would promise; even FM 0 gives 4.6%
    assert w["gshare_at_feat_match"]["2"] == pytest.approx(4.464, abs=0.01)
    assert w["gshare_at_feat_match"]["0"] == pytest.approx(4.598, abs=0.01)
    assert w["feat_match_weight_for_aim"] is None
    assert "feat_match_weight 10 -> 2 (GAN gradient share ~4%" in f.verdict
    assert "gan_weight 1 -> 13" in f.verdict
    # the value shares are shown, as secondary evidence only
    assert "Shares of the loss value, which do not measure the push on G: GAN 18%" in f.verdict
    assert w["value_share_pct (secondary)"]["gan"] == pytest.approx(18.2, abs=0.1)


def test_weights_are_solved_from_the_gradient_norms_when_logged(tmp_path):
    # gan_weight 2: GAN's weighted norm 0.08 is 2 x an unweighted 0.04
    epochs = _gshare_epochs(train_gnorm_recon=1.66, train_gnorm_gan=0.08, train_gnorm_fm=0.26)
    run = write_run(tmp_path / "run", epochs=epochs, loss={"gan_weight": 2.0})
    w = diagnose_run(run).finding("blurry_loss_weights").evidence["weights"]
    assert w["solved_from"] == "gradient norms"
    # 0.35 * (1.66 + 0.26) / (0.65 * 0.04) = 25.8 -> 26
    assert w["gan_weight_for_aim"] == pytest.approx(26.0)


def test_gradient_shares_from_the_step_log(tmp_path):
    epochs = [_epoch(e, val_sharpness_mask=0.85) for e in range(1, 6)]
    steps = [
        {"step": s, "gshare_recon": 60.0, "gshare_gan": 10.0, "gshare_fm": 30.0}
        for s in range(1, 51, 10)
    ]
    run = write_run(tmp_path / "run", epochs=epochs, steps=steps)
    f = diagnose_run(run).finding("blurry_loss_weights")
    assert f.evidence["weights"]["source"] == "step log"
    assert "GAN term's gradient share is 10%; FM 30%, recon 60%" in f.verdict


def test_without_gradient_shares_no_weight_is_recommended(tmp_path):
    epochs = [_epoch(e, val_sharpness_mask=0.85) for e in range(1, 6)]
    f = diagnose_run(write_run(tmp_path / "run", epochs=epochs)).finding("blurry_loss_weights")
    assert f.triggered
    assert "gradient shares (train_gshare_*) are not logged" in f.verdict
    assert "gan_weight_for_aim" not in f.evidence["weights"]


def test_blurry_with_gan_gradient_share_already_high_points_elsewhere(tmp_path):
    epochs = _gshare_epochs(
        train_gshare_recon=50.0,
        train_gshare_gan=40.0,
        train_gshare_fm=10.0,
        train_D_real=0.497,
        train_D_fake=0.497,
        train_D_acc=0.5,
    )
    f = diagnose_run(write_run(tmp_path / "run", epochs=epochs)).finding("blurry_loss_weights")
    assert f.triggered and "already above target" in f.verdict
    assert "make D useful first" in f.verdict
    assert "gan_weight_for_aim" not in f.evidence["weights"]


def test_blurry_quiet_when_sharp_and_no_baseline(tmp_path):
    f = diagnose_run(write_run(tmp_path / "run")).finding("blurry_loss_weights")
    assert not f.triggered and f.applicable
    assert "baseline without D" in f.verdict


def test_blurry_against_the_run_without_d_uses_the_intervals(tmp_path, fake_eval):
    table, _ = fake_eval
    base = write_run(tmp_path / "g", d=False)
    same = write_run(tmp_path / "same")
    better = write_run(tmp_path / "better")
    psnr, hfen, gmsd = [30.0, 31.0, 29.0, 30.5], [0.50, 0.52, 0.48, 0.50], [0.03] * 4
    table["g"] = _per_image(base, psnr, hfen, gmsd)
    table["same"] = _per_image(same, psnr, [0.51, 0.51, 0.49, 0.49], gmsd)  # +-0.01 noise
    table["better"] = _per_image(better, psnr, np.array(hfen) - 0.05, np.array(gmsd) - 0.003)
    f_same = diagnose_run(same, baseline=base).finding("blurry_loss_weights")
    f_better = diagnose_run(better, baseline=base).finding("blurry_loss_weights")
    assert f_same.triggered and f_same.evidence["no_sharper_than_baseline"] is True
    assert "no better than without D (HFEN within noise" in f_same.verdict
    assert not f_better.triggered and f_better.evidence["no_sharper_than_baseline"] is False


# --------------------------------------------------------------------------------------------
# D's clipping
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
# still improving (heuristic)
# --------------------------------------------------------------------------------------------


def test_g_only_still_improving_recommends_exp4(tmp_path):
    epochs = [_epoch(e, d=False, val_psnr_mask=28.0 + 0.5 * e) for e in range(1, 6)]
    f = diagnose_run(write_run(tmp_path / "g", d=False, epochs=epochs)).finding("still_improving")
    assert f.triggered
    assert f.evidence["run"]["slope_db_per_epoch"] == pytest.approx(0.5)
    assert "exp4" in f.verdict and "100+ epochs" in f.verdict and "heuristic" in f.verdict


def test_converged_run_is_not_still_improving(tmp_path):
    values = [29.0, 30.0, 30.02, 29.98, 30.01]
    epochs = [_epoch(e, d=False, val_psnr_mask=v) for e, v in enumerate(values, start=1)]
    f = diagnose_run(write_run(tmp_path / "g", d=False, epochs=epochs)).finding("still_improving")
    assert not f.triggered and f.applicable
    assert abs(f.evidence["run"]["slope_db_per_epoch"]) < 0.1
    assert f.evidence["run"]["best_epoch"] == 3


def test_best_epoch_last_counts_as_still_improving(tmp_path):
    values = [30.0, 30.01, 30.0, 30.02]
    epochs = [_epoch(e, d=False, val_psnr_mask=v) for e, v in enumerate(values, start=1)]
    f = diagnose_run(write_run(tmp_path / "g", d=False, epochs=epochs)).finding("still_improving")
    assert f.triggered
    assert "best epoch 4 = last 4" in f.verdict


def test_baseline_still_improving_makes_comparison_premature(tmp_path):
    flat = [_epoch(e, val_psnr_mask=v) for e, v in enumerate([29, 30, 30.01, 29.99, 30], 1)]
    rising = [_epoch(e, d=False, val_psnr_mask=27.0 + e) for e in range(1, 6)]
    run = write_run(tmp_path / "gd", epochs=flat)
    base = write_run(tmp_path / "g", d=False, epochs=rising)
    f = diagnose_run(run, baseline=base, evaluate=False).finding("still_improving")
    assert f.triggered
    assert not f.evidence["run"]["improving"] and f.evidence["baseline"]["improving"]
    assert "comparison with it is premature" in f.verdict


# --------------------------------------------------------------------------------------------
# the per-image evaluation cache
# --------------------------------------------------------------------------------------------


def test_per_image_evaluation_is_cached_by_checkpoint(tmp_path, monkeypatch):
    from medi2i.config import load_config
    from medi2i.evaluation import evaluate as evaluate_mod
    from medi2i.inference import loading

    run = write_run(tmp_path / "run", d=False)
    ckpt = run / "checkpoints" / "best.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    cfg = load_config(None, ["data.root=data"])
    calls = []

    class Loaded:
        config = cfg

    def fake_split(gen, *, out_dir, split, config, **kwargs):
        calls.append((split, config.data.root))
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.csv").write_text(
            "name,method,psnr_mask,hfen_mask\n"
            "a.png,model,30.5,0.5\na.png,identity,20,0.9\nb.png,model,31.5,\n"
        )
        summary = {"reference": "target", "units": "u", "epoch": 4, "checkpoint": str(ckpt)}
        (out / "summary.json").write_text(json.dumps(summary))
        return summary

    monkeypatch.setattr(loading, "load_generator", lambda *a, **k: Loaded())
    monkeypatch.setattr(evaluate_mod, "evaluate_split", fake_split)
    first = evaluate_val_per_image(run)
    assert not first.cached and calls == [("val", "data")]
    assert first.names == ["a.png", "b.png"] and first.epoch == 4
    assert first.values["psnr_mask"].tolist() == [30.5, 31.5]
    assert np.isnan(first.values["hfen_mask"][1])
    assert (run / "diagnose" / "val" / "cache.json").is_file()
    second = evaluate_val_per_image(run)
    assert second.cached and len(calls) == 1  # read back, not evaluated again
    assert second.values["psnr_mask"].tolist() == [30.5, 31.5]
    stat = ckpt.stat()
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a newer checkpoint
    assert not evaluate_val_per_image(run).cached and len(calls) == 2
    evaluate_val_per_image(run, refresh=True)
    evaluate_val_per_image(run, data_root=tmp_path / "moved")
    assert len(calls) == 4 and calls[-1] == ("val", str(tmp_path / "moved"))


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
    assert text.splitlines()[-1] == "Triggered: ablation, d_clipping"
    assert "clip_rate_D=0.9" in text
    json.dumps(d.to_dict())
    with pytest.raises(KeyError, match="rules"):
        d.finding("nope")
    with pytest.raises(ValueError, match="last_epochs"):
        diagnose_run(tmp_path / "run", last_epochs=0)
    with pytest.raises(ValueError, match="its own baseline"):
        diagnose_run(tmp_path / "run", baseline=tmp_path / "run")


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
    assert rec.pairs["misaligned"] is None and rec.instabilities is None
    diagnose_run(path)  # every rule copes with an almost empty run


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def test_cli_diagnose_text_and_json(tmp_path, capsys):
    runs = [write_run(tmp_path / f"gd{s}", seed=s) for s in range(2)]
    bases = [write_run(tmp_path / f"g{s}", d=False, seed=s) for s in range(2)]
    argv = ["diagnose", *map(str, runs), "--baseline", *map(str, bases), "--no-eval"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("Diagnosis of gd0") and "Seeds: gd0, gd1" in out
    assert "Baseline: g0, g1" in out and "Setup: pairs" in out
    assert main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["runs"] == [str(p) for p in runs] and data["baselines"] == [str(p) for p in bases]
    assert main(["diagnose", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_cli_run_ablation_trains_the_run_without_d(tmp_path, capsys, monkeypatch):
    import medi2i.training.trainer as trainer

    run = write_run(tmp_path / "gd")
    trained = []

    def fake_train(cfg, out):
        trained.append((cfg.model.D.enabled, cfg.model.R.enabled, cfg.seed, out))
        write_run(Path(out), d=False)

    monkeypatch.setattr(trainer, "train", fake_train)
    assert main(["diagnose", str(run), "--run-ablation", "--no-eval"]) == 0
    out = capsys.readouterr().out
    assert trained == [(False, False, 0, f"{run}-noD")]
    assert "training the ablation: medi2i train --config" in out
    assert "Baseline: gd-noD" in out
    # a finished ablation is reused
    assert main(["diagnose", str(run), "--run-ablation", "--no-eval"]) == 0
    assert len(trained) == 1
    assert main(["diagnose", str(run), "--run-ablation", "--baseline", str(run)]) == 2


@pytest.mark.slow
def test_real_generators_evaluated_paired_on_validation_and_cached(tmp_path):
    from tinydata import train_tiny_g_only, write_pairs

    root = write_pairs(tmp_path / "pairs", {"train": 4, "val": 3}, np.random.default_rng(0))
    base = train_tiny_g_only(root, tmp_path / "g")
    run = train_tiny_g_only(root, tmp_path / "gd", "model.D.enabled=true")
    d = diagnose_run(run, baseline=base)
    f = d.finding("ablation")
    psnr = f.evidence["metrics"]["psnr_mask"]
    assert psnr["n"] == 3 and psnr["method"] == "paired bootstrap over 3 validation images"
    assert psnr["ci_low"] <= psnr["delta"] <= psnr["ci_high"]
    assert psnr["verdict"] in ("better", "worse", "within noise")
    for r in (run, base):
        assert (r / "diagnose" / "val" / "metrics.csv").is_file()
    again = diagnose_run(run, baseline=base).finding("ablation")
    assert "2 of 2 read from RUN/diagnose/val" in again.evidence["source"]
    assert again.evidence["metrics"]["psnr_mask"]["delta"] == pytest.approx(psnr["delta"])


# --------------------------------------------------------------------------------------------
# divergence is reported first
# --------------------------------------------------------------------------------------------


def test_divergence_is_the_first_finding(tmp_path):
    epochs = [_epoch(1, d=True), {**_epoch(2, d=True), "val_psnr_mask": None, "val_psnr": None}]
    run = write_run(tmp_path / "nan", epochs=epochs, best_epoch=1, summary={"skipped_steps": 7})
    diagnosis = diagnose_run(run)
    first = diagnosis.findings[0]
    assert first.rule == "diverged" and first.triggered
    assert "7 of 20 training steps had a non-finite loss" in first.verdict
    assert "validation was not finite at epoch(s) 2" in first.verdict
    assert any("Training diverged" in note for note in diagnosis.notes)


def test_a_healthy_run_has_not_diverged(tmp_path):
    run = write_run(tmp_path / "ok", summary={"skipped_steps": 0})
    f = diagnose_run(run).finding("diverged")
    assert not f.triggered and f.applicable


# --------------------------------------------------------------------------------------------
# the rules as decisions: status, case and evidence, asserted without reading any wording
# --------------------------------------------------------------------------------------------


def _record(tmp_path: Path, name: str = "run", **kwargs):
    return load_run(write_run(tmp_path / name, **kwargs))


def _no_ablation(tmp_path: Path) -> Decision:
    """The ablation decision of a G+D run without baseline (what D's rules read from it)."""
    return _rule_ablation([_record(tmp_path, "gd_alone")], [], None, [])


def _comparison(verdict: str) -> dict:
    psnr = MetricComparison("psnr_mask", True, 31.0, 30.0, 1.0, 0.5, 1.5, 4, "test", verdict)
    return {"source": "test", "metrics": {"psnr_mask": psnr}, "caveats": [], "evaluated": True}


def _status_case(decision: Decision) -> tuple[str, str]:
    return decision.status, decision.case


def test_diverged_decisions(tmp_path):
    healthy = _rule_diverged(_record(tmp_path, "ok"))
    assert _status_case(healthy) == (NOT_TRIGGERED, "finite")
    assert healthy.evidence == {"skipped_steps": None, "non_finite_val_epochs": []}
    epochs = [_epoch(1), {**_epoch(2), "val_psnr_mask": None}]
    summary = {"skipped_steps": 7}
    nan = _rule_diverged(_record(tmp_path, "nan", epochs=epochs, best_epoch=1, summary=summary))
    assert _status_case(nan) == (TRIGGERED, "non_finite") and nan.triggered and nan.applicable
    assert nan.evidence == {"skipped_steps": 7.0, "non_finite_val_epochs": [2]}
    assert nan.detail == {"steps": 20}
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.yaml").write_text("seed: 0\n")
    bare = _rule_diverged(load_run(tmp_path / "bare"))
    assert _status_case(bare) == (NOT_EVALUATED, "not_logged") and not bare.applicable


@pytest.mark.parametrize(
    ("r", "summary", "config", "expected"),
    [
        (False, {}, {}, (NOT_EVALUATED, "unknown")),
        (False, {"pairs": {"misaligned": False, "reason": "x"}}, {}, (NOT_TRIGGERED, "aligned")),
        (True, {"pairs": {"misaligned": True, "reason": "x"}}, {}, (NOT_TRIGGERED, "r_on")),
        (
            False,
            {},
            {"data": {"pairs": "misaligned", "train_target": "aligned"}},
            (NOT_TRIGGERED, "aligned_targets"),
        ),
        (False, {}, {"data": {"misalign": {"max_px": 4.0}}}, (TRIGGERED, "r_off")),
    ],
)
def test_misaligned_decisions(tmp_path, r, summary, config, expected):
    run = _record(tmp_path, r=r, summary=summary, config=config)
    decision = _rule_misaligned(run)
    assert _status_case(decision) == expected
    assert decision.evidence["R"] is r
    if expected[0] == TRIGGERED:
        assert decision.evidence["misaligned"] is True and decision.evidence["source"] == "config"
        config, out = f"{run.path}/config.yaml", f"{run.path}-R"
        argv = ["medi2i", "train", "--config", config, "model.R.enabled=true", "--out", out]
        assert decision.evidence["commands"] == [argv]
    else:
        assert "commands" not in decision.evidence


_MISALIGNED = {"pairs": {"misaligned": True, "reason": "aligned/ folder"}}


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"d": False}, (NOT_APPLICABLE, "no_d")),
        ({"config": {"model": {"D": {"conditional": "maybe"}}}}, (NOT_EVALUATED, "unknown")),
        ({"summary": {**_MISALIGNED, "D_conditional": False}}, (NOT_TRIGGERED, "unconditional")),
        (
            {
                "r": True,
                "summary": {**_MISALIGNED, "D_conditional": True},
                "config": {"model": {"D": {"frame": "target"}}},
            },
            (NOT_TRIGGERED, "target_frame"),
        ),
        ({"summary": {"D_conditional": True}}, (NOT_EVALUATED, "pairs_unknown")),
        (
            {"summary": {"pairs": {"misaligned": False, "reason": "x"}, "D_conditional": True}},
            (NOT_TRIGGERED, "aligned"),
        ),
        ({"summary": {**_MISALIGNED, "D_conditional": True}}, (TRIGGERED, "misaligned")),
    ],
)
def test_conditional_d_decisions(tmp_path, kwargs, expected):
    decision = _rule_conditional_d(_record(tmp_path, **kwargs))
    assert _status_case(decision) == expected
    if expected[1] != "no_d":
        assert decision.detail["pairs_reason"] == load_run(tmp_path / "run").pairs["reason"]


def test_unstable_decisions(tmp_path):
    collapsing = _record(tmp_path, "g", d=False, epochs=_collapsing_g_only())
    decision = _rule_unstable([collapsing], [])
    assert _status_case(decision) == (TRIGGERED, "unstable")
    assert decision.evidence["g"]["best_epoch"] == 3
    arm = decision.detail["arms"][0]
    assert (arm["first_jump_epoch"], arm["best_before_jump"], arm["val_dropped"]) == (4, True, True)
    jump = {"epoch": 2, "key": "train_loss_G", "message": "G blew up"}
    recovered = _record(tmp_path, "gd", summary={"instabilities": [jump]}, best_epoch=4)
    arm = _rule_unstable([recovered], []).detail["arms"][0]
    assert (arm["best_before_jump"], arm["val_dropped"], arm["has_D"]) == (False, False, True)
    healthy = [_epoch(e, train_loss_G=1.0 / e, val_psnr_mask=25 + e) for e in range(1, 6)]
    bare = _record(tmp_path, "bare", epochs=[{"epoch": 1, "lr_G": 1e-3}], best_epoch=1)
    stable = _rule_unstable([_record(tmp_path, "ok", epochs=healthy)], [bare])
    assert _status_case(stable) == (NOT_TRIGGERED, "stable")
    assert stable.evidence["ok"]["jumps"] == [] and "jumps" not in stable.evidence["bare"]
    assert _status_case(_rule_unstable([bare], [])) == (NOT_EVALUATED, "not_logged")


def test_ablation_decisions(tmp_path):
    g = _record(tmp_path, "g", d=False)
    assert _status_case(_rule_ablation([g], [], None, [])) == (NOT_APPLICABLE, "g_only")
    gd = _record(tmp_path, "gd")
    missing = _rule_ablation([gd], [], None, [])
    assert _status_case(missing) == (TRIGGERED, "missing")
    assert missing.evidence["commands"] == [ablation_plans(gd)[0].argv]
    assert missing.detail["missing_arms"] == ["D"]
    better = _rule_ablation([gd], [g], _comparison("better"), [])
    assert _status_case(better) == (NOT_TRIGGERED, "compared")
    assert better.evidence["arm"] == "D"
    assert better.evidence["outcome"] == {"case": "adds", "arm": "D"}
    assert better.evidence["metrics"]["psnr_mask"]["verdict"] == "better"
    same = _rule_ablation([gd], [g], _comparison("within noise"), [])
    assert _status_case(same) == (TRIGGERED, "compared")
    assert same.evidence["outcome"] == {"case": "no_difference", "arm": "D"}
    unstable = _rule_ablation([gd], [g], _comparison("better"), ["g"])
    assert unstable.triggered
    assert unstable.evidence["caveats"] == [{"case": "unstable_arm", "names": ["g"]}]
    grd, gr = _record(tmp_path, "grd", r=True), _record(tmp_path, "gr", d=False, r=True)
    partial = _rule_ablation([grd], [gr], _comparison("better"), [])
    assert _status_case(partial) == (NOT_TRIGGERED, "compared_missing")
    assert partial.detail["missing_arms"] == ["R"]
    nothing = _rule_ablation([gd], [g], None, [])  # a baseline, but no comparison with it
    assert _status_case(nothing) == (NOT_TRIGGERED, "nothing")
    assert word(nothing).verdict == "Nothing to compare."


def test_d_ineffective_decisions(tmp_path):
    ablation = _no_ablation(tmp_path)
    at_chance = [
        _epoch(e, train_D_real=0.497, train_D_fake=0.4968, train_D_acc=0.5) for e in (1, 2)
    ]
    decision = _rule_d_ineffective(_record(tmp_path, "a", epochs=at_chance), 3, ablation)
    assert _status_case(decision) == (TRIGGERED, "at_chance")
    assert decision.detail["gap"] == pytest.approx(0.0002)
    assert decision.evidence["ablation"] is None  # no ablation without D
    off = [_epoch(e, train_D_real=0.5, train_D_fake=0.49, train_D_acc=0.7) for e in (1, 2)]
    decision = _rule_d_ineffective(_record(tmp_path, "b", epochs=off), 3, ablation)
    assert _status_case(decision) == (NOT_TRIGGERED, "acc_off_chance")
    decision = _rule_d_ineffective(_record(tmp_path, "c"), 3, ablation)
    assert _status_case(decision) == (NOT_TRIGGERED, "separates")
    unlogged = [_epoch(e, train_D_real=None) for e in (1, 2)]
    decision = _rule_d_ineffective(_record(tmp_path, "d", epochs=unlogged), 3, ablation)
    assert _status_case(decision) == (NOT_EVALUATED, "not_logged")
    no_d = _rule_d_ineffective(_record(tmp_path, "g", d=False), 3, ablation)
    assert _status_case(no_d) == (NOT_APPLICABLE, "no_d") and no_d.detail == {"mode": "G"}
    gd = _record(tmp_path, "gd")
    compared = _rule_ablation([gd], [_record(tmp_path, "g0", d=False)], _comparison("better"), [])
    decision = _rule_d_ineffective(gd, 3, compared)
    assert decision.evidence["ablation"] == {"case": "adds", "arm": "D"}


def test_blurry_decisions(tmp_path):
    ablation = _no_ablation(tmp_path)

    def decide(run, d_ineffective=False, misaligned=False, bases=()):
        fake = Decision("x", TRIGGERED if d_ineffective else NOT_TRIGGERED, "x")
        mis = Decision("y", TRIGGERED if misaligned else NOT_TRIGGERED, "y")
        return _rule_blurry(run, 3, fake, mis, ablation, bases)

    blurry = decide(_record(tmp_path, "blurry", epochs=_gshare_epochs()), d_ineffective=True)
    assert _status_case(blurry) == (TRIGGERED, "blurry") and blurry.evidence["blurry"] is True
    assert blurry.detail["blur_signs"] == ["sharpness"] and blurry.detail["d_ineffective"]
    assert blurry.detail["weights"]["case"] == "recommend"
    assert blurry.evidence["weights"]["gan_weight_for_aim"] == pytest.approx(13.0)
    assert not blurry.detail["gan_share_above_target"]
    high = _gshare_epochs(train_gshare_recon=50.0, train_gshare_gan=40.0, train_gshare_fm=10.0)
    decision = decide(_record(tmp_path, "high", epochs=high))
    assert decision.detail["weights"]["case"] == "above_target"
    assert decision.detail["gan_share_above_target"]
    unlogged = [_epoch(e, val_sharpness_mask=0.85) for e in range(1, 4)]
    decision = decide(_record(tmp_path, "old", epochs=unlogged))
    assert decision.detail["weights"] == {"case": "no_gradient_shares"}
    sharp = decide(_record(tmp_path, "sharp"))
    assert _status_case(sharp) == (NOT_TRIGGERED, "sharp") and sharp.evidence["blurry"] is False
    assert sharp.detail["sharp_signs"] == ["sharpness"]
    decision = decide(_record(tmp_path, "mis", epochs=_gshare_epochs()), misaligned=True)
    assert _status_case(decision) == (NOT_EVALUATED, "misaligned")
    assert "blurry" not in decision.evidence
    no_sharpness = [_epoch(e, val_sharpness_mask=None) for e in range(1, 4)]
    decision = decide(_record(tmp_path, "none", epochs=no_sharpness))
    assert _status_case(decision) == (NOT_EVALUATED, "no_evidence")
    assert _status_case(decide(_record(tmp_path, "g", d=False))) == (NOT_APPLICABLE, "no_d")


def test_d_clipping_decisions(tmp_path):
    often = [_epoch(e, train_clip_rate_D=0.85, train_grad_norm_D=30.0) for e in range(1, 4)]
    decision = _rule_d_clipping(_record(tmp_path, "often", epochs=often), 3)
    assert _status_case(decision) == (TRIGGERED, "frequent")
    assert decision.evidence["suggested_grad_clip_D"] == pytest.approx(45.0)
    assert decision.detail["suggestion_basis"] == "mean_norm_x1.5"
    assert decision.detail["suggested_r1_weight"] is None  # no R1 yet: add one
    assert not decision.detail["clip_rate_G_too"]
    run = _record(tmp_path, "r1", epochs=often, loss={"r1_weight": 0.5})
    assert _rule_d_clipping(run, 3).detail["suggested_r1_weight"] == 2.0
    rare = _rule_d_clipping(_record(tmp_path, "rare"), 3)
    assert _status_case(rare) == (NOT_TRIGGERED, "rare")
    assert rare.evidence["clip_rate_D"] == pytest.approx(0.05)
    unlogged = [_epoch(e, train_clip_rate_D=None) for e in range(1, 4)]
    decision = _rule_d_clipping(_record(tmp_path, "unlogged", epochs=unlogged), 3)
    assert _status_case(decision) == (NOT_EVALUATED, "not_logged")
    off = _record(tmp_path, "off", epochs=unlogged, config={"optim": {"grad_clip": None}})
    assert _status_case(_rule_d_clipping(off, 3)) == (NOT_EVALUATED, "clipping_off")


def test_rules_refuse_a_log_without_a_key_they_need(tmp_path, capsys):
    def without(key: str, epochs: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k != key} for row in epochs]

    # D was on, so its outputs were logged: a log without them (a renamed key) is refused
    run = write_run(tmp_path / "renamed", epochs=without("train_D_real", _epoch_rows(3)))
    with pytest.raises(MissingScalarError, match=r"epochs\.jsonl has the key 'train_D_real'"):
        diagnose_run(run)
    assert main(["diagnose", str(run), "--no-eval"]) == 2
    assert "renamed" in capsys.readouterr().err
    # D was clipped (optim.grad_clip 5): its clip rate was logged
    unclipped = without("train_clip_rate_D", _epoch_rows(3))
    with pytest.raises(MissingScalarError, match="'train_clip_rate_D'"):
        _rule_d_clipping(_record(tmp_path, "clipped", epochs=unclipped), 3)
    off = _record(tmp_path, "off", epochs=unclipped, config={"optim": {"grad_clip": None}})
    assert _status_case(_rule_d_clipping(off, 3)) == (NOT_EVALUATED, "clipping_off")
    # gradient shares: needed when measured, legitimately absent with logging.gshare_every 0
    blurry = [_epoch(e, val_sharpness_mask=0.85) for e in range(1, 4)]
    measured = write_run(
        tmp_path / "measured", epochs=blurry, config={"logging": {"gshare_every": 10}}
    )
    with pytest.raises(MissingScalarError, match="'train_gshare_gan'"):
        diagnose_run(measured)
    unmeasured = write_run(
        tmp_path / "unmeasured", epochs=blurry, config={"logging": {"gshare_every": 0}}
    )
    f = diagnose_run(unmeasured).finding("blurry_loss_weights")
    assert f.triggered and "gan_weight_for_aim" not in f.evidence["weights"]
    # a G-only run needs none of D's keys
    g = write_run(tmp_path / "g", d=False, epochs=[_epoch(e, d=False) for e in range(1, 4)])
    assert not diagnose_run(g).finding("d_ineffective").applicable


def _epoch_rows(n: int) -> list[dict]:
    return [_epoch(e) for e in range(1, n + 1)]


def test_still_improving_decisions(tmp_path):
    rising = [_epoch(e, d=False, val_psnr_mask=27.0 + e) for e in range(1, 6)]
    flat = [_epoch(e, val_psnr_mask=v) for e, v in enumerate([29, 30, 30.01, 29.99, 30], 1)]
    g = _record(tmp_path, "g", d=False, epochs=rising)
    gd = _record(tmp_path, "gd", epochs=flat)
    decision = _rule_still_improving(g, None, 3)
    assert _status_case(decision) == (TRIGGERED, "run_improving")
    assert decision.evidence["run"]["slope_db_per_epoch"] == pytest.approx(1.0)
    assert decision.detail == {"has_D": False}
    assert _status_case(_rule_still_improving(gd, None, 3)) == (NOT_TRIGGERED, "converged")
    decision = _rule_still_improving(gd, g, 3)
    assert _status_case(decision) == (TRIGGERED, "baseline_improving")
    assert decision.evidence["baseline"]["name"] == "g"
    unlogged = _record(tmp_path, "bare", d=False, epochs=[{"epoch": 1, "lr_G": 1e-3}])
    assert _status_case(_rule_still_improving(unlogged, None, 3)) == (NOT_EVALUATED, "not_logged")


def test_findings_carry_status_and_case_and_every_case_has_wording(tmp_path):
    d = diagnose_run(write_run(tmp_path / "g", d=False))
    f = d.finding("d_clipping")
    assert (f.status, f.case, f.applicable, f.triggered) == (NOT_APPLICABLE, "no_d", False, False)
    serialised = d.to_dict()["findings"][0]
    assert list(serialised) == [
        "rule",
        "triggered",
        "verdict",
        "evidence",
        "applicable",
        "status",
        "case",
    ]
    assert {rule for rule, _ in _TEXTS} == set(RULES)
    with pytest.raises(KeyError, match="no wording for rule 'diverged', case 'nope'"):
        word(Decision("diverged", TRIGGERED, "nope"))
