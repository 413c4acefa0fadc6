"""Training phases (``train.phases``): the config's rules, the plan, a network that has not
joined takes no part, a joining network's optimiser and schedule start cleanly, every row logs
exactly its phase's keys, and a run stopped mid-phase resumes in that phase, step for step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medi2i.config import ConfigError
from medi2i.evaluation.plots import learning_rate_figure, phase_starts, validation_figure
from medi2i.evaluation.runs import load_run
from medi2i.run.checkpoint import load_checkpoint
from medi2i.run.layout import RunLayout
from medi2i.run.scalars import GRADIENT_SHARES, R1_SCALARS, LoggedScalars
from medi2i.training.phases import active_epochs, phase_announcement, phase_at, plan_phases
from medi2i.training.step import TrainStep
from medi2i.training.trainer import train
from tinydata import MODES, tiny_config, tiny_run_config

#: G alone for an epoch, then the learnt R joins, then D (with R1 every second D step).
THREE_PHASES = "train.phases=[{networks: [G], epochs: 1}, {networks: [G, R], epochs: 1}, " + (
    "{networks: [G, R, D]}]"
)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _phased(root: Path, *overrides: str):
    return tiny_run_config(
        root,
        *MODES["G+R+D"],
        THREE_PHASES,
        "train.epochs=3",
        "train.steps_per_epoch=2",
        "train.checkpoint_every=1",
        "optim.warmup_epochs=1",
        "logging.gshare_every=1",
        "logging.tensorboard=false",
        "eval.sample_count=0",
        "eval.test_at_end=false",
        *overrides,
    )


# --------------------------------------------------------------------------------------------
# the config and the plan
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phases", "extra", "expected"),
    [
        ("[{networks: [R], epochs: 1}, {networks: [G, R, D]}]", (), "G trains in every phase"),
        ("[{networks: [G, R]}, {networks: [G, R, D]}]", (), "phase 1 needs its length"),
        ("[{networks: [G], epochs: 1, share: 0.5}, {networks: [G, R, D]}]", (), "one of them"),
        ("[{networks: [G, R], epochs: 1}, {networks: [G, R, D], epochs: 2}]", (), "last phase"),
        ("[{networks: [G, R, D], epochs: 1}, {networks: [G, R, D, G]}]", (), "listed twice"),
        ("[{networks: [G, D], epochs: 1}, {networks: [G, R]}]", (), "networks only join"),
        ("[{networks: [G, R], epochs: 3}, {networks: [G, R, D]}]", (), "phase 2 would get no"),
        ("[{networks: [G, R], epochs: 1}, {networks: [G, R]}]", (), "D never joins"),
        ("[]", (), "empty"),
    ],
)
def test_phases_that_cannot_run_are_refused_with_the_reason(tmp_path, phases, extra, expected):
    with pytest.raises(ConfigError, match=expected):
        tiny_config(tmp_path, *MODES["G+R+D"], *extra, "train.epochs=3", f"train.phases={phases}")


def test_the_plan_covers_the_run_and_names_each_epochs_networks(tmp_path):
    cfg = tiny_config(tmp_path, *MODES["G+R+D"], "train.epochs=5", THREE_PHASES)
    phases = plan_phases(cfg)
    assert [(p.number, p.start, p.end, p.networks) for p in phases] == [
        (1, 0, 1, ("G",)),
        (2, 1, 2, ("G", "R")),
        (3, 2, 5, ("G", "R", "D")),
    ]
    assert [phase_at(phases, e).number for e in range(7)] == [1, 2, 3, 3, 3, 3, 3]
    assert [active_epochs(phases, n, 5) for n in ("G", "R", "D")] == [5, 4, 3]
    assert phases[2].joining(phases[1]) == ("D",)
    assert phases[1].describe(3, 5) == "phase 2/3 (epochs 2-2): G+R"
    assert [phase_announcement(phases, e, 5) for e in range(4)] == [
        "phase 1/3 (epochs 1-1): G",
        "phase 2/3 (epochs 2-2): G+R (R joining)",
        "phase 3/3 (epochs 3-5): G+R+D (D joining)",
        None,
    ]
    # the order a phase lists its networks in does not matter
    shuffled = tiny_config(
        tmp_path, *MODES["G+R+D"], "train.phases=[{networks: [D, G, R]}]", "train.epochs=2"
    )
    assert plan_phases(shuffled)[0].networks == ("G", "R", "D")
    plain = plan_phases(tiny_config(tmp_path, *MODES["G+D"], "train.epochs=4"))
    assert [(p.start, p.end, p.networks) for p in plain] == [(0, 4, ("G", "D"))]
    # a network the model turns off is listed but does not train; phases left alike merge
    ablated = tiny_config(tmp_path, *MODES["G+D"], "train.epochs=5", THREE_PHASES)
    assert [(p.number, p.start, p.end, p.networks) for p in plan_phases(ablated)] == [
        (1, 0, 2, ("G",)),
        (2, 2, 5, ("G", "D")),
    ]
    g_only = tiny_config(tmp_path, *MODES["G"], "train.epochs=5", THREE_PHASES)
    assert [(p.start, p.end, p.networks) for p in plan_phases(g_only)] == [(0, 5, ("G",))]


def test_shares_of_the_run_keep_the_schedule_s_shape_at_any_length(tmp_path):
    share = "train.phases=[{networks: [G, R], share: 0.75}, {networks: [G, R, D]}]"
    for epochs, join in ((8, 6), (4, 3), (3, 2), (40, 30)):
        # 0.75 of the run, to the nearest whole epoch (halves up: 2.25 -> 2)
        cfg = tiny_config(tmp_path, *MODES["G+R+D"], f"train.epochs={epochs}", share)
        assert [(p.start, p.end) for p in plan_phases(cfg)] == [(0, join), (join, epochs)]
    # a run too short for a phase skips it: 0.75 of 2 epochs rounds to 2 (1.5 -> 2), of 1 to 1
    for epochs in (1, 2):
        cfg = tiny_config(tmp_path, *MODES["G+R+D"], f"train.epochs={epochs}", share)
        phases = plan_phases(cfg)
        assert [(p.start, p.end, p.networks) for p in phases] == [(0, epochs, ("G", "R"))]
        assert active_epochs(phases, "D", epochs) == 0
    mixed = "train.phases=[{networks: [G], epochs: 1}, {networks: [G, R], share: 0.5}, " + (
        "{networks: [G, R, D]}]"
    )
    cfg = tiny_config(tmp_path, *MODES["G+R+D"], "train.epochs=5", mixed)
    assert cfg.train.phase_starts() == [0, 1, 4]  # 1 + 2.5 = 3.5 -> 4


def test_a_run_with_shares_is_not_resumed_at_another_length(dataset_root, tmp_path):
    cfg = tiny_run_config(
        dataset_root,
        *MODES["G+D"],
        "train.phases=[{networks: [G], share: 0.5}, {networks: [G, D]}]",
        "train.steps_per_epoch=1",
        "logging.tensorboard=false",
        "eval.sample_count=0",
        "eval.test_at_end=false",
    )
    train(cfg, out=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="shares of the run"):
        train(resume=str(tmp_path / "run"), overrides=["train.epochs=4"])
    train(resume=str(tmp_path / "run"), overrides=["train.epochs=2"])  # its own length: fine


# --------------------------------------------------------------------------------------------
# a phased run
# --------------------------------------------------------------------------------------------


def test_a_phased_run_trains_each_network_from_its_phase_on(dataset_root, tmp_path, capsys):
    run = tmp_path / "run"
    train(_phased(dataset_root), out=str(run))
    layout = RunLayout(run)
    printed = capsys.readouterr().out
    assert "phase 2/3 (epochs 2-2): G+R (R joining)" in printed
    assert "phase 3/3 (epochs 3-3): G+R+D (D joining)" in printed

    # every row holds exactly the keys of its phase's setup
    setups = {
        1: LoggedScalars(),
        2: LoggedScalars(r=True),
        3: LoggedScalars(r=True, d=True),
    }
    epochs = _rows(layout.epochs)
    assert [row["phase"] for row in epochs] == [1, 2, 3]
    for row in _rows(layout.steps):
        phase = (row["step"] - 1) // 2 + 1
        optional = {*GRADIENT_SHARES, *(R1_SCALARS if phase == 3 else ())}
        assert set(setups[phase].step_row()) <= set(row) <= {*setups[phase].step_row(), *optional}
    assert "val_D_acc" not in epochs[1] and "val_D_acc" in epochs[2]

    # R and D do not change before they join; each one's schedule counts its own steps
    def state(epoch: int) -> dict:
        return load_checkpoint(layout.checkpoints / f"epoch_{epoch:04d}.pt")

    first, second, last = state(1), state(2), state(3)
    for name in ("R", "D"):
        joined = {"R": second, "D": last}[name]
        before = {"R": first, "D": second}[name]
        for key, value in first["model"][name].items():
            assert torch.equal(value, before["model"][name][key]), (name, key)
        assert any(
            not torch.equal(value, joined["model"][name][key])
            for key, value in first["model"][name].items()
            if value.is_floating_point()
        ), name
        assert not before["optim"][name]["state"], name  # no Adam moments before the first step
    assert [last["sched"][n]["last_epoch"] for n in ("G", "R", "D")] == [6, 4, 2]
    assert last["d_step"] == 2
    # a joining network warms up from its own first step: D's first step ran at half its rate
    d_rows = [row for row in _rows(layout.steps) if "lr_D" in row]
    assert [row["step"] for row in d_rows] == [5, 6]
    lr_d = _phased(dataset_root).optim.D.lr
    assert d_rows[0]["lr_D"] == pytest.approx(lr_d)  # logged after the step: the next one's rate

    # the compare report's curves mark where each network joined
    record = load_run(run)
    assert phase_starts(record) == [1.0, 2.0]
    for figure in (validation_figure([record]), learning_rate_figure([record])):
        verticals = {
            line.get_xdata()[0]
            for ax in figure.axes
            for line in ax.get_lines()
            if len(set(line.get_xdata())) == 1 and len(line.get_xdata()) == 2
        }
        assert verticals == {1.0, 2.0}
        assert "a network joins" in figure.texts[0].get_text()


def test_a_phase_without_a_network_is_the_run_without_it(dataset_root, tmp_path):
    """G+R+D whose first epoch is G+R trains that epoch exactly as G+R does."""
    common = ("train.epochs=2", "train.steps_per_epoch=2", "logging.tensorboard=false")
    common += ("eval.sample_count=0", "eval.test_at_end=false")
    phased = tiny_run_config(
        dataset_root,
        *MODES["G+R+D"],
        "train.phases=[{networks: [G, R], epochs: 1}, {networks: [G, R, D]}]",
        *common,
    )
    plain = tiny_run_config(dataset_root, *MODES["G+R"], *common)
    train(phased, out=str(tmp_path / "phased"))
    train(plain, out=str(tmp_path / "plain"))
    a = _rows(RunLayout(tmp_path / "phased").steps)[:2]
    b = _rows(RunLayout(tmp_path / "plain").steps)[:2]
    for row_a, row_b in zip(a, b):
        for key in ("loss_G", "w_recon", "grad_norm_G", "grad_norm_R", "field_max_px"):
            assert row_a[key] == pytest.approx(row_b[key], rel=1e-6, abs=1e-9), key


def test_a_run_stopped_mid_phase_resumes_in_it_step_for_step(dataset_root, tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    train(_phased(dataset_root), out=str(ref))

    run = tmp_path / "stopped"
    original = TrainStep.train_step

    def interrupted(self, batch):
        if self.global_step == 3:  # the second step of phase 2 (G+R)
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(TrainStep, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_phased(dataset_root), out=str(run))
    monkeypatch.setattr(TrainStep, "train_step", original)
    assert load_checkpoint(RunLayout(run).last_checkpoint)["step"] == 3
    train(resume=str(run))

    steps, ref_steps = _rows(RunLayout(run).steps), _rows(RunLayout(ref).steps)
    assert [row["step"] for row in steps] == list(range(1, 7))
    for row, ref_row in zip(steps, ref_steps):
        assert set(row) - {"time"} == set(ref_row) - {"time"}, row["step"]  # same phase's keys
        for key in ("loss_G", "w_recon", "grad_norm_G"):
            assert row[key] == pytest.approx(ref_row[key], abs=1e-6, rel=0), (row["step"], key)
    final, ref_final = (load_checkpoint(RunLayout(p).last_checkpoint) for p in (run, ref))
    for name in ("G", "R", "D"):
        for key, value in ref_final["model"][name].items():
            assert torch.allclose(final["model"][name][key], value, atol=1e-6), (name, key)
