"""Config loading: the method's keys and defaults, overrides, and clear errors."""

from __future__ import annotations

import copy

import pytest
import yaml

from medi2i.config import (
    Config,
    ConfigError,
    build_config,
    dump_config,
    load_config,
    parse_override,
    save_config,
)


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_user_defaults():
    cfg = load_config()
    assert cfg.loss.lung_weight == 10.0
    assert cfg.loss.gan_weight == 0.05
    assert cfg.loss.feat_match_weight == 0.5
    assert cfg.optim.grad_clip == 5.0
    assert cfg.optim.skip_warmup is False
    assert cfg.train.pretrained_G is None
    assert 0 < cfg.train.ema_decay < 1
    assert cfg.optim.warmup_epochs >= 0


def test_file_and_overrides_are_typed(tmp_path):
    path = write(
        tmp_path / "c.yaml",
        "loss:\n  feat_match_weight: 2.0\noptim:\n  skip_warmup: true\n",
    )
    cfg = load_config(
        path,
        [
            "loss.gan_weight=3",
            "train.pretrained_G=runs/g/best.pt",
            "data.normalization.window=[0, 4095]",
            "data.normalization.mode=fixed",
        ],
    )
    assert cfg.loss.feat_match_weight == 2.0
    assert cfg.optim.skip_warmup is True
    assert cfg.loss.gan_weight == 3.0 and isinstance(cfg.loss.gan_weight, float)
    assert cfg.train.pretrained_G == "runs/g/best.pt"
    assert cfg.data.normalization.window == (0.0, 4095.0)


def test_unknown_key_names_file_line_and_suggestion(tmp_path):
    path = write(tmp_path / "bad.yaml", "loss:\n  lung_weight: 5\n  feat_match_wieght: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "bad.yaml:3" in msg
    assert "loss.feat_match_wieght" in msg
    assert "did you mean 'feat_match_weight'" in msg


def test_unknown_section_suggestion(tmp_path):
    path = write(tmp_path / "bad.yaml", "optimizer:\n  grad_clip: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:1.*'optimizer'.*did you mean 'optim'"):
        load_config(path)


def test_wrong_type_and_range_name_key_value_and_rule(tmp_path):
    path = write(tmp_path / "bad.yaml", "loss:\n  gan_weight: lots\ntrain:\n  epochs: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert len(err.problems) == 2  # all problems at once
    text = str(err)
    assert "bad.yaml:2" in text and "'loss.gan_weight' = 'lots'" in text and "number" in text
    assert "bad.yaml:4" in text and "'train.epochs' = 0" in text and "greater than" in text


def test_literal_choices_listed():
    with pytest.raises(ConfigError, match=r"'lsgan', 'hinge' or 'bce'"):
        load_config(None, ["loss.gan_mode=wgan"])


def test_data_train_target_and_pairs():
    cfg = load_config()
    assert cfg.data.train_target == "target" and cfg.data.pairs == "auto"
    cfg = load_config(None, ["data.train_target=aligned", "data.pairs=misaligned"])
    assert cfg.data.train_target == "aligned" and cfg.data.pairs == "misaligned"
    with pytest.raises(ConfigError, match=r"'data.train_target' = 'truth'.*'target' or 'aligned'"):
        load_config(None, ["data.train_target=truth"])
    with pytest.raises(ConfigError, match=r"'data.pairs' = 'maybe'.*'auto', 'aligned' or 'misal"):
        load_config(None, ["data.pairs=maybe"])


def test_override_errors_name_the_override():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["loss.gan_weigth=2"])
    assert "command line 'loss.gan_weigth=2'" in str(info.value)
    assert "did you mean 'gan_weight'" in str(info.value)
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        parse_override("loss.gan_weight")


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="needs window"):
        load_config(None, ["data.normalization.mode=fixed"])
    with pytest.raises(ConfigError, match=r"\[0, 1\] or \[-1, 1\]"):
        load_config(None, ["data.normalization.output_range=[0, 2]"])


def test_invalid_yaml_and_missing_file(tmp_path):
    path = write(tmp_path / "broken.yaml", "loss: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_base_inheritance_and_origin(tmp_path):
    write(tmp_path / "base.yaml", "loss:\n  feat_match_weight: 10.0\n  gan_weight: 1.0\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\nloss:\n  feat_match_weight: 2.0\n")
    cfg = load_config(child)
    assert cfg.loss.feat_match_weight == 2.0 and cfg.loss.gan_weight == 1.0
    write(tmp_path / "base2.yaml", "loss:\n  gan_wieght: 1.0\n")
    child2 = write(tmp_path / "child2.yaml", "base: base2.yaml\n")
    with pytest.raises(ConfigError, match=r"base2.yaml:2"):
        load_config(child2)
    write(tmp_path / "loop.yaml", "base: loop.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "loop.yaml")


def test_resolved_config_round_trip(tmp_path):
    cfg = load_config(None, ["loss.gan_weight=2.5", "model.D.enabled=true"])
    out = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(out)
    assert again == cfg
    assert yaml.safe_load(dump_config(cfg))["loss"]["gan_weight"] == 2.5


def test_every_shipped_preset_is_valid():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))
    assert configs, "no presets shipped in configs/"
    for path in configs:
        assert isinstance(load_config(path), Config), path


def test_yaml_booleans_are_read_as_the_words_they_spell(tmp_path):
    # YAML 1.1 reads bare off/yes/no as booleans: the fields whose values are these words accept
    # them, in a file and as overrides, and still refuse a boolean that names no value
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  amp: off\nmodel:\n  D:\n    conditional: no\n")
    cfg = load_config(path)
    assert (cfg.train.amp, cfg.model.D.conditional) == ("off", "no")
    cfg = load_config(path, ["train.amp=off", "model.D.conditional=yes"])
    assert (cfg.train.amp, cfg.model.D.conditional) == ("off", "yes")
    with pytest.raises(ConfigError, match=r"train\.amp"):
        load_config(path, ["train.amp=true"])


def test_build_config_leaves_the_callers_mapping_as_it_was():
    """A checkpoint's stored config is read again after a resume's overrides: never modified."""
    data = {"train": {"epochs": 2, "ema_decay": 0.99}, "model": {"D": {"enabled": True}}}
    snapshot = copy.deepcopy(data)
    cfg = build_config(data, ["train.epochs=4", "model.D.enabled=false"])
    assert cfg.train.epochs == 4 and not cfg.model.D.enabled
    assert data == snapshot
    assert build_config(data).train.epochs == 2
