"""The registration-aware GAN step: every position-wise loss in the target's frame, gradient
shares of G's loss terms, D conditioning from the pairs' alignment, and a safe EMA."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medi2i.config import LossConfig, load_config
from medi2i.losses import GeneratorLoss, feature_matching_loss, gradient_shares
from medi2i.models import build_discriminator
from medi2i.models.discriminator import resolve_d_conditional
from medi2i.models.registration import warp
from medi2i.training.distributed import DistContext
from medi2i.training.ema import EMA, resolve_warmup_steps
from medi2i.training.trainer import Trainer
from tinydata import tiny_config, write_pairs


def smooth_field(n: int, size: int, max_px: float, seed: int) -> torch.Tensor:
    """A smooth random displacement (N, 2, H, W) in pixels, at most about ``max_px``."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, 2, 4, 4), generator=g) * 2 - 1
    field = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic")
    return field * max_px / field.abs().amax().clamp_min(1e-6)


def textured(n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand((n, 1, size // 4, size // 4), generator=g)
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear")


# --------------------------------------------------------------------------------------------
# feature matching compares images in the same frame
# --------------------------------------------------------------------------------------------


def test_feature_matching_in_the_target_frame_does_not_charge_a_perfect_generator():
    """A perfect G (output = aligned truth) whose output R warps exactly onto the misaligned
    target pays no FM in the target's frame, but does pay FM against its unwarped output -
    a pull towards reproducing the misalignment."""
    torch.manual_seed(0)
    truth = textured(2, 48, seed=1)
    field = smooth_field(2, 48, 3.0, seed=2)
    target = warp(truth, field)  # the misaligned target
    d_cfg = load_config(None, ["model.D.base_channels=8", "model.D.n_layers=2"]).model.D
    d = build_discriminator(d_cfg, conditional=False).eval()  # fixed spectral-norm vectors
    real, unwarped, in_frame = d(target), d(truth), d(warp(truth, field))
    assert feature_matching_loss(real, in_frame).item() < 1e-6
    assert feature_matching_loss(real, unwarped).item() > 1e-4

    loss = GeneratorLoss(LossConfig(gan_weight=0.0, feat_match_weight=1.0), data_range=1.0)
    _, parts = loss(
        warp(truth, field),
        target,
        fake_outputs=unwarped,
        real_outputs=real,
        fm_outputs=in_frame,
    )
    assert parts["fm"].item() < 1e-6  # FM used the in-frame outputs, not the GAN's
    _, parts_default = loss(warp(truth, field), target, fake_outputs=unwarped, real_outputs=real)
    assert parts_default["fm"].item() > 1e-4  # without fm_outputs FM falls back to fake_outputs


@pytest.fixture(scope="module")
def misaligned_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pairs")
    return write_pairs(
        root, {"train": 4, "val": 2}, np.random.default_rng(0), target_shift=2, aligned=True
    )


def make_trainer(root: Path, tmp_path: Path, *overrides: str) -> Trainer:
    cfg = tiny_config(
        root,
        "model.R.enabled=true",
        "model.D.enabled=true",
        "train.epochs=1",
        "train.steps_per_epoch=2",
        "logging.tensorboard=false",
        "eval.test_at_end=false",
        "logging.gshare_every=1",
        *overrides,
    )
    return Trainer(cfg, tmp_path / "run", DistContext())


def first_batch(trainer: Trainer) -> dict:
    trainer.sampler.set_epoch(0, 0)
    return next(iter(trainer.train_loader))


def test_train_step_compares_in_the_target_frame(misaligned_root, tmp_path, monkeypatch):
    """With R on: FM's fake features come from warp(G(x)), the GAN term's from G(x), and the
    lung mask weighting the reconstruction is warped by R's (detached) field."""
    trainer = make_trainer(misaligned_root, tmp_path)
    seen: dict = {}
    original_terms = trainer.g_loss.weighted_terms

    def spy_terms(pred, target, mask=None, **kwargs):
        seen.update(pred=pred.detach(), mask=mask.detach(), field=kwargs["field"].detach())
        seen.update(fm=kwargs["fm_outputs"], fake=kwargs["fake_outputs"])
        return original_terms(pred, target, mask, **kwargs)

    monkeypatch.setattr(trainer.g_loss, "weighted_terms", spy_terms)
    d_inputs: list[torch.Tensor] = []
    d_net = trainer.D
    d_net.register_forward_pre_hook(lambda _m, args: d_inputs.append(args[0].detach()))
    g_outputs: list[torch.Tensor] = []
    trainer.G.register_forward_hook(lambda _m, _a, out: g_outputs.append(out.detach()))

    batch = first_batch(trainer)
    trainer.train_step(batch)
    n = batch["input"].shape[0]
    y_hat = g_outputs[0]
    g_step_input = d_inputs[-1]  # the G step's call: cat([G(x), warp(G(x))])
    assert g_step_input.shape[0] == 2 * n
    torch.testing.assert_close(g_step_input[:n], y_hat)
    torch.testing.assert_close(g_step_input[n:], seen["pred"])
    torch.testing.assert_close(seen["pred"], warp(y_hat, seen["field"]))
    # the mask is in the target's frame, like the prediction it weights
    torch.testing.assert_close(seen["mask"], warp(batch["mask"], seen["field"]))
    assert seen["fm"] is not None and seen["fm"] is not seen["fake"]


def test_d_in_the_target_frame_judges_the_warped_output_with_the_input(misaligned_root, tmp_path):
    """model.D.frame: target - D's fakes (D step and G step alike) are warp(G(x)), the image the
    reconstruction compares, and auto conditioning pairs them with the input: real and fake
    pairs then share the targets' misalignment."""
    trainer = make_trainer(misaligned_root, tmp_path, "model.D.frame=target")
    assert trainer.d_conditional and trainer.d_in_target_frame
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    trainer.D.register_forward_pre_hook(
        lambda _m, args: calls.append((args[0].detach(), args[1].detach()))
    )
    g_outputs: list[torch.Tensor] = []
    trainer.G.register_forward_hook(lambda _m, _a, out: g_outputs.append(out.detach()))
    fields: list[torch.Tensor] = []
    trainer.R.register_forward_hook(lambda _m, _a, out: fields.append(out.detach()))
    batch = first_batch(trainer)
    trainer.train_step(batch)
    n = batch["input"].shape[0]
    assert trainer.r_centring is None  # the field R returned is the one warped with
    pred = warp(g_outputs[0], fields[0])
    (d_images, d_cond), (g_images, g_cond) = calls
    assert d_images.shape[0] == 2 * n  # [target, warp(G(x))]: no unwarped output
    torch.testing.assert_close(d_images[:n], batch["target"])
    torch.testing.assert_close(d_images[n:], pred, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(d_cond, torch.cat([batch["input"]] * 2))
    # the G step scores only warp(G(x)); the target's scores are the D step's
    torch.testing.assert_close(g_images, pred, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g_cond, batch["input"])


@pytest.mark.parametrize("frame", ["output", "target"])
def test_g_step_scores_the_target_with_the_d_step_s_weights(misaligned_root, tmp_path, frame):
    """D sees the target once per step: the G step reuses the D step's scores of it, and its
    own call on G's output uses the same spectrally normalised weights (no second power
    iteration), so the real and fake scores G's loss compares come from one D."""
    trainer = make_trainer(misaligned_root, tmp_path, f"model.D.frame={frame}")
    batch = first_batch(trainer)
    seen: dict = {}
    original_terms = trainer.g_loss.weighted_terms

    def spy_terms(pred, target, mask=None, **kwargs):
        seen["calls"] = list(images_seen)  # the step's own calls of D so far
        # D as it stands at this point of the step (after the D step's call, before any update)
        d_now = trainer.D.eval()
        with torch.no_grad():
            cond = batch["input"] if trainer.d_conditional else None
            seen["real_now"] = d_now(target, cond)
            seen["fake_now"] = d_now(pred if frame == "target" else g_outputs[0], cond)
        trainer.D.train()
        seen.update(real=kwargs["real_outputs"], fake=kwargs["fake_outputs"])
        return original_terms(pred, target, mask, **kwargs)

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(trainer.g_loss, "weighted_terms", spy_terms)
    g_outputs: list[torch.Tensor] = []
    trainer.G.register_forward_hook(lambda _m, _a, out: g_outputs.append(out.detach()))
    images_seen: list[int] = []
    trainer.D.register_forward_pre_hook(lambda _m, args: images_seen.append(args[0].shape[0]))
    try:
        trainer.train_step(batch)
    finally:
        monkeypatch.undo()
    n = batch["input"].shape[0]
    # D step: target + fake; G step: G(x) and warp(G(x)) (one image with D in the target frame)
    assert seen["calls"] == ([2 * n, 2 * n] if frame == "output" else [2 * n, n])
    for (logits, feats), (logits_now, feats_now) in zip(seen["real"], seen["real_now"]):
        assert not logits.requires_grad
        torch.testing.assert_close(logits, logits_now, atol=1e-6, rtol=1e-5)
        for f, f_now in zip(feats, feats_now):
            torch.testing.assert_close(f, f_now, atol=1e-6, rtol=1e-5)
    for (logits, _), (logits_now, _) in zip(seen["fake"], seen["fake_now"]):
        torch.testing.assert_close(logits.detach(), logits_now, atol=1e-5, rtol=1e-4)
    assert trainer.D.training and all(p.requires_grad for p in trainer.D.parameters())


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_d_in_the_target_frame_does_not_train_a_learnt_r(misaligned_root, tmp_path):
    """The GAN and FM terms reach G through the warped image, never R: R's job is to
    register, and a field that distorted G's output to fool D would be a failure."""
    trainer = make_trainer(
        misaligned_root,
        tmp_path,
        "model.D.frame=target",
        "model.R.kind=net",
        "loss.recon_weight=0",
        "loss.smooth_weight=0",
        "logging.gshare_every=0",
    )
    for opt in trainer.optimizers.values():
        opt.zero_grad(set_to_none=True)
    captured: dict = {}
    original = trainer.optimizers["R"].step

    def spy_step(*args, **kwargs):
        captured["grads"] = [
            p.grad for g in trainer.optimizers["R"].param_groups for p in g["params"]
        ]
        return original(*args, **kwargs)

    trainer.optimizers["R"].step = spy_step
    stats = trainer.train_step(first_batch(trainer))
    assert float(stats["w_gan"]) != 0.0 and float(stats["w_fm"]) != 0.0
    assert captured["grads"], "R's optimiser did not step"
    assert all(g is None or float(g.abs().max()) == 0.0 for g in captured["grads"])
    g_grads = [p.grad for p in trainer.G.parameters() if p.grad is not None]
    assert g_grads and any(float(g.abs().max()) > 0 for g in g_grads)


def test_auto_conditioning_follows_the_frame_d_judges():
    base = ["model.R.enabled=true", "model.D.enabled=true"]
    output = load_config(None, base).model
    target = load_config(None, [*base, "model.D.frame=target"]).model
    assert not resolve_d_conditional(output, pairs_misaligned=True)
    assert resolve_d_conditional(target, pairs_misaligned=True)
    no_r = load_config(None, ["model.D.enabled=true", "model.D.frame=target"]).model
    assert not resolve_d_conditional(no_r, pairs_misaligned=True)  # no R: no target frame


def test_train_step_logs_gradient_shares(misaligned_root, tmp_path):
    trainer = make_trainer(misaligned_root, tmp_path)
    stats = trainer.train_step(first_batch(trainer))
    names = ("recon", "gan", "fm", "smooth")
    shares = [float(stats[f"gshare_{n}"]) for n in names]
    assert sum(shares) == pytest.approx(100.0, abs=1e-3)
    # R starts at the identity (a zero field), where the smoothness term has no gradient yet
    assert all(float(stats[f"gnorm_{n}"]) > 0 for n in ("recon", "gan", "fm"))
    # every `gshare_every` steps only
    trainer.cfg.logging.gshare_every = 2
    stats = trainer.train_step(first_batch(trainer))  # global step 1: not measured
    assert "gshare_recon" not in stats


def test_gradient_shares_match_analytic_norms():
    out = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4).requires_grad_(True)
    terms = {
        "recon": 3.0 * out.sum(),  # gradient 3 everywhere: norm 3 * sqrt(16) = 12
        "gan": out.square().sum(),  # gradient 2 * out
        "fm": torch.zeros(()),  # off: a constant
    }
    got = gradient_shares(terms, out)
    expected_gan = 2.0 * out.detach().norm().item()
    assert got["gnorm_recon"].item() == pytest.approx(12.0, rel=1e-6)
    assert got["gnorm_gan"].item() == pytest.approx(expected_gan, rel=1e-6)
    assert got["gnorm_fm"].item() == 0.0
    total = 12.0 + expected_gan
    assert got["gshare_recon"].item() == pytest.approx(100 * 12.0 / total, rel=1e-6)
    # the graphs survive for the real backward pass
    (terms["recon"] + terms["gan"]).backward()
    assert out.grad is not None


# --------------------------------------------------------------------------------------------
# D's conditioning follows the pairs' alignment
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("r_on", "misaligned", "expected"),
    [(False, False, True), (False, True, False), (True, False, False), (True, True, False)],
)
def test_auto_conditioning_depends_on_misaligned_pairs(r_on, misaligned, expected):
    model = load_config(None, [f"model.R.enabled={str(r_on).lower()}"]).model
    assert resolve_d_conditional(model, pairs_misaligned=misaligned) is expected


def test_trainer_makes_d_unconditional_on_misaligned_pairs_without_r(misaligned_root, tmp_path):
    # the folder ships aligned targets, so its targets are the misaligned ones
    trainer = make_trainer(misaligned_root, tmp_path, "model.R.enabled=false")
    assert trainer.pairs_misaligned and not trainer.d_conditional
    aligned = make_trainer(misaligned_root, tmp_path, "model.R.enabled=false", "data.pairs=aligned")
    assert aligned.d_conditional


# --------------------------------------------------------------------------------------------
# EMA
# --------------------------------------------------------------------------------------------


def test_default_ema_keeps_nothing_of_the_random_initialisation():
    cfg = load_config(None, [])
    warmup = resolve_warmup_steps(cfg.train.ema_decay, cfg.train.ema_warmup_steps, pretrained=False)
    assert warmup == round(1 / (1 - cfg.train.ema_decay))
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(net.weight, 0.0)  # "random" initialisation = 0
    ema = EMA(net, cfg.train.ema_decay, warmup)
    torch.nn.init.constant_(net.weight, 1.0)  # trained weights = 1 from the first step on
    for step in range(1200):  # ten epochs of the benchmark at batch 4
        ema.update(net, step)
    # without a warm-up 0.999**1200 = 30% of the initial weights would remain
    assert ema.module.weight.item() == pytest.approx(1.0, abs=1e-6)
    assert abs(0.999**1200 - 0.30) < 0.01


def test_pretrained_ema_is_continued_not_overwritten():
    warmup = resolve_warmup_steps(0.99, 1000, pretrained=True)
    assert warmup == 0
    net = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(net, 0.99, warmup)
    torch.nn.init.constant_(ema.module.weight, 5.0)  # the loaded EMA
    torch.nn.init.constant_(net.weight, 7.0)  # the loaded online weights
    ema.update(net, 0)
    assert ema.module.weight.item() == pytest.approx(0.99 * 5.0 + 0.01 * 7.0)
    assert not math.isclose(ema.module.weight.item(), 7.0)


# --------------------------------------------------------------------------------------------
# a run reports its own loss jumps
# --------------------------------------------------------------------------------------------


def test_run_reports_a_loss_jump_itself(misaligned_root, tmp_path, monkeypatch, capsys):
    """The real failure: reconstruction loss 0.100 -> 0.204 and validation lung PSNR
    31.2 -> 25.6 dB at epoch 4. The run must flag it, not just keep the pre-jump best."""
    trainer = make_trainer(
        misaligned_root, tmp_path, "model.R.enabled=false", "model.D.enabled=false"
    )
    trainer.cfg.train.epochs = 5
    recon = iter([0.30, 0.15, 0.10, 0.204, 0.21])
    psnr = iter([25.0, 29.0, 31.2, 25.6, 25.5])

    def fake_epoch():
        trainer.global_step += trainer.steps_per_epoch
        value = next(recon)
        return {"loss_G": value, "w_recon": value}

    class FakeResult:
        def __init__(self, value: float) -> None:
            self.metrics = {"psnr_mask": value, "psnr": value}
            self.samples = {}

    monkeypatch.setattr(trainer, "train_epoch", fake_epoch)
    monkeypatch.setattr(trainer, "validate", lambda: FakeResult(next(psnr)))
    summary = trainer.fit()
    found = {(j["epoch"], j["key"]) for j in summary["instabilities"]}
    assert (4, "val_psnr_mask") in found
    assert any(epoch == 4 and key.startswith("train_") for epoch, key in found)
    assert "training instability at epoch 4" in capsys.readouterr().out
    assert summary["best"]["epoch"] == 3
    saved = json.loads((trainer.run_dir / "summary.json").read_text())
    assert saved["instabilities"] == summary["instabilities"]


def test_validation_measures_d_on_held_out_images(misaligned_root, tmp_path):
    trainer = make_trainer(misaligned_root, tmp_path)
    result = trainer.validate()
    for key in ("D_real", "D_fake", "D_gap", "D_acc"):
        assert math.isfinite(result.metrics[key]), key
    assert result.metrics["D_gap"] == pytest.approx(
        result.metrics["D_real"] - result.metrics["D_fake"], abs=1e-6
    )
    assert 0.0 <= result.metrics["D_acc"] <= 1.0
    no_d = make_trainer(misaligned_root, tmp_path, "model.D.enabled=false")
    assert "D_acc" not in no_d.validate().metrics


# --------------------------------------------------------------------------------------------
# the experiment presets
# --------------------------------------------------------------------------------------------

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    "preset",
    ["g_only", "exp1_ema_skip_warmup", "exp2_fm_2", "exp3_gan_weight", "exp4_g_only_long"],
)
def test_experiment_presets_keep_r_on_for_misaligned_targets_and_train(
    preset, misaligned_root, tmp_path
):
    """Each experiment answers its question on misaligned data: R is on, D (when on) is
    unconditional, and one step trains on the CPU overlay."""
    files = [CONFIGS / "experiments" / f"{preset}.yaml", CONFIGS / "experiments" / "cpu.yaml"]
    cfg = load_config(
        files,
        [
            f"data.root={misaligned_root}",
            "data.crop_size=16",
            "train.pretrained_G=null",
            "train.epochs=1",
            "train.steps_per_epoch=1",
            "logging.tensorboard=false",
            "eval.test_at_end=false",
        ],
    )
    assert cfg.model.R.enabled
    trainer = Trainer(cfg, tmp_path / "run", DistContext())
    assert trainer.pairs_misaligned and not trainer.d_conditional
    stats = trainer.train_step(first_batch(trainer))
    assert math.isfinite(float(stats["loss_G"]))


# --------------------------------------------------------------------------------------------
# R reads faint structure: its inputs are standardised by the pair's own statistics
# --------------------------------------------------------------------------------------------


def test_registration_field_ignores_the_pair_s_intensity_scale():
    from medi2i.config import RegistrationConfig
    from medi2i.models import build_registration

    torch.manual_seed(0)
    r = build_registration(RegistrationConfig())
    for p in r.parameters():  # a trained-looking R (its flow layer starts at exactly zero)
        torch.nn.init.normal_(p, std=0.1)
    moving, fixed = textured(2, 32, seed=3), textured(2, 32, seed=4)
    field = r(moving, fixed)
    # the same pair at 1% contrast on a grey background, as faint radiograph structure is
    faint = r(0.5 + 0.01 * moving, 0.5 + 0.01 * fixed)
    torch.testing.assert_close(faint, field, atol=1e-4, rtol=1e-3)


def test_preset_smoothness_is_ten_times_reggan_balance():
    """RegGAN weighs its L1 (images in [-1, 1]) by 20 and the same smoothness term by 10; the
    library default keeps that balance. The presets (recon weight 1, images in [0, 1]) make R
    ten times stiffer, as measured on the benchmark: on any pair and field,
    smooth_weight * S / L1_ours == 10 * (10 * S / (20 * L1_reggan))."""
    from medi2i.losses.regularizers import gradient_l2

    a, b = textured(2, 32, seed=6), textured(2, 32, seed=7)
    field = smooth_field(2, 32, 2.0, seed=8)
    l1_ours = (a - b).abs().mean()
    l1_reggan = ((2 * a - 1) - (2 * b - 1)).abs().mean()
    s = gradient_l2(field)
    for preset in ("demo.yaml", "gpu-large.yaml"):
        cfg = load_config(CONFIGS / preset, [])
        assert cfg.data.normalization.output_range == (0.0, 1.0)
        ours = cfg.loss.smooth_weight * s / (cfg.loss.recon_weight * l1_ours)
        reggan = 10.0 * s / (20.0 * l1_reggan)
        assert ours.item() == pytest.approx(10.0 * reggan.item(), rel=1e-6), preset
    # the library default gives the same balance at any data range
    assert GeneratorLoss(LossConfig(), data_range=1.0).smooth_weight == pytest.approx(0.25)
    assert GeneratorLoss(LossConfig(), data_range=2.0).smooth_weight == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------
# D sees the detail band at the real images' scale
# --------------------------------------------------------------------------------------------


def test_detail_input_is_scaled_by_the_real_images_not_per_image():
    from medi2i.models.discriminator import DetailInput

    front = DetailInput()
    real = 0.5 + 0.01 * textured(4, 48, seed=9)  # faint structure on a grey background
    gain = front.calibrate([real[i : i + 1] for i in range(4)])
    assert front(real).std().item() == pytest.approx(1.0, rel=1e-4)
    assert gain == pytest.approx(1.0 / front.detail(real).std().item(), rel=1e-5)
    # no detail (float32 rounding of the local mean, times the gain)
    assert front(torch.full((1, 1, 16, 16), 0.3)).abs().max().item() < 1e-3
    # a blurred output keeps its smaller detail: one gain for all, no per-image rescaling
    blurred = torch.nn.functional.avg_pool2d(real, 5, stride=1, padding=2, count_include_pad=False)
    assert front(blurred).std().item() < 0.7 * front(real).std().item()
    with pytest.raises(ValueError, match="no detail"):
        DetailInput().calibrate(torch.zeros(1, 1, 8, 8))


def test_detail_input_lets_d_tell_faint_differences_apart():
    """Spectral norm bounds D's logit differences by the input difference: at 1% contrast a
    raw-input D cannot separate an image from its blurred copy; the detail input can."""
    d_cfg = load_config(None, ["model.D.base_channels=8", "model.D.n_layers=2"]).model.D
    real = 0.5 + 0.01 * textured(2, 48, seed=10)
    fake = torch.nn.functional.avg_pool2d(real, 5, stride=1, padding=2, count_include_pad=False)
    gaps = {}
    for kind in ("raw", "detail"):
        torch.manual_seed(0)
        d = build_discriminator(d_cfg.model_copy(update={"input": kind}), conditional=False)
        if d.front is not None:
            d.front.calibrate(real)
        d.eval()
        out = d(torch.cat([real, fake]))
        gaps[kind] = sum((logits[:2] - logits[2:]).abs().mean().item() for logits, _ in out)
    assert gaps["detail"] > 20 * gaps["raw"]
