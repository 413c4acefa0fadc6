"""EMA, learning-rate schedules and checkpoints (training utilities)."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch
from torch import nn

from medi2i.config import OptimConfig
from medi2i.run.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    CheckpointManager,
    checkpoint_payload,
    find_nonfinite,
    load_checkpoint,
    save_checkpoint,
)
from medi2i.training.distributed import unwrap_model
from medi2i.training.ema import EMA
from medi2i.training.schedules import build_scheduler, lr_factor
from medi2i.training.state import capture_rng_state, load_pretrained_generator, restore_rng_state


class TinyNet(nn.Module):
    """Conv + BatchNorm (buffers: running stats, an integer counter) + conv."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width)
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(x))))


class Wrapper(nn.Module):
    """Stands in for DistributedDataParallel: the network is at ``.module``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def _net(seed: int = 0, width: int = 4) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(width)


def _train_steps(model: nn.Module, ema: EMA | None, steps: int, first_step: int = 0) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    for i in range(steps):
        x = torch.rand(2, 1, 8, 8, generator=gen)
        loss = (model(x) - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update(model, first_step + i)


def _sd_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------
# EMA
# --------------------------------------------------------------------------------------------


def test_ema_decay_zero_equals_online():
    model = _net()
    ema = EMA(model, decay=0.0)
    _train_steps(model, ema, 3)
    assert _sd_equal(ema.state_dict(), model.state_dict())


def test_ema_one_update_exact_formula():
    model = _net()
    ema = EMA(model, decay=0.75)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    assert ema.update(model, step=0) == 0.75
    online = model.state_dict()
    for name, _ in model.named_parameters():
        expected = 0.75 * start[name] + 0.25 * online[name]
        torch.testing.assert_close(ema.state_dict()[name], expected, rtol=1e-6, atol=1e-7)
    # dyadic toy values: the update is exact
    toy = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        toy.weight.fill_(1.0)
    toy_ema = EMA(toy, decay=0.75)
    with torch.no_grad():
        toy.weight.fill_(3.0)
    toy_ema.update(toy, step=0)
    assert toy_ema.module.weight.item() == 1.5  # 0.75 * 1 + 0.25 * 3


def test_ema_buffers_are_copied_not_averaged():
    model = _net()
    ema = EMA(model, decay=0.9)
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 1, 8, 8) * 5)  # updates BatchNorm running stats
    ema.update(model, step=0)
    assert torch.equal(ema.module.norm.running_mean, model.norm.running_mean)
    assert torch.equal(ema.module.norm.running_var, model.norm.running_var)
    assert ema.module.norm.num_batches_tracked.item() == 1


def test_ema_warmup_ramp_values():
    ema = EMA(nn.Linear(1, 1), decay=0.999, warmup_steps=1000)
    assert ema.current_decay(0) == 0.0
    assert ema.current_decay(1) == pytest.approx(0.999 / 1.999)
    assert ema.current_decay(500) == pytest.approx(0.999 * 500 / (0.999 * 500 + 1.0))
    assert ema.current_decay(1000) == 0.999
    assert ema.current_decay(5000) == 0.999
    # the averaging horizon 1 / (1 - decay) grows linearly from 1 to 1000 steps
    horizons = [1.0 / (1.0 - ema.current_decay(s)) for s in (0, 250, 500, 750, 1000)]
    assert horizons == pytest.approx([1.0, 250.75, 500.5, 750.25, 1000.0])
    values = [ema.current_decay(s) for s in range(1001)]
    assert all(b > a for a, b in itertools.pairwise(values))
    assert EMA(nn.Linear(1, 1), decay=0.99).current_decay(0) == 0.99  # no warm-up
    assert EMA(nn.Linear(1, 1), decay=0.0, warmup_steps=10).current_decay(3) == 0.0
    with pytest.raises(ValueError):
        EMA(nn.Linear(1, 1), decay=1.0)


def test_ema_state_dict_round_trip_and_plain_keys():
    model = _net()
    ema = EMA(model, decay=0.5)
    _train_steps(model, ema, 3)
    state = {k: v.clone() for k, v in ema.state_dict().items()}
    assert state.keys() == model.state_dict().keys()  # loadable into a plain G
    other = EMA(_net(seed=5), decay=0.5)
    assert not _sd_equal(other.state_dict(), state)
    other.load_state_dict(state)
    assert _sd_equal(other.state_dict(), state)
    plain = _net(seed=6)
    plain.load_state_dict(state)


def test_ema_update_through_ddp_like_wrapper():
    model = _net()
    wrapped = Wrapper(model)
    assert unwrap_model(wrapped) is model
    ema = EMA(wrapped, decay=0.0)
    assert ema.state_dict().keys() == model.state_dict().keys()
    _train_steps(wrapped, None, 2)
    ema.update(wrapped, step=0)
    assert _sd_equal(ema.state_dict(), model.state_dict())
    # a network whose sub-module happens to be called "module" is not unwrapped
    holder = nn.Module()
    holder.module = nn.Linear(2, 2)
    holder.extra = nn.Linear(2, 2)
    assert unwrap_model(holder) is holder


def test_ema_layout_mismatch_is_an_error():
    ema = EMA(_net(width=4), decay=0.5)
    with pytest.raises(ValueError, match="does not match the EMA"):
        ema.update(_net(width=3), step=0)


def test_validation_on_ema_leaves_online_weights_bit_identical():
    model = _net()
    ema = EMA(model, decay=0.9)
    _train_steps(model, ema, 5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 1, 8, 8)
    ema.module.eval()
    with torch.no_grad():
        ema_out = ema.module(x)
    assert _sd_equal(model.state_dict(), before)  # online weights untouched
    model.eval()
    with torch.no_grad():
        online_out = model(x)
    assert not torch.allclose(ema_out, online_out)
    assert model.conv.weight.requires_grad and not ema.module.conv.weight.requires_grad


def test_ema_copy_from_resets():
    model = _net()
    ema = EMA(model, decay=0.9)
    fresh = _net(seed=3)
    ema.copy_from(fresh)
    assert _sd_equal(ema.state_dict(), fresh.state_dict())


# --------------------------------------------------------------------------------------------
# schedules
# --------------------------------------------------------------------------------------------


def test_warmup_vs_skip_warmup_constant():
    kw = {"total_steps": 10, "warmup_steps": 4, "schedule": "constant"}
    assert [lr_factor(s, **kw) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert [lr_factor(s, **kw, skip_warmup=True) for s in range(6)] == [1.0] * 6
    assert lr_factor(0, total_steps=10, warmup_steps=0, schedule="constant") == 1.0


def test_cosine_and_linear_decay_values():
    kw = {"total_steps": 10, "warmup_steps": 0, "schedule": "cosine", "min_ratio": 0.1}
    assert lr_factor(0, **kw) == pytest.approx(1.0)
    assert lr_factor(5, **kw) == pytest.approx(0.55)
    assert lr_factor(10, **kw) == pytest.approx(0.1)
    assert lr_factor(25, **kw) == pytest.approx(0.1)  # clamped beyond the end
    kw = {"total_steps": 12, "warmup_steps": 2, "schedule": "linear"}
    assert [lr_factor(s, **kw) for s in (0, 1, 2, 7, 12)] == pytest.approx([0.5, 1, 1, 0.5, 0])
    # skip_warmup: the decay spans the whole run from step 0
    assert lr_factor(0, **kw, skip_warmup=True) == 1.0
    assert lr_factor(6, **kw, skip_warmup=True) == pytest.approx(0.5)
    # cosine with warm-up: continuous at the warm-up's end, min_ratio at total_steps
    kw = {"total_steps": 20, "warmup_steps": 5, "schedule": "cosine", "min_ratio": 0.2}
    assert lr_factor(4, **kw) == 1.0 and lr_factor(5, **kw) == 1.0
    assert lr_factor(20, **kw) == pytest.approx(0.2)
    assert lr_factor(19, **kw) > 0.2


def test_lr_factor_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor(0, total_steps=10, warmup_steps=0, schedule="step")
    with pytest.raises(ValueError):
        lr_factor(-1, total_steps=10, warmup_steps=0, schedule="constant")


def _sched(cfg: OptimConfig, steps_per_epoch: int, epochs: int):
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    return opt, build_scheduler(opt, cfg, steps_per_epoch=steps_per_epoch, epochs=epochs)


def _lrs(opt, sched, n: int) -> list[float]:
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_lambdalr_integration_follows_lr_factor():
    cfg = OptimConfig(warmup_epochs=0.5, schedule="linear", min_lr_ratio=0.0)
    opt, sched = _sched(cfg, steps_per_epoch=4, epochs=3)  # 2 warm-up steps of 12
    lrs = _lrs(opt, sched, 13)
    expected = [
        0.1 * lr_factor(k, total_steps=12, warmup_steps=2, schedule="linear") for k in range(13)
    ]
    assert lrs == pytest.approx(expected)
    assert lrs[:3] == pytest.approx([0.05, 0.1, 0.1])
    assert lrs[7] == pytest.approx(0.05) and lrs[12] == pytest.approx(0.0)


def test_scheduler_skip_warmup_starts_at_full_rate():
    cfg = OptimConfig(warmup_epochs=2.0, skip_warmup=True)
    opt, sched = _sched(cfg, steps_per_epoch=5, epochs=4)
    assert _lrs(opt, sched, 3) == pytest.approx([0.1, 0.1, 0.1])
    cfg = OptimConfig(warmup_epochs=2.0, skip_warmup=False)
    opt, sched = _sched(cfg, steps_per_epoch=5, epochs=4)
    assert _lrs(opt, sched, 3) == pytest.approx([0.01, 0.02, 0.03])


def test_epoch_unit_is_constant_within_an_epoch():
    cfg = OptimConfig(warmup_epochs=0.0, schedule="cosine", schedule_unit="epoch")
    opt, sched = _sched(cfg, steps_per_epoch=5, epochs=4)
    lrs = _lrs(opt, sched, 20)
    for epoch in range(4):
        chunk = lrs[epoch * 5 : (epoch + 1) * 5]
        assert chunk == pytest.approx([chunk[0]] * 5)
        factor = lr_factor(epoch * 5, total_steps=20, warmup_steps=0, schedule="cosine")
        assert chunk[0] == pytest.approx(0.1 * factor)
    assert lrs[0] > lrs[5] > lrs[10] > lrs[15]
    # warm-up still ramps per step in epoch mode
    cfg = OptimConfig(warmup_epochs=1.0, schedule="cosine", schedule_unit="epoch")
    opt, sched = _sched(cfg, steps_per_epoch=4, epochs=3)
    assert _lrs(opt, sched, 4) == pytest.approx([0.025, 0.05, 0.075, 0.1])


def test_scheduler_state_round_trip():
    cfg = OptimConfig(warmup_epochs=1.0, schedule="cosine")
    opt, sched = _sched(cfg, steps_per_epoch=4, epochs=3)
    _lrs(opt, sched, 6)
    state, opt_state = sched.state_dict(), opt.state_dict()
    opt2, sched2 = _sched(cfg, steps_per_epoch=4, epochs=3)
    opt2.load_state_dict(opt_state)
    sched2.load_state_dict(state)
    assert _lrs(opt2, sched2, 6) == pytest.approx(_lrs(opt, sched, 6))


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------


def _draws() -> tuple:
    return (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())


def _state(epoch: int = 1, model: nn.Module | None = None) -> dict:
    model = model or _net()
    ema = EMA(model, decay=0.9)
    return checkpoint_payload(
        epoch=epoch,
        step=10 * epoch,
        model={"G": model.state_dict()},
        ema={"G": ema.state_dict()},
        rng=capture_rng_state(),
        config={"train": {"epochs": 3}},
        best={"metric": "psnr_mask", "value": 20.5, "epoch": epoch},
    )


def test_save_load_round_trip_and_rng_restore(tmp_path, caplog):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    state = _state(epoch=2)
    expected = _draws()
    path = save_checkpoint(tmp_path / "ck.pt", state)
    _draws()  # move every generator on
    with caplog.at_level("WARNING"):
        loaded = load_checkpoint(path)
    assert not caplog.records  # loaded with the safe weights_only=True loader
    assert loaded["format"] == CHECKPOINT_FORMAT
    assert loaded["epoch"] == 2 and loaded["best"]["value"] == 20.5
    assert {"medi2i_version", "torch_version", "created", "git_commit"} <= loaded.keys()
    assert loaded["created"].endswith("+00:00")
    assert _sd_equal(loaded["model"]["G"], state["model"]["G"])
    restore_rng_state(loaded["rng"])
    assert _draws() == expected
    # the cached Gaussian is part of numpy's state
    restore_rng_state(loaded["rng"])
    random.random(), np.random.rand(3), torch.rand(3)
    g1 = np.random.randn()
    restore_rng_state(loaded["rng"])
    _draws()
    assert np.random.randn() == g1


def test_save_adds_metadata_when_missing(tmp_path):
    path = save_checkpoint(tmp_path / "a.pt", {"epoch": 0, "model": {"G": _net().state_dict()}})
    assert load_checkpoint(path)["format"] == CHECKPOINT_FORMAT
    with pytest.raises(ValueError, match="format"):
        save_checkpoint(tmp_path / "b.pt", {"format": "other"})


def test_atomic_save_under_simulated_crash(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path)
    manager.save(_state(epoch=1), epoch=1, is_best=False)
    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as fh:  # keep only the first half, then "die"
            fh.truncate(fh.seek(0, 2) // 2)
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        manager.save(_state(epoch=2), epoch=2, is_best=True)
    monkeypatch.undo()
    assert load_checkpoint(manager.last_path())["epoch"] == 1
    assert sorted(p.name for p in manager.dir.iterdir()) == ["last.pt"]


def test_a_full_disk_is_named_and_the_previous_checkpoint_kept(tmp_path, monkeypatch):
    import collections

    import medi2i.run.checkpoint as ckpt_mod

    manager = CheckpointManager(tmp_path)
    manager.save(_state(epoch=1), epoch=1, is_best=False)

    def failing_save(obj, f, *args, **kwargs):  # what torch's writer raises on a full disk
        raise RuntimeError("basic_ios::clear: iostream error")

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(ckpt_mod.shutil, "disk_usage", lambda _p: usage(10**9, 10**9, 4096))
    with pytest.raises(CheckpointError, match=r"no space left.*previous last\.pt is intact"):
        manager.save(_state(epoch=2), epoch=2, is_best=False)
    monkeypatch.setattr(ckpt_mod.shutil, "disk_usage", lambda _p: usage(10**12, 0, 10**11))
    with pytest.raises(RuntimeError, match="basic_ios"):  # not a full disk: the error as it is
        manager.save(_state(epoch=2), epoch=2, is_best=False)
    monkeypatch.undo()
    assert load_checkpoint(manager.last_path())["epoch"] == 1
    assert sorted(p.name for p in manager.dir.iterdir()) == ["last.pt"]


def test_load_latest_picks_the_newest_readable_checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path, keep_every=1)
    for epoch in (1, 2, 3):
        manager.save({**_state(epoch), "step": 10 * epoch}, epoch=epoch, is_best=epoch == 1)
    assert manager.load_latest()[0].name == "last.pt"
    manager.last_path().write_bytes(b"damaged")
    manager.epoch_path(3).write_bytes(b"damaged too")
    path, state = manager.load_latest()
    assert path.name == "epoch_0002.pt" and state["step"] == 20
    for p in manager.dir.glob("*.pt"):
        p.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        manager.load_latest()


def test_nonfinite_weights_are_refused(tmp_path):
    model = _net()
    with torch.no_grad():
        model.head.weight[0, 0, 0, 0] = float("nan")
        model.conv.bias[1] = float("inf")
    state = _state(model=model)
    assert find_nonfinite(state) == [
        "model.G.conv.bias",
        "model.G.head.weight",
        "ema.G.conv.bias",
        "ema.G.head.weight",
    ]
    with pytest.raises(ValueError, match=r"non-finite values in model\.G\.conv\.bias"):
        CheckpointManager(tmp_path).save(state, epoch=1, is_best=True)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
    optim_state = {"state": {0: {"exp_avg": torch.tensor([1.0, float("nan")])}}}
    assert find_nonfinite({"optim": {"G": optim_state}}) == ["optim.G.state.0.exp_avg"]


def test_corrupt_truncated_missing_and_foreign_files(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match=r"garbage\.pt"):
        load_checkpoint(garbage)
    good = save_checkpoint(tmp_path / "good.pt", _state())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pt.*corrupt or truncated"):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match=r"not found.*missing\.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match=r"foreign\.pt: not a medi2i checkpoint"):
        load_checkpoint(foreign)
    assert issubclass(CheckpointError, ValueError)


def test_checkpoint_manager_files(tmp_path):
    manager = CheckpointManager(tmp_path / "run", keep_every=2)
    written = {}
    for epoch in range(1, 5):
        written[epoch] = manager.save(_state(epoch), epoch=epoch, is_best=epoch in (1, 3))
    assert [p.name for p in written[1]] == ["last.pt", "best.pt"]
    assert [p.name for p in written[2]] == ["last.pt", "epoch_0002.pt"]
    names = sorted(p.name for p in manager.dir.iterdir())
    assert names == ["best.pt", "epoch_0002.pt", "epoch_0004.pt", "last.pt"]
    assert manager.dir == tmp_path / "run" / "checkpoints"
    assert load_checkpoint(manager.last_path())["epoch"] == 4
    assert load_checkpoint(manager.best_path())["epoch"] == 3
    assert load_checkpoint(manager.epoch_path(2))["epoch"] == 2


def test_pretrained_generator_from_g_only_checkpoint(tmp_path):
    source = _net(seed=1)
    source_ema = EMA(source, decay=0.9)
    _train_steps(source, source_ema, 3)
    assert not _sd_equal(source.state_dict(), source_ema.state_dict())
    path = save_checkpoint(
        tmp_path / "g_only.pt",
        checkpoint_payload(
            epoch=7, step=70, model={"G": source.state_dict()}, ema={"G": source_ema.state_dict()}
        ),
    )
    target = _net(seed=2)
    ema = EMA(target, decay=0.9)
    info = load_pretrained_generator(path, target, ema)
    assert info["source"] == "checkpoint" and info["ema"] == "checkpoint" and info["epoch"] == 7
    assert _sd_equal(target.state_dict(), source.state_dict())
    assert _sd_equal(ema.state_dict(), source_ema.state_dict())
    # no EMA in the file: the EMA starts from the loaded G
    path2 = save_checkpoint(tmp_path / "no_ema.pt", {"model": {"G": source.state_dict()}})
    target2 = _net(seed=2)
    ema2 = EMA(target2, decay=0.9)
    assert load_pretrained_generator(path2, target2, ema2)["ema"] == "copied_from_G"
    assert _sd_equal(ema2.state_dict(), source.state_dict())


def test_pretrained_generator_from_bare_state_dict(tmp_path):
    source = _net(seed=1)
    bare = tmp_path / "bare.pt"
    torch.save(source.state_dict(), bare)
    target = Wrapper(_net(seed=2))
    ema = EMA(target, decay=0.9)
    info = load_pretrained_generator(bare, target, ema)
    assert info == {"path": str(bare), "source": "state_dict", "ema": "copied_from_G"} | {
        "epoch": None,
        "step": None,
    }
    assert _sd_equal(target.module.state_dict(), source.state_dict())
    assert _sd_equal(ema.state_dict(), source.state_dict())
    ddp_style = tmp_path / "ddp.pt"  # keys saved from a DDP-wrapped model
    torch.save(Wrapper(source).state_dict(), ddp_style)
    target2 = _net(seed=3)
    load_pretrained_generator(ddp_style, target2)
    assert _sd_equal(target2.state_dict(), source.state_dict())


def test_pretrained_generator_mismatch_lists_every_problem(tmp_path):
    class Other(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)  # width 8 instead of 4
            self.norm = nn.BatchNorm2d(8)
            self.extra = nn.Linear(2, 2)  # not in TinyNet; TinyNet's head is missing here

    path = tmp_path / "other_run.pt"
    save_checkpoint(path, checkpoint_payload(model={"G": Other().state_dict()}))
    target = _net()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_pretrained_generator(path, target, EMA(target, decay=0.9))
    msg = str(info.value)
    assert "other_run.pt" in msg
    for expected in (
        "missing key: head.weight",
        "missing key: head.bias",
        "unexpected key: extra.weight",
        "unexpected key: extra.bias",
        "shape mismatch: conv.weight: checkpoint (8, 1, 3, 3) vs model (4, 1, 3, 3)",
        "shape mismatch: norm.running_mean: checkpoint (8,) vs model (4,)",
    ):
        assert expected in msg
    assert _sd_equal(target.state_dict(), before)  # nothing loaded
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": [1, 2]}, foreign)
    with pytest.raises(CheckpointError, match=r"foreign\.pt: neither"):
        load_pretrained_generator(foreign, _net())
    with pytest.raises(CheckpointError, match=r"model\.G"):
        load_pretrained_generator(save_checkpoint(tmp_path / "r.pt", {"model": {}}), _net())


def test_checkpoint_payload_metadata():
    payload = checkpoint_payload(epoch=3)
    assert payload["format"] == CHECKPOINT_FORMAT and payload["epoch"] == 3
    assert payload["torch_version"] == torch.__version__
    commit = payload["git_commit"]
    assert commit is None or (len(commit) == 40 and int(commit, 16) >= 0)
    with pytest.raises(ValueError):
        checkpoint_payload(format="something-else")


def test_untrusted_load_refuses_pickled_objects(tmp_path):
    own = save_checkpoint(tmp_path / "own.pt", _state())
    assert load_checkpoint(own, trusted=False)["epoch"] == 1  # our files load safely
    odd = tmp_path / "odd.pt"
    torch.save(checkpoint_payload(extra=OptimConfig()), odd)  # an arbitrary Python object
    with pytest.raises(CheckpointError, match=r"odd\.pt: cannot be loaded safely"):
        load_checkpoint(odd, trusted=False)
    assert isinstance(load_checkpoint(odd)["extra"], OptimConfig)  # trusted: full unpickling


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_and_ema_on_gpu():
    torch.cuda.manual_seed_all(4)
    state = capture_rng_state()
    first = torch.rand(3, device="cuda").tolist()
    restore_rng_state(state)
    assert torch.rand(3, device="cuda").tolist() == first
    model = _net().cuda()
    ema = EMA(model, decay=0.5)
    assert ema.module.conv.weight.is_cuda
    ema.update(model, step=0)


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_lung_weight_at_ramps_from_start_to_final(shape):
    from medi2i.config import LossConfig
    from medi2i.training.schedules import lung_weight_at

    cfg = LossConfig(
        lung_weight=9.0, lung_weight_start=1.0, lung_weight_ramp_epochs=4, lung_weight_ramp=shape
    )
    got = [lung_weight_at(cfg, epoch) for epoch in range(7)]
    t = np.minimum(np.arange(7) / 4, 1.0)
    if shape == "cosine":
        t = 0.5 - 0.5 * np.cos(np.pi * t)
    assert got == pytest.approx(1.0 + 8.0 * t)
    assert got[0] == 1.0 and got[4:] == [9.0, 9.0, 9.0]
    assert lung_weight_at(LossConfig(lung_weight=7.0), 3) == 7.0  # no curriculum: constant
