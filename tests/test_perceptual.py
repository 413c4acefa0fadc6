"""The perceptual term: torchvision's VGG layout and files, its input normalisation, the loss and
its gradients, clear errors for unusable files, a previous run's D as the feature network, and
its place in G's loss and in a training run (off by default, loading nothing)."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medi2i.config import Config, ConfigError, LossConfig, config_to_dict, load_config
from medi2i.losses import (
    GeneratorLoss,
    PerceptualLoss,
    PerceptualWeightsError,
    build_perceptual_loss,
    load_discriminator_features,
    load_vgg_features,
)
from medi2i.models import build_discriminator
from medi2i.models.feature_nets import (
    DiscriminatorFeatures,
    VGGFeatures,
    imagenet_input,
    vgg_layer_indices,
)
from medi2i.run.checkpoint import checkpoint_payload, load_checkpoint, save_checkpoint
from medi2i.run.layout import RunLayout
from medi2i.run.scalars import PART_NAMES
from medi2i.training.distributed import DistContext
from medi2i.training.trainer import Trainer, train
from tinydata import MODES, tiny_config, tiny_run_config, write_pairs

#: torchvision's ``features`` indices of the convolutions (vgg.py, ``make_layers``).
TORCHVISION_CONVS = {
    "vgg16": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
    "vgg19": [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34],
}
#: Parameters of torchvision's ``features`` (the models' totals minus their classifiers).
TORCHVISION_FEATURE_PARAMETERS = {"vgg16": 14_714_688, "vgg19": 20_024_384}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def small_vgg_file(path: Path, network: str = "vgg16", deepest: str = "relu2_2", seed=0) -> Path:
    """A randomly initialised VGG ``features`` stack up to ``deepest``, saved as torchvision
    names its keys (with a classifier key, which loading ignores)."""
    torch.manual_seed(seed)
    sd = OrderedDict(VGGFeatures(network, [deepest]).state_dict())
    sd["classifier.0.weight"] = torch.zeros(4, 3)
    torch.save(sd, path)
    return path


def by_hand_relu1_2(x: torch.Tensor, sd: dict, lo: float, hi: float) -> torch.Tensor:
    """relu1_2 of torchvision's VGG from its state dict, with the documented input mapping."""
    unit = ((x - lo) / (hi - lo)).repeat(1, 3, 1, 1)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    h = F.relu(
        F.conv2d((unit - mean) / std, sd["features.0.weight"], sd["features.0.bias"], padding=1)
    )
    return F.relu(F.conv2d(h, sd["features.2.weight"], sd["features.2.bias"], padding=1))


# --------------------------------------------------------------------------------------------
# VGG: layout, files, input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("network", ["vgg16", "vgg19"])
def test_vgg_layout_is_torchvisions(network):
    deepest = list(vgg_layer_indices(network))[-1]
    net = VGGFeatures(network, [deepest])
    keys = [
        f"features.{i}.{kind}" for i in TORCHVISION_CONVS[network] for kind in ("weight", "bias")
    ]
    assert list(net.state_dict()) == keys
    assert sum(p.numel() for p in net.parameters()) == TORCHVISION_FEATURE_PARAMETERS[network]
    # the ReLU after each convolution; LPIPS's vgg16 taps are features 3, 8, 15, 22, 29
    indices = vgg_layer_indices(network)
    assert [indices[n] - 1 for n in indices] == TORCHVISION_CONVS[network]
    if network == "vgg16":
        assert [indices[n] for n in ("relu1_2", "relu2_2", "relu3_3", "relu4_3")] == [3, 8, 15, 22]
    else:
        assert [indices[n] for n in ("relu3_4", "relu4_4", "relu5_4")] == [17, 26, 35]
    # only the stack up to the deepest requested layer is built
    assert len(VGGFeatures(network, ["relu1_1", "relu2_2"]).features) == 9
    assert VGGFeatures(network).layers == (
        ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
        if network == "vgg16"
        else ("relu1_2", "relu2_2", "relu3_4", "relu4_4")
    )


def test_imagenet_input_is_the_stated_formula():
    x = torch.tensor([[[[-1.0, 0.0], [0.5, 1.0]]]])  # data range [-1, 1]
    got = imagenet_input(x, (-1.0, 1.0))
    assert got.shape == (1, 3, 2, 2)
    for c in range(3):
        for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):
            unit = (float(x[0, 0, i, j]) + 1.0) / 2.0
            assert got[0, c, i, j].item() == pytest.approx((unit - MEAN[c]) / STD[c], abs=1e-6)
    rgb = torch.rand(1, 3, 2, 2)
    expected = (rgb - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(imagenet_input(rgb, (0.0, 1.0)), expected)
    with pytest.raises(ValueError, match="1 or 3"):
        imagenet_input(torch.zeros(1, 2, 2, 2), (0.0, 1.0))


def test_a_full_vgg16_file_loads_and_gives_the_in_memory_features(tmp_path):
    torch.manual_seed(1)
    ref = VGGFeatures("vgg16", ["relu1_2", "relu5_3"], input_range=(-1.0, 1.0))
    sd = OrderedDict(ref.state_dict())
    sd["classifier.6.bias"] = torch.zeros(1000)  # torchvision's classifier keys are ignored
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(sd, path)
    torch.manual_seed(2)  # the loaded network starts from other random weights
    net = load_vgg_features("vgg16", path, ["relu1_2", "relu5_3"], input_range=(-1.0, 1.0))
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    got, want = net(x), ref(x)
    assert [g.shape for g in got] == [(2, 64, 32, 32), (2, 512, 2, 2)]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    torch.testing.assert_close(got[0], by_hand_relu1_2(x, sd, -1.0, 1.0))
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    net.train()
    assert not net.training  # frozen: stays in evaluation mode


# --------------------------------------------------------------------------------------------
# the loss
# --------------------------------------------------------------------------------------------


@pytest.fixture
def small_loss(tmp_path) -> PerceptualLoss:
    path = small_vgg_file(tmp_path / "vgg16.pth")
    net = load_vgg_features("vgg16", path, ["relu1_2", "relu2_2"], input_range=(0.0, 1.0))
    return PerceptualLoss(net, source=str(path))


def test_loss_is_the_mean_l1_over_layers_with_gradient_to_pred_only(small_loss):
    torch.manual_seed(3)
    target = torch.rand(2, 1, 16, 16).requires_grad_(True)
    assert small_loss(target.detach(), target.detach()).item() == 0.0
    pred = (target.detach() + 0.1 * torch.randn(2, 1, 16, 16)).requires_grad_(True)
    loss = small_loss(pred, target)
    net = small_loss.features
    with torch.no_grad():
        fp, ft = net(pred), net(target)
        expected = ((fp[0] - ft[0]).abs().mean() + (fp[1] - ft[1]).abs().mean()) / 2
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert loss.item() > 0
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert target.grad is None  # the target's features are computed without gradient
    assert all(p.grad is None for p in net.parameters())


def test_loss_is_float32_under_autocast(small_loss):
    torch.manual_seed(4)
    pred, target = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    plain = small_loss(pred, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = small_loss(pred, target)
    assert cast.dtype == torch.float32
    assert cast.item() == plain.item()
    with pytest.raises(ValueError, match="shape"):
        small_loss(pred, torch.rand(1, 1, 8, 8))


def test_generator_loss_adds_the_weighted_term(small_loss):
    torch.manual_seed(5)
    pred, target = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    cfg = LossConfig(perceptual_weight=0.5, perceptual={"weights": "unused-here"})
    total, parts = GeneratorLoss(cfg, data_range=1.0, perceptual=small_loss)(pred, target)
    raw = small_loss(pred, target).item()
    assert parts["perceptual"].item() == pytest.approx(raw)
    assert parts["w_perceptual"].item() == pytest.approx(0.5 * raw)
    assert total.item() == pytest.approx(sum(parts[f"w_{p}"].item() for p in PART_NAMES))
    assert total.item() == pytest.approx(parts["w_recon"].item() + 0.5 * raw)
    assert sum(parts[f"share_{p}"].item() for p in PART_NAMES) == pytest.approx(100.0)
    # off: a constant 0, and the total is the reconstruction's
    total_off, off = GeneratorLoss(data_range=1.0, perceptual=small_loss)(pred, target)
    assert off["w_perceptual"].item() == off["perceptual"].item() == 0.0
    assert total_off.item() == pytest.approx(parts["w_recon"].item())
    with pytest.raises(ValueError, match=r"perceptual_weight=0\.5 needs the perceptual loss"):
        GeneratorLoss(cfg, data_range=1.0)


# --------------------------------------------------------------------------------------------
# clear errors
# --------------------------------------------------------------------------------------------


def test_a_missing_or_unreadable_file_is_named_with_what_was_expected(tmp_path):
    missing = tmp_path / "nowhere" / "vgg16-397923af.pth"
    with pytest.raises(PerceptualWeightsError) as info:
        load_vgg_features("vgg16", missing, ["relu1_2"], input_range=(0.0, 1.0))
    text = str(info.value)
    assert str(missing) in text and "no such file" in text
    assert "vgg16-397923af.pth" in text
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in text
    garbage = tmp_path / "vgg19.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(PerceptualWeightsError, match="cannot be read") as info:
        load_vgg_features("vgg19", garbage, ["relu1_2"], input_range=(0.0, 1.0))
    assert str(garbage) in str(info.value) and "vgg19-dcbb9e9d.pth" in str(info.value)


def test_a_file_of_another_architecture_is_refused(tmp_path):
    # a VGG19 stack (a convolution at features.16, where VGG16 has a ReLU) given as vgg16
    vgg19 = small_vgg_file(tmp_path / "vgg19.pth", "vgg19", "relu3_4")
    with pytest.raises(PerceptualWeightsError) as info:
        load_vgg_features("vgg16", vgg19, ["relu1_2"], input_range=(0.0, 1.0))
    text = str(info.value)
    assert str(vgg19) in text and "unexpected key: features.16.weight" in text
    assert "does not hold the vgg16 features" in text
    # wrong shapes: a one-channel first convolution
    sd = VGGFeatures("vgg16", ["relu1_2"]).state_dict()
    sd["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    torch.save(sd, tmp_path / "gray.pth")
    with pytest.raises(PerceptualWeightsError, match=r"shape mismatch: features.0.weight"):
        load_vgg_features("vgg16", tmp_path / "gray.pth", ["relu1_2"], input_range=(0.0, 1.0))
    # too shallow for the layers asked: the missing keys are named with their shapes
    shallow = small_vgg_file(tmp_path / "shallow.pth", "vgg16", "relu1_2")
    with pytest.raises(PerceptualWeightsError, match=r"missing key: features.5.weight"):
        load_vgg_features("vgg16", shallow, ["relu2_2"], input_range=(0.0, 1.0))
    # no features at all (e.g. a checkpoint of something else)
    torch.save({"model": {"G": {}}, "epoch": 3}, tmp_path / "other.pt")
    with pytest.raises(PerceptualWeightsError, match=r"no features\.\* key in the file"):
        load_vgg_features("vgg16", tmp_path / "other.pt", ["relu1_2"], input_range=(0.0, 1.0))


def test_unknown_layer_names_list_the_valid_ones(tmp_path):
    path = small_vgg_file(tmp_path / "vgg16.pth")
    with pytest.raises(ValueError, match="relu9_9") as info:
        load_vgg_features("vgg16", path, ["relu1_2", "relu9_9"], input_range=(0.0, 1.0))
    assert "loss.perceptual.layers" in str(info.value)
    assert "relu1_1, relu1_2, relu2_1" in str(info.value) and "relu5_3" in str(info.value)


def test_config_refuses_a_weight_without_weights():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["loss.perceptual_weight=0.5"])
    text = str(info.value)
    assert "perceptual.weights" in text and "vgg16-397923af.pth" in text
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in text
    with pytest.raises(ConfigError, match=r"vgg19-dcbb9e9d\.pth"):
        load_config(None, ["loss.perceptual_weight=1", "loss.perceptual.network=vgg19"])
    with pytest.raises(ConfigError, match="run directory"):
        load_config(None, ["loss.perceptual_weight=1", "loss.perceptual.network=discriminator"])
    with pytest.raises(ConfigError, match="perceptual_weight"):
        load_config(None, ["loss.perceptual_weight=-1"])
    with pytest.raises(ConfigError, match="leave layers null"):
        load_config(
            None, ["loss.perceptual.network=discriminator", "loss.perceptual.layers=[relu1_2]"]
        )
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, ["loss.perceptual.file=x.pth"])
    cfg = load_config(None, []).loss
    assert cfg.perceptual_weight == 0.0 and cfg.perceptual.network == "vgg16"
    assert cfg.perceptual.weights is None and cfg.perceptual.layers is None


def test_weight_zero_loads_nothing(tmp_path):
    cfg = LossConfig(perceptual={"weights": str(tmp_path / "does-not-exist.pth")})
    assert build_perceptual_loss(cfg, input_range=(0.0, 1.0)) is None
    on = LossConfig(perceptual_weight=0.1, perceptual={"weights": str(tmp_path / "no.pth")})
    with pytest.raises(PerceptualWeightsError, match="no such file"):
        build_perceptual_loss(on, input_range=(0.0, 1.0))


# --------------------------------------------------------------------------------------------
# a previous run's D
# --------------------------------------------------------------------------------------------


def _quiet(*overrides: str) -> tuple[str, ...]:
    return (
        "train.epochs=1",
        "train.steps_per_epoch=2",
        "logging.tensorboard=false",
        "eval.sample_count=0",
        "eval.test_at_end=false",
        *overrides,
    )


@pytest.fixture(scope="module")
def d_run(dataset_root, tmp_path_factory) -> Path:
    """A tiny trained G+D run whose D is unconditional (1 epoch x 2 steps)."""
    run = tmp_path_factory.mktemp("gd") / "run"
    cfg = tiny_run_config(dataset_root, *MODES["G+D"], *_quiet("model.D.conditional=no"))
    train(cfg, out=str(run))
    return run


def test_discriminator_features_are_the_runs_trained_d(d_run):
    layout = RunLayout(d_run)
    state = load_checkpoint(layout.best_checkpoint)
    cfg = Config.model_validate(state["config"])  # by hand: the run's own config and D weights
    ref = build_discriminator(cfg.model.D, conditional=False)
    ref.load_state_dict(state["model"]["D"])
    ref.eval()
    assert float(ref.front.gain) != 1.0  # the calibrated detail gain is part of D's state

    torch.manual_seed(6)  # other random weights before loading
    net = load_discriminator_features(d_run)
    assert isinstance(net, DiscriminatorFeatures)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    x = torch.rand(2, 1, 32, 32)
    got = net(x)
    want = [f for _, feats in ref(x) for f in feats]
    assert len(got) == cfg.model.D.num_scales * (cfg.model.D.n_layers + 1) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    # a checkpoint file works as well as the run directory
    by_file = load_discriminator_features(layout.last_checkpoint)
    assert len(by_file(x)) == len(got)


def test_a_run_without_d_or_with_a_conditional_d_is_refused(tmp_path):
    d_only = ["model.R.enabled=false", "model.D.enabled=true", "model.D.n_layers=2"]
    cfg = load_config(None, [*d_only, "model.D.base_channels=8"])
    conditional = build_discriminator(cfg.model.D, conditional=True)  # R off, auto: aligned pairs
    path = save_checkpoint(
        tmp_path / "cond.pt",
        checkpoint_payload(model={"D": conditional.state_dict()}, config=config_to_dict(cfg)),
    )
    with pytest.raises(PerceptualWeightsError, match="its D is conditional") as info:
        load_discriminator_features(path)
    assert str(path) in str(info.value)
    no_d = save_checkpoint(
        tmp_path / "g.pt", checkpoint_payload(model={"G": {}}, config=config_to_dict(cfg), mode="G")
    )
    with pytest.raises(PerceptualWeightsError, match=r"no discriminator weights \(key model.D"):
        load_discriminator_features(no_d)
    with pytest.raises(PerceptualWeightsError, match="no checkpoint found"):
        load_discriminator_features(tmp_path / "empty-run")
    # weights that do not fit the D of the stored config: every problem listed
    wider = load_config(None, [*d_only, "model.D.base_channels=16"])
    sd = build_discriminator(wider.model.D, conditional=False).state_dict()
    cfg.model.D.conditional = "no"
    odd = save_checkpoint(
        tmp_path / "odd.pt", checkpoint_payload(model={"D": sd}, config=config_to_dict(cfg))
    )
    with pytest.raises(PerceptualWeightsError, match="shape mismatch"):
        load_discriminator_features(odd)


def test_a_g_run_trains_with_the_d_of_a_previous_run(dataset_root, d_run, tmp_path):
    cfg = tiny_run_config(
        dataset_root,
        *MODES["G"],
        *_quiet(
            "loss.perceptual_weight=0.5",
            "loss.perceptual.network=discriminator",
            f"loss.perceptual.weights={d_run}",
            "logging.gshare_every=1",
        ),
    )
    run = tmp_path / "run"
    train(cfg, out=str(run))
    layout = RunLayout(run)
    steps = [json.loads(line) for line in layout.steps.read_text().splitlines()]
    assert len(steps) == 2
    for row in steps:
        assert row["w_perceptual"] > 0 and math.isfinite(row["w_perceptual"])
        assert row["w_perceptual"] == pytest.approx(0.5 * row["perceptual"])
        assert row["gnorm_perceptual"] > 0 and row["gshare_perceptual"] > 0
        assert row["loss_G"] == pytest.approx(sum(row[f"w_{p}"] for p in PART_NAMES), rel=1e-5)
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))
    # the frozen network is not saved: the config names its file
    state = load_checkpoint(layout.last_checkpoint)
    assert set(state["model"]) == {"G"} and set(state["optim"]) == {"G"}
    assert state["config"]["loss"]["perceptual"]["weights"] == str(d_run)


# --------------------------------------------------------------------------------------------
# the step compares in the target's frame
# --------------------------------------------------------------------------------------------


def test_the_step_compares_warped_output_and_target(tmp_path, monkeypatch):
    """With R on, the perceptual term gets the image the reconstruction compares, warp(G(x)),
    and the target - not G's unwarped output."""
    root = write_pairs(
        tmp_path / "pairs", {"train": 4, "val": 2}, np.random.default_rng(0), target_shift=2
    )
    weights = small_vgg_file(tmp_path / "vgg16.pth", deepest="relu1_2")
    cfg = tiny_config(
        root,
        "model.R.enabled=true",
        "model.R.kind=fit",
        "model.D.enabled=false",
        "data.pairs=misaligned",
        "loss.perceptual_weight=0.5",
        f"loss.perceptual.weights={weights}",
        "loss.perceptual.layers=[relu1_2]",
        *_quiet(),
    )
    trainer = Trainer(cfg, tmp_path / "run", DistContext())
    seen: dict = {}
    original_terms = trainer.g_loss.weighted_terms

    def spy_terms(pred, target, mask=None, **kwargs):
        seen.update(recon_pred=pred.detach(), target=target.detach())
        return original_terms(pred, target, mask, **kwargs)

    perceptual = trainer.g_loss.perceptual
    original_call = PerceptualLoss.__call__

    def spy_perceptual(pred, target):
        seen.update(pred=pred.detach(), perceptual_target=target.detach())
        return original_call(perceptual, pred, target)

    monkeypatch.setattr(trainer.g_loss, "weighted_terms", spy_terms)
    monkeypatch.setattr(trainer.g_loss, "perceptual", spy_perceptual)
    g_outputs: list[torch.Tensor] = []
    trainer.G.register_forward_hook(lambda _m, _a, out: g_outputs.append(out.detach()))
    trainer.sampler.set_epoch(0, 0)
    batch = next(iter(trainer.train_loader))
    stats = trainer.train_step(batch)
    torch.testing.assert_close(seen["pred"], seen["recon_pred"])
    torch.testing.assert_close(seen["perceptual_target"], batch["target"])
    assert not torch.allclose(seen["pred"], g_outputs[0])  # R moved it into the target's frame
    assert float(stats["w_perceptual"]) > 0


def test_a_resumed_run_loads_the_network_from_its_file_again(dataset_root, tmp_path):
    """The network is not in the checkpoint: a resume reads the file the config names (and
    stops, naming it, when it is gone); the resumed epoch matches an uninterrupted run."""
    weights = small_vgg_file(tmp_path / "vgg16.pth", deepest="relu1_2")
    on = (
        "loss.perceptual_weight=0.5",
        f"loss.perceptual.weights={weights}",
        "loss.perceptual.layers=[relu1_2]",
    )
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train(
        tiny_run_config(dataset_root, *MODES["G"], *_quiet(*on, "train.epochs=2")),
        out=str(straight),
    )
    train(tiny_run_config(dataset_root, *MODES["G"], *_quiet(*on)), out=str(stopped))
    hidden = weights.rename(tmp_path / "elsewhere.pth")
    with pytest.raises(PerceptualWeightsError, match=str(weights)):
        train(resume=str(stopped), overrides=["train.epochs=2"])
    hidden.rename(weights)
    train(resume=str(stopped), overrides=["train.epochs=2"])

    def steps(run: Path) -> list[dict]:
        return [json.loads(line) for line in RunLayout(run).steps.read_text().splitlines()]

    resumed, reference = steps(stopped), steps(straight)
    assert [r["step"] for r in resumed] == [r["step"] for r in reference] == [1, 2, 3, 4]
    for got, want in zip(resumed[2:], reference[2:]):
        assert got["w_perceptual"] > 0
        assert got["w_perceptual"] == pytest.approx(want["w_perceptual"], rel=1e-6)
        assert got["loss_G"] == pytest.approx(want["loss_G"], rel=1e-6)


def test_a_run_with_an_unusable_file_stops_before_training(dataset_root, tmp_path):
    missing = tmp_path / "vgg16-397923af.pth"
    cfg = tiny_run_config(
        dataset_root,
        *MODES["G"],
        *_quiet("loss.perceptual_weight=0.5", f"loss.perceptual.weights={missing}"),
    )
    run = tmp_path / "run"
    with pytest.raises(PerceptualWeightsError, match="no such file"):
        train(cfg, out=str(run))
    assert not run.exists()  # refused before anything ran: no run folder is left
