"""Training diagnostics: sync-free running means, run logs (JSONL/CSV/TensorBoard), epoch line,
sample grids."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
import torch

from medi2i.training import run_logger
from medi2i.training.epoch_line import epoch_summary_line
from medi2i.training.run_logger import RunLogger
from medi2i.training.running_means import RunningMeans
from medi2i.training.samples import sample_grid

# ---- RunningMeans ------------------------------------------------------------------------------


def test_running_means_keys_in_some_steps_only():
    means = RunningMeans()
    means.add({"a": torch.tensor(1.0), "b": torch.tensor(10.0)})
    means.add({"a": torch.tensor(3.0)})
    means.add({"a": torch.tensor(5.0, dtype=torch.float64), "c": 2.5})
    means.add({"b": torch.tensor(20.0, dtype=torch.bfloat16), "c": 3})
    assert means.counts() == {"a": 3, "b": 2, "c": 2}
    assert means.means() == pytest.approx({"a": 3.0, "b": 15.0, "c": 2.75})
    assert list(means.means()) == ["a", "b", "c"]
    means.reset()
    assert means.means() == {} and len(means) == 0


def test_running_means_does_not_alias_or_keep_graph():
    means = RunningMeans()
    w = torch.tensor(2.0, requires_grad=True)
    value = w * 1.5
    means.add({"x": value})
    means.add({"x": value})
    assert value.item() == 3.0  # the caller's tensor is untouched
    assert not means._sums["x"].requires_grad
    assert means.means() == {"x": 3.0}


def test_running_means_add_never_syncs(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("host sync during RunningMeans.add")

    means = RunningMeans()
    steps = [{"loss": torch.tensor(float(i)), "D_real": torch.tensor(0.5)} for i in range(4)]
    for name in ("item", "tolist", "numpy", "cpu", "__float__", "__bool__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for parts in steps:
        means.add(parts)
    monkeypatch.undo()
    assert means.means() == pytest.approx({"loss": 1.5, "D_real": 0.5})


def test_running_means_add_works_on_meta_device():
    means = RunningMeans()
    for _ in range(3):
        means.add({"loss": torch.ones((), device="meta")})
    assert means._sums["loss"].device.type == "meta"
    assert means.counts() == {"loss": 3}


def test_running_means_one_transfer_for_all_keys(monkeypatch):
    means = RunningMeans()
    means.add({f"k{i}": torch.tensor(float(i)) for i in range(20)})
    calls = []
    original = torch.Tensor.tolist

    def counting_tolist(self):
        calls.append(tuple(self.shape))
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
    result = means.means()
    assert calls == [(20,)]
    assert result == {f"k{i}": float(i) for i in range(20)}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_running_means_add_no_cuda_sync():
    means = RunningMeans()
    values = {"a": torch.tensor(1.0, device="cuda"), "b": torch.tensor(2.0, device="cuda")}
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            means.add(values)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert means.means() == pytest.approx({"a": 1.0, "b": 2.0})


def test_running_means_rejects_bad_values():
    means = RunningMeans()
    with pytest.raises(ValueError, match="one-element"):
        means.add({"x": torch.zeros(3)})
    with pytest.raises(TypeError, match="tensor or a number"):
        means.add({"x": "1.0"})


# ---- RunLogger ---------------------------------------------------------------------------------


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _read_csv(path):
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_run_logger_files(tmp_path):
    with RunLogger(tmp_path, tensorboard=False) as log:
        log.log_step(1, 0, {"loss_G": 0.5, "D_real": 0.7})
        # steps.jsonl is flushed at every step: readable while the run goes on.
        assert _read_jsonl(tmp_path / "metrics" / "steps.jsonl")[0]["loss_G"] == 0.5
        log.log_step(2, 0, {"loss_G": float("nan")})
        log.log_epoch(0, {"train_loss_G": 0.6})
        header, rows = _read_csv(tmp_path / "metrics" / "epochs.csv")
        assert header == ["epoch", "time", "train_loss_G"]
        log.log_epoch(1, {"train_loss_G": 0.4, "val_psnr": 30.5, "best_metric": "psnr_mask"})

    steps = _read_jsonl(tmp_path / "metrics" / "steps.jsonl")
    assert [s["step"] for s in steps] == [1, 2]
    assert steps[0]["epoch"] == 0 and steps[0]["D_real"] == 0.7 and "time" in steps[0]
    assert steps[1]["loss_G"] is None  # non-finite -> null (strict JSON)

    epochs = _read_jsonl(tmp_path / "metrics" / "epochs.jsonl")
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert epochs[1]["val_psnr"] == 30.5 and epochs[1]["best_metric"] == "psnr_mask"

    header, rows = _read_csv(tmp_path / "metrics" / "epochs.csv")
    assert header == ["epoch", "time", "train_loss_G", "val_psnr", "best_metric"]
    assert rows[0]["val_psnr"] == "" and float(rows[0]["train_loss_G"]) == 0.6
    assert float(rows[1]["val_psnr"]) == 30.5 and rows[1]["best_metric"] == "psnr_mask"
    assert sorted(p.name for p in (tmp_path / "metrics").iterdir()) == [
        "epochs.csv",
        "epochs.jsonl",
        "steps.jsonl",
    ]


def test_run_logger_resume_replaces_epochs_and_purges_steps(tmp_path):
    with RunLogger(tmp_path, tensorboard=False) as log:
        for step in range(1, 7):
            log.log_step(step, step // 3, {"loss": float(step)})
        log.log_epoch(0, {"a": 1.0})
        log.log_epoch(1, {"a": 2.0})
    # A kill mid-write leaves a torn last line.
    with (tmp_path / "metrics" / "steps.jsonl").open("a") as f:
        f.write('{"step": 7, "ep')
    with RunLogger(tmp_path, tensorboard=False, purge_step=4) as log:
        log.log_step(4, 1, {"loss": 40.0})
        log.log_epoch(1, {"a": 20.0, "b": 1.0})
    steps = _read_jsonl(tmp_path / "metrics" / "steps.jsonl")
    assert [(s["step"], s["loss"]) for s in steps] == [(1, 1), (2, 2), (3, 3), (4, 40)]
    epochs = _read_jsonl(tmp_path / "metrics" / "epochs.jsonl")
    assert [(e["epoch"], e["a"]) for e in epochs] == [(0, 1.0), (1, 20.0)]
    header, _ = _read_csv(tmp_path / "metrics" / "epochs.csv")
    assert header == ["epoch", "time", "a", "b"]


def test_run_logger_tensorboard_tags(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rgb = np.zeros((8, 12, 3), dtype=np.uint8)
    with RunLogger(tmp_path) as log:
        log.log_step(1, 0, {"loss_G": 0.5, "D_fake": 0.25})
        log.log_step(2, 0, {"loss_G": 0.4})
        log.log_epoch(0, {"val_psnr": 30.0, "train_loss_G": 0.45, "lr_G": 1e-4, "best": "x"})
        log.log_images("samples/val", rgb, 2, save_png=tmp_path / "samples" / "e0.png")
    assert (tmp_path / "samples" / "e0.png").is_file()
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {
        "train_step/loss_G",
        "train_step/D_fake",
        "val/psnr",
        "train/loss_G",
        "epoch/lr_G",
    } <= tags
    assert not any("best" in t for t in tags)
    assert [(e.step, e.value) for e in acc.Scalars("train_step/loss_G")] == [
        (1, pytest.approx(0.5)),
        (2, pytest.approx(0.4)),
    ]
    assert acc.Scalars("val/psnr")[0].value == pytest.approx(30.0)
    assert "samples/val" in acc.Tags()["images"]


def test_run_logger_disabled_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    log = RunLogger(run_dir, enabled=False)
    log.log_step(1, 0, {"loss": 1.0})
    log.log_epoch(0, {"loss": 1.0})
    log.log_images("x", np.zeros((4, 4, 3), np.uint8), 1, save_png=run_dir / "x.png")
    log.close()
    assert not run_dir.exists()


def test_run_logger_tensorboard_import_failure_warns_once(tmp_path, monkeypatch, caplog):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "torch.utils.tensorboard":
            raise ImportError("no tensorboard here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(run_logger, "_tb_warned", False)
    with caplog.at_level(logging.WARNING, logger="medi2i.training.run_logger"):
        for name in ("a", "b"):
            with RunLogger(tmp_path / name) as log:
                log.log_step(1, 0, {"x": 1.0})
    assert sum("TensorBoard unavailable" in r.message for r in caplog.records) == 1
    assert (tmp_path / "b" / "metrics" / "steps.jsonl").is_file()
    assert not (tmp_path / "a" / "tensorboard").exists()


def test_run_logger_rejects_reserved_keys_and_use_after_close(tmp_path):
    log = RunLogger(tmp_path, tensorboard=False)
    with pytest.raises(ValueError, match="reserved"):
        log.log_step(1, 0, {"step": 3.0})
    with pytest.raises(ValueError, match="reserved"):
        log.log_epoch(1, {"epoch": 3.0})
    with pytest.raises(ValueError, match="uint8"):
        log.log_images("x", np.zeros((4, 4), np.float32), 1)
    log.close()
    log.close()
    with pytest.raises(RuntimeError, match="closed"):
        log.log_step(1, 0, {"x": 1.0})


# ---- epoch_summary_line ------------------------------------------------------------------------

FULL = {
    "loss_G": 0.532,
    "share_recon": 61.2,
    "share_gan": 14.1,
    "share_fm": 24.7,
    "share_smooth": 0.0,
    "D_real": 0.71,
    "D_fake": 0.32,
    "D_acc": 0.83,
    "grad_norm_G": 3.1,
    "clip_rate_G": 0.12,
    "grad_norm_D": 28.4,
    "clip_rate_D": 0.88,
    "val_psnr": 31.2,
    "val_psnr_mask": 32.0,
    "val_ssim": 0.941,
    "val_ssim_mask": 0.95,
    "best_metric": "psnr_mask",
    "best_value": 32.0,
    "best_epoch": 3,
    "images_per_s": 12.5,
}


def test_epoch_summary_line_full():
    line = epoch_summary_line(3, 10, FULL, seconds=41.2)
    assert "\n" not in line
    assert line == (
        "epoch 3/10 | 41s 12.5 img/s | G 0.532 (value recon 61% gan 14% fm 25%) | "
        "D_real 0.710 D_fake 0.320 acc 0.830 | gradG 3.10 clipG 12% gradD 28.4 clipD 88% | "
        "val psnr 31.2 (lung 32.0) ssim 0.941 (lung 0.950) | best psnr_mask 32.0@3"
    )


def test_epoch_summary_line_g_only():
    scalars = {
        "loss_G": 0.61,
        "share_recon": 100.0,
        "share_gan": 0.0,
        "share_fm": 0.0,
        "grad_norm_G": 2.0,
        "clip_rate_G": 0.0,
        "val_psnr_mask": 28.123,
    }
    line = epoch_summary_line(1, 2, scalars, seconds=125)
    assert line == (
        "epoch 1/2 | 2m05s | G 0.610 (value recon 100%) | gradG 2.00 clipG 0% | val psnr lung 28.1"
    )
    assert "D_real" not in line and "best" not in line
    assert epoch_summary_line(1, 1, {}, seconds=0) == "epoch 1/1 | 0s"
    assert "G nan" in epoch_summary_line(1, 1, {"loss_G": float("nan")}, seconds=1)


# ---- sample_grid -------------------------------------------------------------------------------


def test_sample_grid_shape_dtype_and_black_error_column():
    n, h, w = 6, 24, 20
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, h, w, generator=gen)
    y = torch.rand(n, 1, h, w, generator=gen)
    mask = torch.zeros(n, 1, h, w, dtype=torch.bool)
    mask[..., 5:15, 5:10] = True
    grid = sample_grid(x, y.clone(), y, mask, max_rows=4)
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    pad, label = 2, 14
    assert grid.shape == (label + pad + pad + 4 * (h + pad), pad + 5 * (w + pad), 3)

    def tile(row, col):
        top = label + pad + pad + row * (h + pad)
        left = pad + col * (w + pad)
        return grid[top : top + h, left : left + w]

    for row in range(4):
        assert tile(row, 3).max() == 0  # perfect output: error column is black
    np.testing.assert_array_equal(tile(0, 1)[..., 0], np.round(y[0, 0].numpy() * 255))
    lung = tile(0, 4).astype(int)
    assert (lung[5:15, 5:10, 0] >= lung[5:15, 5:10, 1]).all()  # tinted red inside the mask
    np.testing.assert_array_equal(lung[0:5], tile(0, 1)[0:5])  # untouched outside


def test_sample_grid_error_visible_value_range_and_dtypes():
    x = torch.zeros(1, 1, 8, 8, dtype=torch.bfloat16) - 1
    y = torch.zeros(1, 1, 8, 8, dtype=torch.float16)
    out = y + 0.1  # 0.05 of the [-1, 1] range, x4 -> 0.2 -> 51
    grid = sample_grid(x, out, y, None, value_range=(-1.0, 1.0))
    assert grid.shape[1] == 2 + 4 * (8 + 2)
    err = grid[18:26, 2 + 3 * 10 : 2 + 3 * 10 + 8]
    assert abs(int(err[0, 0, 0]) - 51) <= 1
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        sample_grid(torch.zeros(1, 3, 8, 8), out, y, None)
    with pytest.raises(ValueError, match="same"):
        sample_grid(x, out[..., :4], y, None)


def test_epoch_summary_line_prefers_gradient_shares():
    # D at chance: the GAN term holds most of the loss value but pulls little on G's output;
    # the line must show what drives G (the gradient shares), labelled as such.
    scalars = {
        "loss_G": 0.5,
        **{"share_recon": 30.0, "share_gan": 54.0, "share_fm": 16.0},
        **{"gshare_recon": 84.0, "gshare_gan": 3.0, "gshare_fm": 13.0, "gshare_smooth": 0.0},
    }
    line = epoch_summary_line(1, 1, scalars, seconds=1)
    assert "G 0.500 (grad recon 84% gan 3% fm 13%)" in line
    assert "54%" not in line
