"""The trainer: every mode, EMA validation, warm-up, pretrained G, clipping, diagnostics, NaN
guard, exact resume after a real SIGKILL, and DDP on two gloo processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from medi2i.config import load_config
from medi2i.data.builders import build_dataloader, build_dataset
from medi2i.evaluation.evaluate import evaluate_split
from medi2i.evaluation.runs import load_run
from medi2i.inference import load_generator
from medi2i.run.checkpoint import load_checkpoint
from medi2i.run.layout import RunLayout
from medi2i.training.distributed import DistContext
from medi2i.training.trainer import Trainer, TrainingError, train
from medi2i.training.validation import evaluate_generator
from tinydata import MODES, TINY_NETS, tiny_run_config


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("mode", list(MODES.values()), ids=list(MODES))
def test_each_mode_trains_and_writes_everything(dataset_root, tmp_path, mode):
    cfg = tiny_run_config(dataset_root, *mode)
    run = tmp_path / "run"
    summary = train(cfg, out=str(run))
    assert summary["steps"] == 6 and summary["skipped_steps"] == 0
    for name in ("config.yaml", "summary.json", "test_metrics.json", "train.log"):
        assert (run / name).is_file(), name
    for name in ("last.pt", "best.pt"):
        assert (run / "checkpoints" / name).is_file()
    assert list((run / "tensorboard").iterdir())
    assert (run / "samples" / "epoch_0002.png").is_file()
    steps = read_jsonl(run / "metrics" / "steps.jsonl")
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    for s in steps:
        assert np.isfinite(s["loss_G"])
        shares = [s[k] for k in s if k.startswith("share_")]
        assert sum(shares) == pytest.approx(100.0, abs=1e-3)
        assert "grad_norm_G" in s and "lr_G" in s
        if "D.enabled=true" in " ".join(mode):
            assert {"D_real", "D_fake", "D_acc", "grad_norm_D", "clip_rate_D"} <= set(s)
        if "R.enabled=true" in " ".join(mode):
            assert "grad_norm_R" in s and "w_smooth" in s
    epochs = read_jsonl(run / "metrics" / "epochs.jsonl")
    assert len(epochs) == 2 and "val_psnr_mask" in epochs[-1]
    # writers and readers share one layout: every path it names was written, and read back
    layout = RunLayout(run)
    named = (layout.config, layout.summary, layout.test_metrics, layout.train_log, layout.steps)
    named += (layout.epochs, layout.epochs_csv, layout.last_checkpoint, layout.best_checkpoint)
    assert all(path.is_file() for path in (*named, layout.sample_grid(2))) and layout.is_run()
    record = load_run(run)
    assert len(record.epochs) == 2 and len(record.steps) == 6 and record.test_metrics
    assert record.has_checkpoint and not record.problems
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 2 and state["step"] == 6
    joined = " ".join(mode)
    expected = {"G"} | ({"R"} if "R.enabled=true" in joined else set())
    assert set(state["model"]) == expected | ({"D"} if "D.enabled=true" in joined else set())
    # the end-of-run test uses the best checkpoint's EMA weights, as `medi2i evaluate` would
    report = json.loads((run / "test_metrics.json").read_text())
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert report["weights"] == f"EMA, best (epoch {best['epoch']})"
    loaded = load_generator(run)  # the inference path: best.pt, EMA weights
    test_set = build_dataset(cfg, "test", normalizer=loaded.normalizer, train=False)
    result = evaluate_generator(
        loaded.generator,
        build_dataloader(test_set, cfg, shuffle=False),
        ctx=DistContext(),
        data_range=1.0,
    )
    for key in ("psnr", "psnr_mask", "ssim"):  # the batched validation code, independently
        assert report["model"][key] == pytest.approx(result.metrics[key], rel=1e-5), key
    # one scoring path: `medi2i evaluate` reports the same metrics with the same means
    summary = evaluate_split(loaded, out_dir=tmp_path / "eval", bootstrap=1, progress=False)
    for method in ("model", "identity"):
        means = {k: v["mean"] for k, v in summary["methods"][method].items()}
        assert set(report[method]) == set(means) >= {"bsr_lit", "ms_ssim", "blur_effect"}
        for key, value in means.items():
            assert report[method][key] == pytest.approx(value, rel=1e-6, nan_ok=True), key


def test_validation_uses_ema_and_leaves_online_weights_untouched(dataset_root, tmp_path):
    cfg = tiny_run_config(dataset_root, "train.ema_decay=0.99", "train.epochs=1")
    trainer = Trainer(cfg, tmp_path / "run", DistContext())
    for batch in trainer.train_loader:
        trainer.train_step(batch)
    before = {k: v.clone() for k, v in trainer.G.state_dict().items()}
    ema_result = trainer.validate()
    after = trainer.G.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical
    from medi2i.training.validation import evaluate_generator

    online = evaluate_generator(
        trainer.G, trainer.val_loader, ctx=trainer.ctx, data_range=trainer.data_range
    )
    assert ema_result.metrics["psnr"] != pytest.approx(online.metrics["psnr"], abs=1e-6)
    trainer.logger.close()


def test_warmup_and_skip_warmup_learning_rates(dataset_root, tmp_path):
    def lr_after_one_step(*overrides):
        cfg = tiny_run_config(dataset_root, "optim.G.lr=1e-3", "optim.warmup_epochs=1", *overrides)
        trainer = Trainer(cfg, tmp_path / f"run{len(overrides)}", DistContext())
        first = trainer.optimizers["G"].param_groups[0]["lr"]
        trainer.train_step(next(iter(trainer.train_loader)))
        trainer.logger.close()
        return first, trainer.optimizers["G"].param_groups[0]["lr"]

    warm_first, warm_next = lr_after_one_step()
    assert warm_first == pytest.approx(1e-3 / 3)  # warm-up of 3 steps: (0 + 1) / 3
    assert warm_next == pytest.approx(2e-3 / 3)
    skip_first, skip_next = lr_after_one_step("optim.skip_warmup=true")
    assert skip_first == pytest.approx(1e-3) and skip_next == pytest.approx(1e-3)


def test_pretrained_G_loads_and_mismatch_is_explained(dataset_root, tmp_path):
    g_only = tiny_run_config(dataset_root, "train.epochs=1")
    train(g_only, out=str(tmp_path / "g_only"))
    source = tmp_path / "g_only" / "checkpoints" / "best.pt"
    cfg = tiny_run_config(
        dataset_root,
        "model.D.enabled=true",
        f"train.pretrained_G={source}",
        "optim.skip_warmup=true",
    )
    trainer = Trainer(cfg, tmp_path / "gd", DistContext())
    state = load_checkpoint(source)
    for k, v in trainer.G.state_dict().items():
        assert torch.equal(v, state["model"]["G"][k])
    for k, v in trainer.ema.module.state_dict().items():
        assert torch.equal(v, state["ema"]["G"][k])
    trainer.logger.close()
    wider = tiny_run_config(
        dataset_root, "model.G.base_channels=16", f"train.pretrained_G={source}"
    )
    with pytest.raises(ValueError, match=r"(?s)best\.pt.*shape mismatch: stem\.weight"):
        Trainer(wider, tmp_path / "bad", DistContext())


def test_clipping_is_measured_and_reported(dataset_root, tmp_path):
    cfg = tiny_run_config(
        dataset_root, "model.D.enabled=true", "optim.grad_clip=1e-6", "train.epochs=1"
    )
    train(cfg, out=str(tmp_path / "run"))
    steps = read_jsonl(tmp_path / "run" / "metrics" / "steps.jsonl")
    for s in steps:
        assert s["clip_rate_G"] == 1.0 and s["clip_rate_D"] == 1.0
        assert s["grad_norm_G"] > 1e-6  # the norm before clipping
        assert s["clip_cut_G"] == pytest.approx(1 - 1e-6 / s["grad_norm_G"])


def test_nonfinite_steps_are_skipped_then_training_stops(dataset_root, tmp_path, monkeypatch):
    cfg = tiny_run_config(dataset_root, "train.max_nonfinite_steps=3", "train.epochs=1")
    trainer = Trainer(cfg, tmp_path / "run", DistContext())
    before = {k: v.clone() for k, v in trainer.G.state_dict().items()}
    real_forward = trainer.G.forward
    monkeypatch.setattr(trainer.G, "forward", lambda x: real_forward(x) * float("nan"))
    batches = iter(trainer.train_loader)
    trainer.train_step(next(batches))
    trainer.train_step(next(batches))
    assert trainer.skipped_steps == 2
    assert all(torch.equal(before[k], v) for k, v in trainer.G.state_dict().items())
    with pytest.raises(TrainingError, match="3 non-finite steps in a row"):
        trainer.train_step(next(batches))
    trainer.logger.close()


def test_a_diverging_r_reaches_the_nonfinite_guard(dataset_root, tmp_path):
    """A NaN field (R diverged) is skipped like any non-finite step, not a crash in the warp."""
    cfg = tiny_run_config(dataset_root, "model.R.enabled=true", "model.D.enabled=true")
    trainer = Trainer(cfg, tmp_path / "run", DistContext())
    with torch.no_grad():
        trainer.R.flow.bias.fill_(float("nan"))
    before = {k: v.clone() for k, v in trainer.G.state_dict().items()}
    trainer.train_step(next(iter(trainer.train_loader)))
    assert trainer.skipped_steps == 1
    assert all(torch.equal(before[k], v) for k, v in trainer.G.state_dict().items())
    trainer.logger.close()


def test_fitted_r_trains_g_through_a_fixed_frame(dataset_root, tmp_path, monkeypatch):
    """kind fit: the field is fitted to G's detached output, and has no weights to keep."""
    from medi2i.models import fitted_registration

    seen = []
    real_forward = fitted_registration.FittedRegistration.forward

    def spy(self, moving, fixed, mask=None):
        seen.append((moving.requires_grad, mask is not None))
        return real_forward(self, moving, fixed, mask)

    monkeypatch.setattr(fitted_registration.FittedRegistration, "forward", spy)
    cfg = tiny_run_config(
        dataset_root,
        "model.R.enabled=true",
        "model.R.kind=fit",
        "model.R.center=true",
        "model.D.enabled=true",
    )
    run = tmp_path / "run"
    summary = train(cfg, out=str(run))
    assert summary["steps"] == 6 and summary["skipped_steps"] == 0
    assert len(seen) == 6 and all(s == (False, True) for s in seen)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert set(state["model"]) == set(state["optim"]) == {"G", "D"}
    assert state["r_centring"]["updates"] == 6  # one running-mean update per step
    assert all("field_systematic_px" in s for s in read_jsonl(run / "metrics" / "steps.jsonl"))
    steps = read_jsonl(run / "metrics" / "steps.jsonl")
    assert all("field_max_px" in s and "grad_norm_R" not in s for s in steps)
    assert all(s["w_smooth"] == 0 for s in steps)  # a fitted field is not G's to smooth


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "medi2i", "train", *args]


CLI_TINY = [
    *TINY_NETS,
    "model.G.dropout=0.1",  # uses the torch RNG: resume must restore it
    "model.R.enabled=true",
    "model.R.center=true",  # its running mean must be restored too
    "model.D.enabled=true",
    "data.augment.affine_p=0.5",
    "data.augment.rotate_deg=5",
    "logging.tensorboard=false",
    "eval.test_at_end=false",
]


@pytest.mark.slow
def test_exact_resume_after_sigkill(dataset_root, tmp_path):
    common = [
        f"data.root={dataset_root}",
        *CLI_TINY,
        "train.epochs=3",
        "train.steps_per_epoch=4",
        "train.save_every_steps=2",
        "data.num_workers=1",
    ]
    ref = tmp_path / "ref"
    subprocess.run(_cli("--out", str(ref), *common), check=True, capture_output=True)
    ref_steps = {s["step"]: s for s in read_jsonl(ref / "metrics" / "steps.jsonl")}
    assert len(ref_steps) == 12

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli("--out", str(run), *common), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    steps_file = run / "metrics" / "steps.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill mid-epoch 2, after its mid-epoch checkpoint
        if steps_file.is_file() and len(read_jsonl(steps_file)) >= 7:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    resumed_from = state["step"]
    assert 4 <= resumed_from < 12

    subprocess.run(_cli("--resume", str(run)), check=True, capture_output=True)
    steps = read_jsonl(steps_file)
    assert [s["step"] for s in steps] == list(range(1, 13))  # no duplicates, no gaps
    for s in steps:
        if s["step"] <= resumed_from:
            continue
        for key in ("loss_G", "loss_D", "w_recon", "w_gan", "w_fm", "grad_norm_G"):
            assert s[key] == pytest.approx(ref_steps[s["step"]][key], abs=1e-6, rel=0), (
                s["step"],
                key,
            )
    final = load_checkpoint(run / "checkpoints" / "last.pt")
    ref_final = load_checkpoint(ref / "checkpoints" / "last.pt")
    for k, v in final["model"]["G"].items():
        assert torch.allclose(v, ref_final["model"]["G"][k], atol=1e-6)


@pytest.mark.slow
def test_ddp_two_gloo_processes(dataset_root, tmp_path):
    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29517",
        "-m",
        "medi2i",
        "train",
        "--out",
        str(run),
        f"data.root={dataset_root}",
        *CLI_TINY,
        "train.epochs=2",
        "train.steps_per_epoch=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] == 4  # both ranks took the same 2 x 2 optimiser steps
    steps = read_jsonl(run / "metrics" / "steps.jsonl")
    assert [s["step"] for s in steps] == [1, 2, 3, 4]  # logged once, by rank 0
    assert all(np.isfinite(s["loss_G"]) for s in steps)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


def test_bf16_autocast_and_channels_last_run(dataset_root, tmp_path):
    cfg = tiny_run_config(
        dataset_root,
        "model.R.enabled=true",
        "model.D.enabled=true",
        "train.amp=bf16",
        "train.channels_last=true",
        "train.epochs=1",
        "eval.test_at_end=false",
    )
    summary = train(cfg, out=str(tmp_path / "run"))
    assert summary["skipped_steps"] == 0
    steps = read_jsonl(tmp_path / "run" / "metrics" / "steps.jsonl")
    assert all(np.isfinite(s["loss_G"]) and np.isfinite(s["loss_D"]) for s in steps)


def test_fp16_training_on_the_cpu_is_refused_naming_the_key(dataset_root, tmp_path):
    # the same precision check as predict's --precision, named by the training key
    cfg = tiny_run_config(dataset_root, "train.amp=fp16", "train.device=cpu")
    with pytest.raises(ValueError, match=r"train\.amp fp16 needs a GPU"):
        train(cfg, out=str(tmp_path / "run"))


@pytest.mark.slow
def test_demo_end_to_end_short(tmp_path):
    """The README's main job in miniature: DRR benchmark -> demo config (G+R+D) -> test table."""
    bench = tmp_path / "bench"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "medi2i",
            "data",
            "drr",
            "--out",
            str(bench),
            "--size",
            "48",
            "--count",
            "12",
            "--no-progress",
        ],
        check=True,
        capture_output=True,
    )
    run = tmp_path / "demo"
    demo = Path(__file__).parents[1] / "configs" / "demo.yaml"
    result = subprocess.run(
        _cli(
            "--config",
            str(demo),
            "--out",
            str(run),
            f"data.root={bench}",
            "data.crop_size=32",
            "train.epochs=3",
            "train.steps_per_epoch=8",
            "logging.log_every=1",
            "logging.progress=false",
        ),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test (" in result.stdout and "identity" in result.stdout
    steps = read_jsonl(run / "metrics" / "steps.jsonl")
    first = np.mean([s["w_recon"] for s in steps[:4]])
    last = np.mean([s["w_recon"] for s in steps[-4:]])
    assert last < first  # it learns
    for name in (
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "config.yaml",
        "metrics/epochs.csv",
        "test_metrics.json",
        "samples/epoch_0003.png",
    ):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())


def test_sweep_grid_expansion_and_names():
    from medi2i.training.sweep import expand, parse_grid, run_name

    grid = parse_grid(["loss.gan_weight=2,3", "loss.feat_match_weight=[2, 10.5]"])
    combos = expand(grid)
    assert combos[0] == ["loss.gan_weight=2", "loss.feat_match_weight=2"]
    assert len(combos) == 4
    assert run_name(combos[-1]) == "gan_weight=3_feat_match_weight=10.5"


def test_sweep_trains_each_combination(dataset_root, tmp_path):
    from medi2i.cli import main

    status = main(
        [
            "sweep",
            "--set",
            "loss.gan_weight=1,2",
            "--out",
            str(tmp_path / "sw"),
            "-o",
            f"data.root={dataset_root}",
            *[x for o in TINY_NETS for x in ("-o", o)],
            "-o",
            "data.crop_size=null",
            "-o",
            "model.D.enabled=true",
            "-o",
            "train.epochs=1",
            "-o",
            "train.steps_per_epoch=1",
            "-o",
            "eval.test_at_end=false",
            "-o",
            "logging.tensorboard=false",
            str(Path(__file__).parents[1] / "configs" / "demo.yaml"),
        ]
    )
    assert status == 0
    for name in ("gan_weight=1", "gan_weight=2"):
        cfg = load_config(tmp_path / "sw" / name / "config.yaml")
        assert cfg.loss.gan_weight == float(name.split("=")[1])
        assert (tmp_path / "sw" / name / "checkpoints" / "last.pt").is_file()


# --------------------------------------------------------------------------------------------
# nothing lost: independent checkpoint files, a real fallback, no silent re-use of a folder
# --------------------------------------------------------------------------------------------


def test_best_is_an_independent_copy_and_resume_falls_back_to_it(dataset_root, tmp_path, caplog):
    run = tmp_path / "run"
    train(tiny_run_config(dataset_root, "train.epochs=1"), out=str(run))
    ckpt = run / "checkpoints"
    last, best = ckpt / "last.pt", ckpt / "best.pt"
    assert os.stat(last).st_ino != os.stat(best).st_ino
    best_bytes = best.read_bytes()
    # a kill mid-save leaves a partial temporary file; then last.pt itself gets damaged
    partial = ckpt / ".last.abc123.tmp.pt"
    partial.write_bytes(b"partial")
    last.write_bytes(last.read_bytes()[:1000])
    assert best.read_bytes() == best_bytes  # the damage did not reach best.pt
    with caplog.at_level("WARNING", logger="medi2i"):
        train(resume=str(run), overrides=["train.epochs=2"])
    assert "continuing from best.pt" in caplog.text
    assert not partial.exists()
    assert load_checkpoint(last)["epoch"] == 2


def test_a_folder_with_an_earlier_runs_files_is_not_reused(dataset_root, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").write_text("an earlier run stopped before its first checkpoint\n")
    with pytest.raises(ValueError, match=r"earlier run \(train\.log\).*no checkpoint"):
        train(tiny_run_config(dataset_root), out=str(run))
    # a folder with unrelated files (e.g. a benchmark's notes) is fine
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.json").write_text("{}")
    train(
        tiny_run_config(dataset_root, "train.epochs=1", "train.steps_per_epoch=1"), out=str(other)
    )
    assert (other / "checkpoints" / "last.pt").is_file()


def test_rejected_data_leaves_no_run_folder(tmp_path):
    empty = tmp_path / "no_data"
    empty.mkdir()
    run = tmp_path / "run"
    with pytest.raises(Exception, match=str(empty.name)):
        train(tiny_run_config(empty), out=str(run))
    assert not run.exists()


def test_lung_weight_curriculum_follows_the_epoch_and_survives_a_resume(dataset_root, tmp_path):
    curriculum = ("loss.lung_weight=10", "loss.lung_weight_start=1")
    cfg = tiny_run_config(dataset_root, *curriculum, "loss.lung_weight_ramp_epochs=2")
    run = tmp_path / "run"
    train(
        cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 1})}), out=str(run)
    )
    train(resume=str(run), overrides=["train.epochs=3"])  # epochs 2 and 3 after a stop
    rows = [
        json.loads(line) for line in (run / "metrics" / "epochs.jsonl").read_text().splitlines()
    ]
    # linear from 1 at epoch 0 to 10 at epoch 2, then held: 1, 5.5, 10
    assert [row["lung_weight"] for row in rows] == pytest.approx([1.0, 5.5, 10.0])
    plain = train(tiny_run_config(dataset_root, "train.epochs=1"), out=str(tmp_path / "plain"))
    assert plain["epochs"] == 1
    plain_rows = (tmp_path / "plain" / "metrics" / "epochs.jsonl").read_text().splitlines()
    assert json.loads(plain_rows[0])["lung_weight"] == 10.0  # the config's default, logged


@pytest.mark.slow  # inductor compiles G and D (tens of seconds)
def test_compiled_networks_train_alike_and_save_the_same_files(dataset_root, tmp_path):
    common = ("train.epochs=1", "train.steps_per_epoch=2", "logging.tensorboard=false")
    common += ("eval.sample_count=0", "eval.test_at_end=false", *MODES["G+D"])
    train(tiny_run_config(dataset_root, *common), out=str(tmp_path / "eager"))
    train(tiny_run_config(dataset_root, *common, "train.compile=true"), out=str(tmp_path / "c"))
    eager, compiled = (
        load_checkpoint(tmp_path / name / "checkpoints" / "last.pt") for name in ("eager", "c")
    )
    for net in ("G", "D"):
        assert compiled["model"][net].keys() == eager["model"][net].keys()  # no wrapper prefix
    assert compiled["ema"]["G"].keys() == eager["ema"]["G"].keys()
    rows = [read_jsonl(tmp_path / name / "metrics" / "steps.jsonl") for name in ("eager", "c")]
    for a, b in zip(*rows):
        for key in ("loss_G", "loss_D", "grad_norm_G"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-6), key
