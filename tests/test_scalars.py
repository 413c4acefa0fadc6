"""One vocabulary of logged scalars: a real run of each mode writes exactly the keys
:mod:`medi2i.run.scalars` declares for it, readers never spell a ``train_``/``val_`` key by hand,
and a reader that needs a key no row has says which run, file and key."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest

from medi2i.evaluation.runs import MissingScalarError, load_run
from medi2i.run.layout import RunLayout
from medi2i.run.scalars import (
    GRADIENT_SHARES,
    R1_SCALARS,
    LoggedScalars,
    epoch_key,
    lr_key,
    train_key,
    train_name,
    val_key,
    val_name,
)
from medi2i.training.trainer import train
from medi2i.training.validation import VAL_METRICS
from tinydata import MODES, tiny_run_config

REPO = Path(__file__).resolve().parents[1]

#: Each mode with the setup it declares and the overrides that make every declared key appear:
#: centred fields (G+R), two scales of D (G+D), R1 (G+R+D, from MODES).
SETUPS: dict[str, tuple[LoggedScalars, tuple[str, ...]]] = {
    "G": (LoggedScalars(), ()),
    "G+R": (LoggedScalars(r=True, centred=True), ("model.R.center=true",)),
    "G+D": (LoggedScalars(d=True, d_scales=2), ("model.D.num_scales=2",)),
    "G+R+D": (LoggedScalars(r=True, d=True), ()),
}

VAL_KEYS = {val_key(f"{m}{suffix}") for m in VAL_METRICS for suffix in ("", "_mask")}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("mode", list(SETUPS))
def test_a_run_writes_the_keys_its_mode_declares(dataset_root, tmp_path, mode):
    declared, extra = SETUPS[mode]
    cfg = tiny_run_config(
        dataset_root,
        *MODES[mode],
        *extra,
        "train.steps_per_epoch=2",
        "logging.gshare_every=1",  # every step measures the gradient shares
        "logging.tensorboard=false",
        "eval.sample_count=0",
        "eval.test_at_end=false",
    )
    run = tmp_path / "run"
    train(cfg, out=str(run))
    layout = RunLayout(run)
    r1 = R1_SCALARS if cfg.loss.r1_weight > 0 else ()

    steps = _rows(layout.steps)
    assert len(steps) == 4
    for row in steps:
        missing = set(declared.step_row()) - set(row)
        assert not missing, f"step {row['step']} lacks {sorted(missing)}"
    written = {k for row in steps for k in row}
    expected = {*declared.step_row(), *GRADIENT_SHARES, *r1}
    assert written == expected, (sorted(written - expected), sorted(expected - written))

    epochs = _rows(layout.epochs)
    assert len(epochs) == 2
    for row in epochs:
        missing = {*declared.epoch_row(), *VAL_KEYS} - set(row)
        assert not missing, f"epoch {row['epoch']} lacks {sorted(missing)}"
    written = {k for row in epochs for k in row}
    expected = {*declared.epoch_row(), *VAL_KEYS, *(train_key(k) for k in (*GRADIENT_SHARES, *r1))}
    assert written == expected, (sorted(written - expected), sorted(expected - written))
    header = layout.epochs_csv.read_text().splitlines()[0].split(",")
    assert header == list(dict.fromkeys(k for row in epochs for k in row))

    # the readers find every step scalar under its epoch-log name
    record = load_run(run)
    for name in (*declared.step_scalars(), *(lr_key(n) for n in declared.networks)):
        x, y = record.require_series(epoch_key(name))
        assert x.tolist() == [1.0, 2.0] and np.isfinite(y).all(), name


def test_declarations_follow_the_setup():
    g = LoggedScalars()
    assert g.networks == ("G",) and "clip_rate_G" in g.step_scalars()
    assert "clip_rate_G" not in LoggedScalars(clipped=False).step_scalars()
    assert LoggedScalars(r=True, r_learnt=False).networks == ("G",)
    fitted = LoggedScalars(r=True, r_learnt=False).step_scalars()
    assert "field_max_px" in fitted and "grad_norm_R" not in fitted
    gd = LoggedScalars(d=True, d_scales=3)
    assert {"D_real_s2", "D_fake_s2", "D_acc_s2"} <= set(gd.step_scalars())
    assert "val_D_gap" in gd.epoch_row() and "val_D_gap" not in gd.epoch_row(validated=False)
    assert epoch_key("lr_D") == "lr_D" and epoch_key("loss_D") == "train_loss_D"
    assert train_name("train_D_real") == "D_real" and train_name("val_psnr") is None
    assert val_name("val_psnr") == "psnr" and val_name("train_x") is None
    for keys in (g.step_row(), gd.step_row(), gd.epoch_row()):
        assert len(set(keys)) == len(keys)


# --------------------------------------------------------------------------------------------
# readers spell no logged key by hand
# --------------------------------------------------------------------------------------------

_KEY_LIKE = re.compile(r"(train|val)_\w*")

#: Strings of the ``train_``/``val_`` form in the readers that name no logged scalar.
NOT_SCALARS = {
    "train_target": "data.train_target, the config key, and the setup's evidence",
    "val_dropped": "a fact of the unstable-training rule, read by its wording",
}


def _hand_spelt(source: str, filename: str = "<source>") -> list[str]:
    """``train_...``/``val_...`` string literals (f-string parts included) in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        value = node.value if isinstance(node, ast.Constant) else None
        if isinstance(value, str) and _KEY_LIKE.fullmatch(value) and value not in NOT_SCALARS:
            found.append(f"{filename}:{node.lineno}: {value!r}")
    return found


def _reader_files() -> list[Path]:
    return sorted(
        [
            *(REPO / "src" / "medi2i" / "evaluation").rglob("*.py"),
            *(REPO / "benchmarks").glob("*.py"),
        ]
    )


def test_readers_spell_no_logged_key_by_hand():
    files = _reader_files()
    assert len(files) > 20 and any(p.name == "bench_ablation.py" for p in files)
    found = []
    for path in files:
        found += _hand_spelt(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    assert not found, "use medi2i.run.scalars (train_key, val_key, ...): " + "; ".join(found)


def test_the_spelling_check_sees_literals_prefixes_and_f_strings():
    source = (
        'run.series("val_psnr_mask")\n'
        'row.get(f"train_{name}")\n'
        'x = "train_" + key\n'
        '"""A docstring naming train_D_real is prose."""\n'
        'cfg("data.train_target")\n'
        'pairs["train_target"]\n'
    )
    assert [hit.split(": ", 1)[1] for hit in _hand_spelt(source)] == [
        "'val_psnr_mask'",
        "'train_'",
        "'train_'",
    ]


# --------------------------------------------------------------------------------------------
# a key a reader needs
# --------------------------------------------------------------------------------------------


def _synthetic_run(path: Path) -> Path:
    metrics = path / "metrics"
    metrics.mkdir(parents=True)
    rows = [
        {"epoch": 1, "train_loss_G": 0.5, "val_psnr_mask": 30.0, "train_D_real": None},
        {"epoch": 2, "train_loss_G": 0.4, "val_psnr_mask": 31.0},
    ]
    (metrics / "epochs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (metrics / "steps.jsonl").write_text(json.dumps({"step": 1, "loss_G": 0.5}) + "\n")
    return path


def test_require_series_names_the_run_the_file_and_the_key(tmp_path):
    run = load_run(_synthetic_run(tmp_path / "gd-run"))
    x, y = run.require_series("val_psnr_mask")
    assert x.tolist() == [1.0, 2.0] and y.tolist() == [30.0, 31.0]
    # a key written as null is logged (not finite): the tolerant reading decides what it means
    x, y = run.require_series("train_D_real")
    assert x.tolist() == [1.0] and np.isnan(y).all()
    with pytest.raises(MissingScalarError) as err:
        run.require_series("train_D_fake")
    message = str(err.value)
    assert "gd-run" in message and "metrics/epochs.jsonl" in message
    assert "'train_D_fake'" in message and "2 rows" in message
    with pytest.raises(MissingScalarError, match=r"metrics/steps\.jsonl has the key 'D_real'"):
        run.require_series("D_real", source="steps")
    # optional keys keep the tolerant reading
    assert run.series("train_D_fake")[1].size == 0 and not run.has_key("train_D_fake")
    assert isinstance(err.value, ValueError)  # the CLI reports it as one line
