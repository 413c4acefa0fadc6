"""Losses: hand-computed values, weighting conventions, gradient directions, diagnostics."""

from __future__ import annotations

import ast
import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import medi2i.losses
from medi2i.config import LossConfig
from medi2i.losses import (
    DECISION_THRESHOLDS,
    AdversarialLoss,
    DiscriminatorLoss,
    GeneratorLoss,
    bending_energy,
    discriminator_stats,
    feature_matching_loss,
    gradient_l2,
    loss_shares,
    pixel_weights,
    r1_due,
    r1_penalty,
    r1_scale,
    reconstruction_loss,
    smoothness_loss,
)
from medi2i.metrics import ssim

MODES = ("lsgan", "hinge", "bce")


def const(value: float, shape=(2, 1, 4, 4), requires_grad: bool = False) -> torch.Tensor:
    return torch.full(shape, float(value), requires_grad=requires_grad)


def fake_d_outputs(gen: torch.Generator, n: int = 2, scales: int = 2, layers: int = 3):
    """A D-like structure: per scale (logits (N,1,h,w), [features...]), finest first."""
    outputs = []
    for k in range(scales):
        size = 8 // 2**k
        feats = [
            torch.randn(n, 4 * (layer + 1), size, size, generator=gen) for layer in range(layers)
        ]
        outputs.append((torch.randn(n, 1, size, size, generator=gen), feats))
    return outputs


# --------------------------------------------------------------------------------------------
# reconstruction
# --------------------------------------------------------------------------------------------


def test_masked_l1_hand_computed():
    # error e = pred - target = [[0.1, -0.2], [0.3, -0.4]], mask = [[1, 0], [0, 1]],
    # lung_weight 10 -> weights [[10, 1], [1, 10]], sum 22;
    # sum w|e| = 10*0.1 + 1*0.2 + 1*0.3 + 10*0.4 = 5.5  ->  L1 = 5.5 / 22 = 0.25
    target = torch.tensor([[[[0.5, 0.6], [0.2, 0.9]]]])
    pred = target + torch.tensor([[[[0.1, -0.2], [0.3, -0.4]]]])
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    loss, parts = reconstruction_loss(
        pred, target, mask, data_range=1.0, lung_weight=10.0, l1_weight=1.0, ssim_weight=0.0
    )
    assert loss.item() == pytest.approx(0.25, abs=1e-6)
    assert parts["l1"].item() == pytest.approx(0.25, abs=1e-6)
    assert parts["dssim"].item() == 0.0
    # l1_weight scales it; a bool mask works the same; no mask = plain mean |e| = 0.25 too
    loss3, _ = reconstruction_loss(
        pred, target, mask.bool(), data_range=1.0, l1_weight=3.0, ssim_weight=0.0
    )
    assert loss3.item() == pytest.approx(0.75, abs=1e-6)
    plain, _ = reconstruction_loss(pred, target, None, data_range=1.0, ssim_weight=0.0)
    assert plain.item() == pytest.approx(0.25, abs=1e-6)


def test_pixel_weights_soft_mask_and_shapes():
    like = torch.zeros(1, 3, 2, 2)
    w = pixel_weights(torch.tensor([[[[0.0, 0.5], [1.0, 1.0]]]]), like, 10.0)
    assert torch.allclose(w, torch.tensor([[[[1.0, 5.5], [10.0, 10.0]]]]))
    assert pixel_weights(None, like, 10.0).shape == (1, 1, 2, 2)
    with pytest.raises(ValueError, match="mask of shape"):
        pixel_weights(torch.zeros(1, 1, 3, 3), like, 10.0)
    with pytest.raises(ValueError, match="lung_weight"):
        pixel_weights(None, like, -1.0)


def test_l1_normalisation_independent_of_mask_size():
    # a uniform error reads the same whatever the mask's size (empty, small, large, full)
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(1, 1, 16, 16, generator=gen)
    pred = target + 0.05
    losses = []
    for side in (0, 4, 10, 16):
        mask = torch.zeros(1, 1, 16, 16)
        mask[..., :side, :side] = 1
        loss, _ = reconstruction_loss(pred, target, mask, data_range=1.0, ssim_weight=0.0)
        losses.append(loss.item())
    assert losses == pytest.approx([0.05] * 4, abs=1e-6)


def test_l1_same_error_in_scaled_mask_and_per_image_normalisation():
    # error e inside a mask covering 1/4 of the image: L1 = 10e*(1/4) / (10/4 + 3/4) = 10e/13
    e = 0.2
    target = torch.zeros(1, 1, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1
    pred = target + e * mask
    small, _ = reconstruction_loss(pred, target, mask, data_range=1.0, ssim_weight=0.0)
    assert small.item() == pytest.approx(10 * e / 13, abs=1e-6)
    # the same picture at twice the resolution (mask 4x bigger in pixels): same loss
    up = lambda x: F.interpolate(x, scale_factor=2, mode="nearest")  # noqa: E731
    big, _ = reconstruction_loss(up(pred), up(target), up(mask), data_range=1.0, ssim_weight=0.0)
    assert big.item() == pytest.approx(small.item(), abs=1e-6)
    # in a batch each image counts the same, whatever its mask size
    other = torch.zeros(1, 1, 4, 4)
    batch, _ = reconstruction_loss(
        torch.cat([pred, other + e]),
        torch.cat([target, other]),
        torch.cat([mask, torch.ones_like(mask)]),
        data_range=1.0,
        ssim_weight=0.0,
    )
    assert batch.item() == pytest.approx(0.5 * (10 * e / 13 + e), abs=1e-6)


def test_ssim_term_zero_for_identical_positive_otherwise():
    gen = torch.Generator().manual_seed(1)
    target = torch.rand(2, 1, 24, 24, generator=gen)
    mask = (torch.rand(2, 1, 24, 24, generator=gen) > 0.5).float()
    same, parts = reconstruction_loss(target.clone(), target, mask, data_range=1.0, l1_weight=0.0)
    assert abs(same.item()) < 1e-5 and abs(parts["dssim"].item()) < 1e-5
    noisy = (target + 0.1 * torch.randn(2, 1, 24, 24, generator=gen)).clamp(0, 1)
    diff, parts = reconstruction_loss(noisy, target, mask, data_range=1.0, l1_weight=0.0)
    assert diff.item() > 0.01 and parts["l1"].item() == 0.0


def test_ssim_term_matches_metric_and_aligns_mask_with_valid_map():
    gen = torch.Generator().manual_seed(2)
    target = torch.rand(2, 1, 32, 28, generator=gen)
    pred = (target + 0.2 * torch.randn(2, 1, 32, 28, generator=gen)).clamp(0, 1)
    _, parts = reconstruction_loss(pred, target, None, data_range=1.0)
    assert parts["dssim"].item() == pytest.approx(
        1 - ssim(pred, target, data_range=1.0).mean().item(), abs=1e-5
    )
    # with a huge lung weight the weighted SSIM tends to the masked SSIM metric (same crop)
    mask = torch.zeros(2, 1, 32, 28)
    mask[:, :, 8:24, 6:20] = 1
    _, parts = reconstruction_loss(pred, target, mask, data_range=1.0, lung_weight=1e7)
    expected = 1 - ssim(pred, target, data_range=1.0, mask=mask).mean().item()
    assert parts["dssim"].item() == pytest.approx(expected, abs=1e-4)
    # mask pixels within 5 px of the border do not touch the SSIM term, but do touch L1
    border = torch.zeros_like(mask)
    border[:, :, :5, :] = 1
    _, with_border = reconstruction_loss(pred, target, border, data_range=1.0)
    _, without = reconstruction_loss(pred, target, torch.zeros_like(mask), data_range=1.0)
    assert with_border["dssim"].item() == pytest.approx(without["dssim"].item(), abs=1e-6)
    assert with_border["l1"].item() != pytest.approx(without["l1"].item(), abs=1e-4)


def _block_mean(a, k: int):
    """numpy: mean over k x k blocks of the last two axes (an independent 2^j pooling)."""
    import numpy as np

    n, c, h, w = a.shape
    return (
        np.asarray(a)[..., : h // k * k, : w // k * k]
        .reshape(n, c, h // k, k, w // k, k)
        .mean(axis=(3, 5))
    )


def test_multiresolution_l1_matches_block_means_of_images_and_mask():
    import numpy as np

    gen = torch.Generator().manual_seed(5)
    target = torch.rand(2, 1, 24, 20, generator=gen, dtype=torch.float64)
    pred = target + 0.1 * torch.randn(2, 1, 24, 20, generator=gen, dtype=torch.float64)
    mask = (torch.rand(2, 1, 24, 20, generator=gen) > 0.5).double()
    scales, lung = (1.0, 0.5, 0.25), 7.0
    loss, parts = reconstruction_loss(
        pred, target, mask, data_range=1.0, lung_weight=lung, ssim_weight=0, scale_weights=scales
    )
    expected = 0.0
    for level, s in enumerate(scales):
        k = 2**level
        p, t, m = (_block_mean(a.numpy(), k) for a in (pred, target, mask))
        w = 1 + (lung - 1) * m  # a coarse pixel is as much lung as its footprint
        per_image = (w * np.abs(p - t)).sum(axis=(1, 2, 3)) / w.sum(axis=(1, 2, 3))
        expected += s * per_image.mean()
    expected /= sum(scales)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert parts["l1"].item() == pytest.approx(expected, rel=1e-5)
    # one level is the plain loss; the total keeps its scale (a uniform error e costs e)
    plain, _ = reconstruction_loss(pred, target, mask, data_range=1.0, ssim_weight=0)
    single, _ = reconstruction_loss(
        pred, target, mask, data_range=1.0, ssim_weight=0, scale_weights=(2.0,)
    )
    assert single.item() == pytest.approx(plain.item(), rel=1e-12)
    uniform, _ = reconstruction_loss(
        target + 0.03, target, mask, data_range=1.0, ssim_weight=0, scale_weights=scales
    )
    assert uniform.item() == pytest.approx(0.03, rel=1e-6)  # float32


def test_multiresolution_coarse_levels_see_what_the_fine_one_does_not():
    """A low-frequency error counts more at coarse levels; a zero-weight level is skipped."""
    yy = torch.linspace(0, 1, 64).view(1, 1, 64, 1).expand(1, 1, 64, 64)
    target = 0.5 + 0.1 * torch.sin(40 * yy)
    checker = 0.05 * (torch.arange(64).view(-1, 1) + torch.arange(64)).remainder(2) * 2 - 0.05
    fine_error = target + checker  # averages out in every 2x2 block
    fine, _ = reconstruction_loss(fine_error, target, data_range=1.0, ssim_weight=0)
    multi, _ = reconstruction_loss(
        fine_error, target, data_range=1.0, ssim_weight=0, scale_weights=(1, 1)
    )
    assert multi.item() == pytest.approx(fine.item() / 2, rel=1e-5)
    # the coarsest level's weight is 0: it is never computed, so tiny images are fine
    tiny = torch.rand(1, 1, 24, 24)
    reconstruction_loss(tiny, tiny, data_range=1.0, scale_weights=(1.0, 0.5, 0.0))
    with pytest.raises(ValueError, match=r"6 px at level 2 \(1/4\).*SSIM window"):
        reconstruction_loss(tiny, tiny, data_range=1.0, scale_weights=(1.0, 0.5, 0.25))
    with pytest.raises(ValueError, match="positive sum"):
        reconstruction_loss(tiny, tiny, data_range=1.0, scale_weights=(0.0,))
    with pytest.raises(ValueError, match="positive sum"):
        LossConfig(recon_scales=[1.0, -0.5])
    assert GeneratorLoss(LossConfig(recon_scales=[1, 1]), data_range=1.0)(fine_error, target)[1][
        "recon"
    ].item() == pytest.approx(
        reconstruction_loss(fine_error, target, data_range=1.0, scale_weights=(1, 1))[0].item()
    )


def test_recon_differentiable_float32_and_errors():
    gen = torch.Generator().manual_seed(3)
    target = torch.rand(2, 1, 16, 16, generator=gen) * 2 - 1
    pred = (torch.rand(2, 1, 16, 16, generator=gen) * 2 - 1).requires_grad_(True)
    mask = torch.rand(2, 1, 16, 16, generator=gen) > 0.5
    loss, parts = reconstruction_loss(pred, target, mask, data_range=2.0)
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert not parts["l1"].requires_grad and not parts["dssim"].requires_grad
    half, _ = reconstruction_loss(pred.detach().bfloat16(), target.bfloat16(), mask, data_range=2.0)
    assert half.dtype == torch.float32
    with pytest.raises(ValueError, match="same as pred"):
        reconstruction_loss(pred, target[:, :, :8], data_range=1.0)
    with pytest.raises(ValueError, match="at least 11"):
        reconstruction_loss(pred[..., :8, :8], target[..., :8, :8], data_range=1.0)


# --------------------------------------------------------------------------------------------
# adversarial
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "real", "fake", "d_expected", "g_expected"),
    [
        # lsgan: D = 0.5*((0.8-1)^2 + 0.3^2) = 0.5*(0.04 + 0.09) = 0.065; G = (0.3-1)^2 = 0.49
        ("lsgan", 0.8, 0.3, 0.065, 0.49),
        # hinge: D = 0.5*(relu(1-0.5) + relu(1-0.25)) = 0.5*(0.5+0.75) = 0.625; G = -(-0.25)
        ("hinge", 0.5, -0.25, 0.625, 0.25),
        # hinge beyond the margins: both relus are 0
        ("hinge", 2.0, -3.0, 0.0, 3.0),
        # bce at 0: D = 0.5*(log 2 + log 2) = log 2; G = -log(sigmoid(0)) = log 2
        ("bce", 0.0, 0.0, math.log(2), math.log(2)),
        # bce: D = 0.5*(log(1+e^-2) + log(1+e^-1)); G = log(1+e^1)
        (
            "bce",
            2.0,
            -1.0,
            0.5 * (math.log1p(math.exp(-2)) + math.log1p(math.exp(-1))),
            math.log1p(math.e),
        ),
    ],
)
def test_gan_values_hand_computed(mode, real, fake, d_expected, g_expected):
    adv = AdversarialLoss(mode)
    d, parts = adv.d_loss([(const(real), [])], [(const(fake), [])])
    g, g_parts = adv.g_loss([(const(fake), [])])
    assert d.item() == pytest.approx(d_expected, abs=1e-6)
    assert g.item() == pytest.approx(g_expected, abs=1e-6)
    assert parts["D_real"].item() == pytest.approx(real)
    assert parts["D_fake"].item() == pytest.approx(fake)
    assert g_parts["D_fake"].item() == pytest.approx(fake)


def test_gan_scales_are_averaged():
    # lsgan, scale 0 (4x4): real 1, fake 0 -> 0; scale 1 (2x2): real 0, fake 1 -> 0.5*(1+1) = 1
    adv = AdversarialLoss("lsgan")
    real = [const(1.0), const(0.0, (2, 1, 2, 2))]
    fake = [const(0.0), const(1.0, (2, 1, 2, 2))]
    d, parts = adv.d_loss(real, fake)
    assert d.item() == pytest.approx(0.5)
    assert parts["D_real_s0"].item() == 1.0 and parts["D_real_s1"].item() == 0.0
    assert parts["D_real"].item() == pytest.approx(0.5)
    assert parts["D_acc_s0"].item() == 1.0 and parts["D_acc_s1"].item() == 0.0
    assert parts["D_acc"].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="scales"):
        adv.d_loss(real, fake[:1])


@pytest.mark.parametrize("mode", MODES)
def test_d_loss_prefers_correct_d_and_g_pushes_fake_up(mode):
    adv = AdversarialLoss(mode)
    good, _ = adv.d_loss([const(2.0)], [const(-2.0)])
    bad, _ = adv.d_loss([const(-2.0)], [const(2.0)])
    assert good.item() < bad.item()
    fake = torch.tensor([[[[-1.0, 0.0], [0.3, 0.7]]]], requires_grad=True)
    g, _ = adv.g_loss([(fake, [])])
    g.backward()
    # gradient descent moves the fake logits up (towards "real")
    assert (fake.grad < 0).all()


@pytest.mark.parametrize("mode", MODES)
def test_d_accuracy_uses_mode_threshold(mode):
    t = DECISION_THRESHOLDS[mode]
    real = torch.tensor([[[[t + 0.1, t - 0.1, t + 1.0, t + 2.0]]]])  # 3 of 4 above
    fake = torch.tensor([[[[t - 0.1, t + 0.1, t + 0.2, t - 3.0]]]])  # 2 of 4 below
    stats = discriminator_stats([real], [fake], mode=mode)
    assert stats["D_acc_real"].item() == pytest.approx(0.75)
    assert stats["D_acc_fake"].item() == pytest.approx(0.5)
    assert stats["D_acc"].item() == pytest.approx(0.625)
    assert {"lsgan": 0.5, "hinge": 0.0, "bce": 0.0}[mode] == t


def test_diagnostics_detached_and_unknown_mode():
    real = torch.zeros(2, 1, 4, 4, requires_grad=True)
    fake = torch.ones(2, 1, 4, 4, requires_grad=True)
    _, parts = AdversarialLoss("hinge").d_loss([(real, [])], [(fake, [])])
    assert all(not v.requires_grad and v.ndim == 0 for v in parts.values())
    with pytest.raises(ValueError, match="gan_mode"):
        AdversarialLoss("wgan")
    with pytest.raises(TypeError, match="logits"):
        AdversarialLoss().g_loss([("not", "a tensor", "pair")])


# --------------------------------------------------------------------------------------------
# feature matching
# --------------------------------------------------------------------------------------------


def test_feature_matching_zero_monotonic_and_detached():
    gen = torch.Generator().manual_seed(4)
    real = fake_d_outputs(gen)
    assert feature_matching_loss(real, real).item() == 0.0
    noise = fake_d_outputs(gen)
    values = []
    for gap in (0.0, 0.1, 0.5, 1.0, 3.0):
        fake = [
            (lr, [fr + gap * fn for fr, fn in zip(real_feats, noise_feats)])
            for (lr, real_feats), (_, noise_feats) in zip(real, noise)
        ]
        values.append(feature_matching_loss(real, fake).item())
    assert values[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(values))
    # a uniform gap g on every feature map reads exactly g (mean over layers and scales)
    shifted = [(lr, [f + 0.3 for f in feats]) for lr, feats in real]
    assert feature_matching_loss(real, shifted).item() == pytest.approx(0.3, abs=1e-6)

    real_feat = torch.randn(2, 4, 4, 4, generator=gen, requires_grad=True)
    fake_feat = torch.randn(2, 4, 4, 4, generator=gen, requires_grad=True)
    feature_matching_loss(
        [(torch.zeros(2, 1, 4, 4), [real_feat])], [(torch.zeros(2, 1, 4, 4), [fake_feat])]
    ).backward()
    assert real_feat.grad is None
    assert fake_feat.grad is not None and fake_feat.grad.abs().sum() > 0


def test_feature_matching_structure_errors():
    a = [(torch.zeros(1, 1, 2, 2), [torch.zeros(1, 2, 2, 2)])]
    with pytest.raises(ValueError, match="feature maps"):
        feature_matching_loss(a, [(torch.zeros(1, 1, 2, 2), [])])
    with pytest.raises(ValueError, match="real features"):
        feature_matching_loss(a, [(torch.zeros(1, 1, 2, 2), [torch.zeros(1, 3, 2, 2)])])


# --------------------------------------------------------------------------------------------
# R1
# --------------------------------------------------------------------------------------------


def test_r1_linear_discriminator_analytic():
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(1, 1, 6, 6, generator=gen)
    c = torch.randn(1, 1, 6, 6, generator=gen)
    x = torch.rand(3, 1, 6, 6, generator=gen).requires_grad_(True)
    # scale 0: patch logits a*x; scale 1: one logit per image, sum(c*x).
    # grad of the summed logits w.r.t. x is a + c for every image -> penalty = sum((a+c)^2)
    outputs = [(a * x, []), ((c * x).sum(dim=(2, 3), keepdim=True), [])]
    penalty = r1_penalty(outputs, x)
    assert penalty.item() == pytest.approx((a + c).square().sum().item(), rel=1e-5)


def test_r1_zero_for_input_independent_d_and_trains_d():
    x = torch.rand(2, 1, 4, 4).requires_grad_(True)
    assert r1_penalty([(0.0 * x + 3.0, [])], x).item() == 0.0
    # D(x) = w*x per pixel: penalty = 16 w^2 per image, d/dw = 32 w (needs create_graph)
    w = torch.tensor(0.5, requires_grad=True)
    penalty = r1_penalty([(w * x, [])], x)
    assert penalty.item() == pytest.approx(16 * 0.25)
    penalty.backward()
    assert w.grad.item() == pytest.approx(32 * 0.5)
    with pytest.raises(ValueError, match="requires_grad"):
        r1_penalty([(w * x.detach(), [])], x.detach())
    with pytest.raises(ValueError, match="not computed from"):
        r1_penalty([(w * torch.ones(2, 1, 4, 4), [])], x)


def test_r1_scale_and_due():
    assert r1_scale(10.0, 16) == 80.0
    assert r1_scale(10.0) == 5.0
    assert [r1_due(s, 1.0, 4) for s in range(6)] == [True, False, False, False, True, False]
    assert not r1_due(0, 0.0, 4)
    with pytest.raises(ValueError):
        r1_scale(1.0, 0)


# --------------------------------------------------------------------------------------------
# smoothness
# --------------------------------------------------------------------------------------------


def affine_field(h: int = 7, w: int = 9) -> tuple[torch.Tensor, float]:
    rows, cols = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    # u_rows = 0.1 r - 0.2 c + 3, u_cols = 0.3 r + 0.05 c - 1
    field = torch.stack([0.1 * rows - 0.2 * cols + 3, 0.3 * rows + 0.05 * cols - 1])[None]
    # forward differences: d_rows = (0.1, 0.3), d_cols = (-0.2, 0.05), means over both channels
    expected = (0.1**2 + 0.3**2) / 2 + (0.2**2 + 0.05**2) / 2
    return field, expected


def test_smoothness_constant_affine_random():
    constant = torch.full((2, 2, 5, 6), 2.5)
    assert gradient_l2(constant).item() == 0.0
    assert bending_energy(constant).item() == 0.0
    field, expected = affine_field()
    assert gradient_l2(field).item() == pytest.approx(expected, rel=1e-5)
    assert bending_energy(field).item() < 1e-10
    rand = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(6))
    assert gradient_l2(rand).item() > 0.1 and bending_energy(rand).item() > 0.1
    # a checkerboard, invisible to central differences, is penalised by both
    checker = ((torch.arange(6)[:, None] + torch.arange(6)[None]) % 2).float().expand(1, 2, 6, 6)
    assert gradient_l2(checker).item() == pytest.approx(2.0)
    # u_rr = u_cc = ±2 everywhere, u_rc = 0  ->  4 + 4
    assert bending_energy(checker).item() == pytest.approx(8.0)
    assert smoothness_loss(rand, "bending").item() == bending_energy(rand).item()
    assert smoothness_loss(rand).item() == gradient_l2(rand).item()


def test_smoothness_gradient_flows_and_errors():
    field = torch.randn(1, 2, 4, 4, requires_grad=True)
    (gradient_l2(field) + bending_energy(field)).backward()
    assert field.grad is not None and field.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        gradient_l2(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="at least 3"):
        bending_energy(torch.zeros(1, 2, 2, 5))
    with pytest.raises(ValueError, match="kind"):
        smoothness_loss(torch.zeros(1, 2, 4, 4), "tv")


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")
def test_bending_matches_monai_compact_stencils():
    deform = pytest.importorskip("monai.losses.deform")
    if not hasattr(deform, "spatial_gradient_squared"):
        pytest.skip("this MONAI uses the older wide stencils (see regularizers.py)")
    field = torch.randn(2, 2, 9, 7, generator=torch.Generator().manual_seed(7))
    expected = deform.BendingEnergyLoss(normalize=False)(field)
    assert bending_energy(field).item() == pytest.approx(expected.item(), rel=1e-5)


# --------------------------------------------------------------------------------------------
# composition
# --------------------------------------------------------------------------------------------


def test_loss_shares_user_example():
    # a real run: recon 0.67, GAN 0.26, FM 0.50 -> 47 %, 18 %, 35 %
    shares = loss_shares(
        {"recon": torch.tensor(0.67), "gan": torch.tensor(0.26), "fm": torch.tensor(0.5)}
    )
    assert [round(shares[f"share_{k}"].item()) for k in ("recon", "gan", "fm")] == [47, 18, 35]
    zero = loss_shares({"a": torch.tensor(0.0), "b": torch.tensor(0.0)})
    assert zero["share_a"].item() == 0.0


def test_generator_loss_parts_weighted_and_shares():
    gen = torch.Generator().manual_seed(8)
    cfg = LossConfig(
        recon_weight=2.0,
        lung_weight=5.0,
        gan_mode="hinge",
        gan_weight=3.0,
        feat_match_weight=0.5,
        smooth_weight=4.0,
    )
    target = torch.rand(2, 1, 16, 16, generator=gen)
    pred = torch.rand(2, 1, 16, 16, generator=gen).requires_grad_(True)
    mask = torch.rand(2, 1, 16, 16, generator=gen) > 0.5
    field = torch.randn(2, 2, 16, 16, generator=gen).requires_grad_(True)
    real_out = fake_d_outputs(gen)
    fake_out = [(lg * pred.mean(), [f * pred.mean() for f in fs]) for lg, fs in fake_d_outputs(gen)]

    total, parts = GeneratorLoss(cfg, data_range=1.0)(
        pred, target, mask, fake_outputs=fake_out, real_outputs=real_out, field=field
    )
    recon, _ = reconstruction_loss(pred, target, mask, data_range=1.0, lung_weight=5.0)
    gan, _ = AdversarialLoss("hinge").g_loss(fake_out)
    fm = feature_matching_loss(real_out, fake_out)
    expected = {
        "recon": 2.0 * recon.item(),
        "gan": 3.0 * gan.item(),
        "fm": 0.5 * fm.item(),
        "smooth": 4.0 * gradient_l2(field).item(),
    }
    for name, value in expected.items():
        assert parts[f"w_{name}"].item() == pytest.approx(value, rel=1e-5)
    assert total.item() == pytest.approx(sum(expected.values()), rel=1e-5)
    assert parts["total"].item() == pytest.approx(total.item())
    denom = sum(abs(v) for v in expected.values())
    for name, value in expected.items():
        assert parts[f"share_{name}"].item() == pytest.approx(100 * abs(value) / denom, rel=1e-4)
    assert sum(parts[f"share_{n}"].item() for n in expected) == pytest.approx(100.0, abs=1e-3)
    assert parts["D_real"].item() == pytest.approx(
        torch.stack([o[0].mean() for o in real_out]).mean().item()
    )
    assert "D_fake" in parts and "recon_l1" in parts and "recon_dssim" in parts
    assert all(not v.requires_grad for v in parts.values())
    total.backward()
    assert pred.grad.abs().sum() > 0 and field.grad.abs().sum() > 0


def test_generator_loss_g_only_and_fm_needs_real():
    target = torch.rand(1, 1, 12, 12)
    pred = torch.rand(1, 1, 12, 12)
    total, parts = GeneratorLoss(data_range=1.0)(pred, target)
    assert parts["w_gan"].item() == parts["w_fm"].item() == parts["w_smooth"].item() == 0.0
    assert parts["share_recon"].item() == pytest.approx(100.0)
    assert total.item() == pytest.approx(parts["w_recon"].item())
    assert "D_real" not in parts and "D_fake" not in parts
    with pytest.raises(ValueError, match="real_outputs"):
        GeneratorLoss(data_range=1.0)(pred, target, fake_outputs=[torch.zeros(1, 1, 2, 2)])
    with pytest.raises(ValueError, match="data_range"):
        GeneratorLoss(data_range=0.0)


def test_discriminator_loss_with_and_without_r1():
    cfg = LossConfig(gan_mode="lsgan", r1_weight=2.0, r1_interval=4)
    d_loss = DiscriminatorLoss(cfg)
    assert d_loss.r1_factor == 4.0 and d_loss.r1_due(8) and not d_loss.r1_due(3)
    w = torch.tensor(0.5, requires_grad=True)
    x = torch.rand(2, 1, 4, 4).requires_grad_(True)
    real_out = [(w * x, [])]
    fake_out = [(torch.zeros(2, 1, 4, 4), [])]
    plain, parts = d_loss(real_out, fake_out)
    assert "r1" not in parts and "w_r1" not in parts
    assert parts["d_gan"].item() == pytest.approx(plain.item())
    assert {"D_real", "D_fake", "D_acc"} <= parts.keys()
    total, parts = d_loss(real_out, fake_out, real_images=x, apply_r1=True)
    # R1 of D(x) = w*x per pixel: 16 w^2 = 4; weighted by r1_weight/2 * interval = 4 -> 16
    assert parts["r1"].item() == pytest.approx(4.0)
    assert parts["w_r1"].item() == pytest.approx(16.0)
    assert total.item() == pytest.approx(plain.item() + 16.0)
    with pytest.raises(ValueError, match="real_images"):
        d_loss(real_out, fake_out, apply_r1=True)
    # r1_weight 0: apply_r1 is ignored
    _, parts = DiscriminatorLoss(LossConfig())(real_out, fake_out, apply_r1=True)
    assert "r1" not in parts


def test_no_host_sync_in_loss_code():
    # .item()/.tolist()/.cpu()/.numpy() would force a device-to-host copy on every step
    package = Path(medi2i.losses.__file__).parent
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        calls = [
            node.func.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in {"item", "tolist", "cpu", "numpy"}
        ]
        assert not calls, f"{path.name} syncs with the host: {calls}"


def test_generator_loss_uses_its_current_lung_weight():
    torch.manual_seed(0)
    pred, target = torch.rand(2, 1, 24, 24), torch.rand(2, 1, 24, 24)
    mask = (torch.rand(2, 1, 24, 24) > 0.5).float()
    loss = GeneratorLoss(LossConfig(lung_weight=10.0), data_range=1.0)
    at_10 = loss.weighted_terms(pred, target, mask)[1]["recon"]
    loss.lung_weight = 2.0  # what the trainer sets each epoch under a curriculum
    at_2 = loss.weighted_terms(pred, target, mask)[1]["recon"]
    expected = reconstruction_loss(pred, target, mask, data_range=1.0, lung_weight=2.0)[0]
    assert at_2 == pytest.approx(float(expected)) and at_2 != pytest.approx(float(at_10))
