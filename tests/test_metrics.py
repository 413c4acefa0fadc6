"""Tests for medi2i.metrics: agreement with skimage/scipy/pytorch-msssim, analytic
values on hand-made examples, batching, precision, numpy/torch parity and error handling."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import pytorch_msssim
import scipy.ndimage as ndi
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from medi2i import metrics as M
from medi2i.metrics.maps import laplacian_of_gaussian, ssim_and_cs

SHAPES = [(48, 40), (40, 48), (33, 57)]
DETAIL_KEYS = ("hfen", "gmsd")


def _smooth(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A smooth image with structure at several scales, scaled to [0, 1]."""
    rng = np.random.default_rng(seed)
    image = ndi.gaussian_filter(rng.random(shape), 1.0) + ndi.gaussian_filter(rng.random(shape), 4)
    return (image - image.min()) / (image.max() - image.min())


def _pair(shape: tuple[int, int], seed: int, data_range: float, smooth: bool):
    """(pred, target) in [0, data_range]: random or smooth target, noisy prediction."""
    rng = np.random.default_rng(seed)
    target = _smooth(shape, seed) if smooth else rng.random(shape)
    pred = np.clip(target + rng.normal(0.0, 0.08, shape), 0.0, 1.0)
    return pred * data_range, target * data_range


def _skimage_ssim(pred, target, data_range, full=False):
    return structural_similarity(
        pred,
        target,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=data_range,
        full=full,
    )


def _checkerboard(shape: tuple[int, int], block: int) -> np.ndarray:
    """±1 checkerboard of ``block``-px squares (period 2·block)."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return np.where((rows // block + cols // block) % 2 == 0, 1.0, -1.0)


def _t(*arrays: np.ndarray) -> list[torch.Tensor]:
    """(H, W) or (N, H, W) arrays -> (N, 1, H, W) float32 tensors."""
    out = []
    for a in arrays:
        a = a[None] if a.ndim == 2 else a
        out.append(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[:, None])
    return out


# ------------------------------------------------------------------ agreement with references


@pytest.mark.parametrize("data_range", [1.0, 255.0])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("smooth", [False, True])
def test_ssim_and_psnr_match_skimage(data_range, shape, smooth):
    for seed in range(3):
        pred, target = _pair(shape, seed, data_range, smooth)
        expected_ssim = _skimage_ssim(pred, target, data_range)
        expected_psnr = peak_signal_noise_ratio(target, pred, data_range=data_range)
        assert M.ssim(pred, target, data_range=data_range) == pytest.approx(expected_ssim, abs=1e-4)
        assert M.psnr(pred, target, data_range=data_range) == pytest.approx(expected_psnr, abs=1e-4)


def test_ssim_batch_matches_skimage_per_image():
    pairs = [_pair((48, 40), seed, 1.0, smooth=seed % 2 == 0) for seed in range(4)]
    pred, target = _t(np.stack([p for p, _ in pairs]), np.stack([t for _, t in pairs]))
    got = M.ssim(pred, target, data_range=1.0)
    expected = torch.tensor([_skimage_ssim(p, t, 1.0) for p, t in pairs], dtype=torch.float32)
    assert got.shape == (4,)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("data_range", [1.0, 255.0])
def test_full_ssim_map_matches_skimage_full_map(data_range):
    pred, target = _pair((40, 48), 3, data_range, smooth=True)
    _, expected = _skimage_ssim(pred, target, data_range, full=True)
    full = M.ssim_map(pred, target, data_range=data_range, full=True)
    valid = M.ssim_map(pred, target, data_range=data_range)
    assert full.shape == (40, 48) and valid.shape == (30, 38)
    np.testing.assert_allclose(full, expected, atol=1e-4)
    np.testing.assert_allclose(valid, expected[5:-5, 5:-5], atol=1e-4)


def test_mae_matches_numpy():
    pred, target = _pair((33, 57), 0, 255.0, smooth=False)
    assert M.mae(pred, target) == pytest.approx(np.abs(pred - target).mean(), rel=1e-6)


@pytest.mark.parametrize("shape", [(176, 176), (177, 181)])
def test_ms_ssim_matches_pytorch_msssim(shape):
    targets = np.stack([_smooth(shape, seed) for seed in range(2)])
    preds = np.stack([ndi.gaussian_filter(t, 1.0) for t in targets])
    pred, target = _t(preds, targets)
    got = M.ms_ssim(pred, target, data_range=1.0)
    expected = pytorch_msssim.ms_ssim(pred, target, data_range=1.0, size_average=False)
    # The two implementations differ by ~9e-6 even in float64 inputs (pytorch_msssim builds
    # its window in float32), and float32 sums over 176^2 pixels move by ~1e-6 more with the
    # thread count: 2e-5 is the agreement both reach on one or two threads.
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)


def test_ssim_maps_and_their_gradient_equal_monai_on_a_batch_of_channels():
    # one separable depthwise filter of the five maps against MONAI's full 11x11 window per
    # map: the same maps to float32 rounding (variance = E[x^2] - E[x]^2 cancels digits: MONAI's
    # own float32 maps are 2e-5 from a float64 computation, ours 7e-6), and the same gradient
    # (the loss uses it)
    from monai.metrics.regression import compute_ssim_and_cs

    rng = np.random.default_rng(3)
    target = torch.tensor(np.stack([[_smooth((37, 45), s) for s in (1, 2)] for _ in range(3)]))
    pred = (target + 0.05 * torch.tensor(rng.normal(size=target.shape))).float()
    target = target.float()
    ours_in, ref_in = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    ssim, cs = ssim_and_cs(ours_in, target, 2.0)
    ref_ssim, ref_cs = compute_ssim_and_cs(
        ref_in, target, 2, kernel_size=(11, 11), kernel_sigma=(1.5, 1.5), data_range=2.0
    )
    assert ssim.shape == ref_ssim.shape == (3, 2, 27, 35)
    assert torch.allclose(ssim, ref_ssim, atol=5e-5, rtol=0)
    assert torch.allclose(cs, ref_cs, atol=5e-5, rtol=0)
    ssim.square().sum().backward()
    ref_ssim.square().sum().backward()
    assert torch.allclose(ours_in.grad, ref_in.grad, atol=1e-4, rtol=1e-3)


def test_ms_ssim_small_images_use_fewer_scales(caplog):
    pred, target = _pair((48, 40), 0, 1.0, smooth=True)
    with caplog.at_level(logging.DEBUG, logger="medi2i.metrics"):
        value = M.ms_ssim(pred, target, data_range=1.0)
    assert 0.0 < value < 1.0
    assert "using 2 scale(s)" in caplog.text  # 40 px: 40 > 10·2 but not > 10·4
    assert M.ms_ssim(target, target, data_range=1.0) == pytest.approx(1.0, abs=1e-6)


def test_log_matches_scipy_gaussian_laplace():
    image = _smooth((33, 40), 2)
    (tensor,) = _t(image)
    got = laplacian_of_gaussian(tensor, 1.5)[0, 0].numpy()
    np.testing.assert_allclose(got, ndi.gaussian_laplace(image, 1.5), atol=1e-6)


# ------------------------------------------------------------------ masks, by hand


def test_masked_mae_and_psnr_hand_computed():
    target = np.arange(20, dtype=np.float64).reshape(4, 5) / 20
    pred = target.copy()
    pred[1, 1] += 0.1
    pred[2, 3] -= 0.3
    pred[0, 0] += 0.5  # outside the mask
    mask = np.zeros((4, 5), dtype=bool)
    mask[1:3, 1:4] = True  # 6 pixels, holding the errors 0.1 and -0.3
    assert M.mae(pred, target, mask=mask) == pytest.approx((0.1 + 0.3) / 6, rel=1e-5)
    mse = (0.1**2 + 0.3**2) / 6
    assert M.psnr(pred, target, data_range=1.0, mask=mask) == pytest.approx(
        10 * math.log10(1.0 / mse), abs=1e-4
    )
    float_mask = mask * 0.9 + 0.2  # 1.1 inside, 0.2 outside: binarised at 0.5
    assert M.mae(pred, target, mask=float_mask) == M.mae(pred, target, mask=mask)


def test_masked_ssim_is_skimage_map_mean_inside_cropped_mask():
    pred, target = _pair((48, 40), 1, 1.0, smooth=True)
    rows, cols = np.mgrid[:48, :40]
    mask = (rows - 20) ** 2 / 18**2 + (cols - 25) ** 2 / 14**2 < 1  # reaches the border
    _, full_map = _skimage_ssim(pred, target, 1.0, full=True)
    expected = full_map[5:-5, 5:-5][mask[5:-5, 5:-5]].mean()
    assert M.ssim(pred, target, data_range=1.0, mask=mask) == pytest.approx(expected, abs=1e-5)


def test_all_ones_mask_equals_whole_image():
    pred, target = _pair((40, 48), 2, 1.0, smooth=True)
    whole = M.compute_metrics(pred, target, data_range=1.0)
    masked = M.compute_metrics(pred, target, data_range=1.0, mask=np.ones_like(pred))
    for key, value in whole.items():
        if key != "ms_ssim":
            assert masked[key + "_mask"] == pytest.approx(value, rel=1e-6), key


def test_empty_mask_gives_nan_for_that_image_only(caplog):
    pred, target = _t(*_pair((48, 40), 0, 1.0, smooth=True))
    pred, target = pred.repeat(2, 1, 1, 1), target.repeat(2, 1, 1, 1)
    image_in = target + 0.1 * torch.rand_like(target)
    mask = torch.ones_like(pred, dtype=torch.bool)
    mask[1] = False
    with caplog.at_level(logging.DEBUG, logger="medi2i.metrics"):
        out = M.compute_metrics(pred, target, data_range=1.0, mask=mask, input=image_in)
    for key, value in out.items():
        assert value.shape == (2,)
        assert torch.isfinite(value[0]), key
        if key.endswith("_mask"):
            assert torch.isnan(value[1]), key
        else:
            assert torch.isfinite(value[1]), key
    assert "empty for 1 of 2 image(s)" in caplog.text


def test_mask_inside_border_only_is_empty_for_ssim():
    pred, target = _pair((48, 40), 0, 1.0, smooth=True)
    mask = np.zeros((48, 40), dtype=bool)
    mask[:3] = True  # only within 5 px of the border: cropped away
    assert math.isnan(M.ssim(pred, target, data_range=1.0, mask=mask))
    assert not math.isnan(M.mae(pred, target, mask=mask))


# ------------------------------------------------------------------ bone suppression ratio


def _bone_case():
    """Soft-tissue target and a bright, rib-like bone layer (bone ≥ 0)."""
    target = 0.2 + 0.5 * _smooth((48, 40), 5)
    rows = np.arange(48)[:, None] * np.ones((1, 40))
    bone = 0.3 * np.clip(np.sin(rows / 3.0), 0.0, None)
    return target, target + bone, bone


def test_bsr_perfect_offset_input_and_half():
    target, image, bone = _bone_case()
    assert M.bsr(target, target, image) == pytest.approx(1.0, abs=1e-6)
    assert M.bsr(target + 0.07, target, image) == pytest.approx(1.0, abs=1e-6)
    assert M.bsr(image, target, image) == pytest.approx(0.0, abs=1e-6)
    half = M.bsr(target + 0.5 * bone, target, image)
    assert 0.0 < half < 1.0
    assert half == pytest.approx(0.75, abs=1e-5)  # quadratic energy: (1/2)² left


def test_bsr_dark_bone_convention_and_mask():
    target, image, bone = _bone_case()
    # inverted display (bone dark): same numbers with bone_is_bright=False
    kwargs = {"bone_is_bright": False}
    assert M.bsr(1 - image, 1 - target, 1 - image, **kwargs) == pytest.approx(0.0, abs=1e-6)
    assert M.bsr(1 - target, 1 - target, 1 - image, **kwargs) == pytest.approx(1.0, abs=1e-6)
    half = M.bsr(1 - target - 0.5 * bone, 1 - target, 1 - image, **kwargs)
    assert half == pytest.approx(M.bsr(target + 0.5 * bone, target, image), abs=1e-6)
    # inside a mask: bone left only outside the mask does not count
    pred = target + bone
    pred[24:] = target[24:]
    mask = np.zeros_like(target, dtype=bool)
    mask[24:] = True
    assert M.bsr(pred, target, image, mask=mask) == pytest.approx(1.0, abs=1e-6)
    assert M.bsr(pred, target, image) < 0.8


def test_bsr_without_bone_is_nan():
    target = _smooth((48, 40), 0)
    assert math.isnan(M.bsr(target, target, target))
    assert math.isnan(M.bsr(target + 0.1, target, target + 0.2))  # offset only: no bone


def _bsr_lit_reference(cxr: np.ndarray, gt: np.ndarray, bs: np.ndarray) -> float:
    """GL-LCM / BS-LDM ``cal_BSR`` in float64 numpy, without their resize."""
    bs = bs + np.mean(gt - bs)
    bias = gt - bs
    bias[bias < 0] = 0
    return float(1.0 - np.sum(bias**2) / np.sum((cxr - gt) ** 2))


def test_bsr_lit_matches_numpy_reference_on_random_images():
    rng = np.random.default_rng(7)
    gt, bs, noise = rng.random((3, 4, 48, 40))
    cxr = gt + np.array([0.3, 0.6, 1.0, 2.0])[:, None, None] * noise  # bone of four strengths
    expected = [_bsr_lit_reference(cxr[i], gt[i], bs[i]) for i in range(4)]
    assert min(expected) < 0.0 < max(expected)  # residue above and below the bone energy
    np.testing.assert_allclose(M.bsr_lit(bs, gt, cxr), expected, rtol=0, atol=1e-6)
    for i in range(4):  # one (H, W) image gives a float
        assert M.bsr_lit(bs[i], gt[i], cxr[i]) == pytest.approx(expected[i], abs=1e-6)
    # the (bright-bone) rib case: noisy predictions keeping part of the bone
    target, image, bone = _bone_case()
    for k in (0.0, 0.3, 1.0, -0.5):
        pred = target + k * bone + rng.normal(0.0, 0.02, target.shape)
        ref = _bsr_lit_reference(image, target, pred)
        assert M.bsr_lit(pred, target, image) == pytest.approx(ref, abs=1e-6)


def test_bsr_lit_perfect_offset_identity_and_no_bone():
    target, image, bone = _bone_case()
    assert M.bsr_lit(target, target, image) == pytest.approx(1.0, abs=1e-6)
    assert M.bsr_lit(target - 0.07, target, image) == pytest.approx(1.0, abs=1e-6)
    # the unprocessed input: 1 - Σ relu(mean(b) - b)² / Σ b², not 0 (bright bone)
    identity = 1.0 - np.sum(np.maximum(bone.mean() - bone, 0.0) ** 2) / np.sum(bone**2)
    assert M.bsr_lit(image, target, image) == pytest.approx(identity, abs=1e-6)
    assert 0.5 < identity < 1.0
    # bone left: 1 - k²·(1 - identity) for 0 ≤ k ≤ 1
    half = M.bsr_lit(target + 0.5 * bone, target, image)
    assert half == pytest.approx(1.0 - 0.25 * (1.0 - identity), abs=1e-6)
    # dark bone (inverted display): the unprocessed input is penalised in full
    assert M.bsr_lit(1 - image, 1 - target, 1 - image) == pytest.approx(
        1.0 - np.sum(np.maximum(bone - bone.mean(), 0.0) ** 2) / np.sum(bone**2), abs=1e-6
    )


def test_bsr_lit_without_bone_is_nan_and_logged(caplog):
    target = _smooth((48, 40), 0)
    images = np.stack([target, target + 0.1])  # the first has no bone
    preds = np.stack([target + 0.05, target])
    with caplog.at_level(logging.DEBUG, logger="medi2i.metrics"):
        values = M.bsr_lit(preds, np.stack([target, target]), images)
    assert math.isnan(values[0]) and values[1] == pytest.approx(1.0, abs=1e-6)
    assert "no bone) for 1 of 2 image(s)" in caplog.text


def _rib_case(size: int = 256):
    """Soft tissue plus binary rib bands of height 0.25 (as ``tinydata.synthetic_pair``)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    target = 0.3 + 0.2 * np.sin(6 * xx + 1.0) * np.cos(5 * yy)
    bone = 0.25 * (np.sin(20 * yy + 2.0) > 0.6)
    return target, target + bone, bone


def test_dark_carving_prediction_fools_bsr_but_not_bsr_lit():
    """``pred = target - bone`` is exactly as wrong as the input (same L1 error) but darkens
    the ribs instead of leaving them bright: ``bsr`` scores it well, ``bsr_lit`` below the
    input. For binary bone covering a fraction f: bsr = 1 - f/(1 - f),
    bsr_lit = 1 - (1 - f)², and the input scores bsr 0 and bsr_lit 1 - f·(1 - f)."""
    target, image, bone = _rib_case()
    carved = target - bone
    assert M.mae(carved, target) == pytest.approx(M.mae(image, target), rel=1e-6)
    f = float(np.mean(bone > 0))
    assert 0.25 < f < 0.35
    carved_bsr = M.bsr(carved, target, image)
    assert carved_bsr == pytest.approx(1.0 - f / (1.0 - f), abs=1e-5)
    assert carved_bsr == pytest.approx(0.58, abs=0.03)
    assert M.bsr(image, target, image) == pytest.approx(0.0, abs=1e-6)
    carved_lit = M.bsr_lit(carved, target, image)
    identity_lit = M.bsr_lit(image, target, image)
    assert carved_lit == pytest.approx(1.0 - (1.0 - f) ** 2, abs=1e-5)
    assert identity_lit == pytest.approx(1.0 - f * (1.0 - f), abs=1e-5)
    assert carved_lit < identity_lit


# ------------------------------------------------------------------ detail and blur


def _detail_case():
    target = _smooth((48, 40), 1)
    blurred = ndi.gaussian_filter(target, 1.5)
    checkered = target + 0.05 * _checkerboard(target.shape, block=2)  # period 4 px
    return target, blurred, checkered


def test_hfen_and_gmsd_zero_when_perfect_and_grow_with_blur_and_checkerboard():
    target, blurred, checkered = _detail_case()
    for key in DETAIL_KEYS:
        perfect = M.compute_metrics(target, target, data_range=1.0, include=(key,))[key]
        blur = M.compute_metrics(blurred, target, data_range=1.0, include=(key,))[key]
        checker = M.compute_metrics(checkered, target, data_range=1.0, include=(key,))[key]
        assert perfect == pytest.approx(0.0, abs=1e-6), key
        assert blur > perfect + 0.05, key
        assert checker > perfect + 0.02, key
    mask = np.zeros_like(target, dtype=bool)
    mask[10:40, 8:32] = True
    assert M.hfen(target, target, mask=mask) == pytest.approx(0.0, abs=1e-6)
    assert M.hfen(blurred, target, mask=mask) > 0.05
    assert M.gmsd(target, target, data_range=1.0, mask=mask) == pytest.approx(0.0, abs=1e-6)
    assert M.gmsd(checkered, target, data_range=1.0, mask=mask) > 0.02
    assert M.gmsd(blurred, target, data_range=1.0, downsample=True) > 0.0


def test_hfen_and_gmsd_hand_computed():
    target, blurred, _ = _detail_case()
    expected_hfen = np.linalg.norm(ndi.gaussian_laplace(blurred - target, 1.5)) / np.linalg.norm(
        ndi.gaussian_laplace(target, 1.5)
    )
    assert M.hfen(blurred, target) == pytest.approx(expected_hfen, rel=1e-4)

    def prewitt(image):
        kernel = np.outer(np.ones(3) / 3, [1.0, 0.0, -1.0])
        gx = ndi.correlate(image, kernel)[1:-1, 1:-1]
        gy = ndi.correlate(image, kernel.T)[1:-1, 1:-1]
        return np.hypot(gx, gy)

    c = 170 / 255**2
    gp, gt = prewitt(blurred), prewitt(target)
    gms = (2 * gp * gt + c) / (gp**2 + gt**2 + c)
    assert M.gmsd(blurred, target, data_range=1.0) == pytest.approx(gms.std(), rel=1e-4)
    # the constant scales with data_range², so GMSD is invariant to the intensity unit
    assert M.gmsd(255 * blurred, 255 * target, data_range=255.0) == pytest.approx(
        gms.std(), rel=1e-4
    )


def test_sharpness_ratio_one_when_perfect_below_one_when_blurred_and_fooled_by_checkerboard():
    target, blurred, _ = _detail_case()
    assert M.sharpness_ratio(target, target) == pytest.approx(1.0, abs=1e-6)
    assert M.sharpness_ratio(blurred, target) < 0.8
    # the documented trap: a checkerboard on a blurred image raises the ratio towards 1,
    # while HFEN and GMSD get no better
    blurred_checkered = blurred * (1 + 0.15 * _checkerboard(target.shape, block=2))
    assert M.sharpness_ratio(blurred_checkered, target) > M.sharpness_ratio(blurred, target) + 0.1
    for key in DETAIL_KEYS:
        fooled = M.compute_metrics(blurred_checkered, target, data_range=1.0, include=(key,))
        plain = M.compute_metrics(blurred, target, data_range=1.0, include=(key,))
        assert fooled[key] >= plain[key], key


def test_one_pixel_checkerboard_is_a_documented_blind_spot_of_prewitt_and_log():
    """Central differences have zero response at period 2; PSNR/SSIM still see the pattern."""
    target = _smooth((48, 40), 1)
    checkered = target + 0.05 * _checkerboard(target.shape, block=1)
    out = M.compute_metrics(checkered, target, data_range=1.0)
    assert out["gmsd"] == pytest.approx(0.0, abs=1e-5)
    assert out["sharpness"] == pytest.approx(1.0, abs=1e-5)
    assert out["hfen"] < 0.01
    assert out["ssim"] < 0.95 and out["psnr"] < 30


def test_blur_effect_higher_for_blurred():
    target, blurred, _ = _detail_case()
    sharp_score, blurred_score = M.blur_effect(target), M.blur_effect(blurred)
    assert isinstance(sharp_score, float)
    assert 0.0 <= sharp_score < blurred_score <= 1.0
    batch = M.blur_effect(np.stack([target, blurred]))
    np.testing.assert_allclose(batch, [sharp_score, blurred_score])
    np.testing.assert_allclose(
        M.blur_effect(torch.from_numpy(np.stack([target, blurred]))[:, None]), batch, rtol=1e-5
    )
    with pytest.raises(ValueError, match=r"got \(2, 3, 48, 40\)"):
        M.blur_effect(np.zeros((2, 3, 48, 40)))


# ------------------------------------------------------------------ API behaviour


def _batch(n: int = 3):
    pairs = [_pair((48, 40), seed, 1.0, smooth=True) for seed in range(n)]
    preds = np.stack([p for p, _ in pairs])
    targets = np.stack([t for _, t in pairs])
    inputs = targets + 0.2 * np.stack([_smooth((48, 40), 10 + s) for s in range(n)])
    masks = np.stack([_smooth((48, 40), 20 + s) > 0.4 for s in range(n)])
    return preds, targets, inputs, masks


def test_compute_metrics_keys():
    preds, targets, inputs, masks = _batch()
    assert set(M.compute_metrics(preds, targets, data_range=1.0)) == {
        "psnr", "ssim", "ms_ssim", "mae", "hfen", "gmsd", "sharpness",
    }  # fmt: skip
    full = M.compute_metrics(preds, targets, data_range=1.0, mask=masks, input=inputs)
    assert list(full) == [
        "psnr", "psnr_mask", "ssim", "ssim_mask", "ms_ssim", "mae", "mae_mask", "hfen",
        "hfen_mask", "gmsd", "gmsd_mask", "sharpness", "sharpness_mask", "bsr", "bsr_mask",
        "bsr_lit",
    ]  # fmt: skip
    some = M.compute_metrics(preds, targets, data_range=1.0, mask=masks, include=["mae", "psnr"])
    assert list(some) == ["psnr", "psnr_mask", "mae", "mae_mask"]


def test_compute_metrics_equals_single_functions():
    preds, targets, inputs, masks = _batch()
    out = M.compute_metrics(preds, targets, data_range=1.0, mask=masks, input=inputs)
    singles = {
        "psnr": lambda m: M.psnr(preds, targets, data_range=1.0, mask=m),
        "ssim": lambda m: M.ssim(preds, targets, data_range=1.0, mask=m),
        "mae": lambda m: M.mae(preds, targets, mask=m),
        "hfen": lambda m: M.hfen(preds, targets, mask=m),
        "gmsd": lambda m: M.gmsd(preds, targets, data_range=1.0, mask=m),
        "sharpness": lambda m: M.sharpness_ratio(preds, targets, mask=m),
        "bsr": lambda m: M.bsr(preds, targets, inputs, mask=m),
    }
    for key, fn in singles.items():
        np.testing.assert_array_equal(out[key], fn(None), err_msg=key)
        np.testing.assert_array_equal(out[key + "_mask"], fn(masks), err_msg=key)
    np.testing.assert_array_equal(out["ms_ssim"], M.ms_ssim(preds, targets, data_range=1.0))
    np.testing.assert_array_equal(out["bsr_lit"], M.bsr_lit(preds, targets, inputs))


def test_batch_equals_per_image_calls_and_torch_equals_numpy():
    preds, targets, inputs, masks = _batch()
    with torch.no_grad():
        batch = M.compute_metrics(
            *_t(preds, targets), data_range=1.0, mask=_t(masks)[0], input=_t(inputs)[0]
        )
    numpy_batch = M.compute_metrics(preds, targets, data_range=1.0, mask=masks, input=inputs)
    for i in range(len(preds)):
        single = M.compute_metrics(
            preds[i], targets[i], data_range=1.0, mask=masks[i], input=inputs[i]
        )
        for key, value in single.items():
            assert isinstance(value, float)
            assert batch[key][i].item() == pytest.approx(value, rel=1e-5, abs=1e-6), key
    for key, value in batch.items():
        assert value.shape == (len(preds),) and value.dtype == torch.float32
        assert isinstance(numpy_batch[key], np.ndarray)
        np.testing.assert_array_equal(numpy_batch[key], value.numpy(), err_msg=key)


def test_multichannel_input():
    preds, targets, _, masks = _batch(2)
    pred = torch.from_numpy(np.stack([preds, preds[::-1]], axis=1)).float()  # (2, 2, H, W)
    target = torch.from_numpy(np.stack([targets, targets[::-1]], axis=1)).float()
    mask = torch.from_numpy(masks)[:, None]
    out = M.compute_metrics(pred, target, data_range=1.0, mask=mask)
    assert all(v.shape == (2,) for v in out.values())
    np.testing.assert_allclose(  # MAE pools channels and pixels
        out["mae"].numpy(), (pred - target).abs().mean(dim=(1, 2, 3)).numpy(), rtol=1e-6
    )


def test_half_and_autocast_inputs_give_the_float32_result():
    preds, targets, inputs, masks = _batch(2)
    pred, target, image = (x.half() for x in _t(preds, targets, inputs))
    mask = _t(masks)[0]
    half = M.compute_metrics(pred, target, data_range=1.0, mask=mask, input=image)
    full = M.compute_metrics(
        pred.float(), target.float(), data_range=1.0, mask=mask, input=image.float()
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = M.compute_metrics(
            pred.float(), target.float(), data_range=1.0, mask=mask, input=image.float()
        )
    for key in full:
        assert half[key].dtype == torch.float32 and autocast[key].dtype == torch.float32
        torch.testing.assert_close(half[key], full[key], rtol=0, atol=0)
        torch.testing.assert_close(autocast[key], full[key], rtol=0, atol=0)


def test_shape_and_argument_errors():
    pred = torch.zeros(2, 1, 48, 40)
    with pytest.raises(
        ValueError,
        match=r"expected target of shape \(2, 1, 48, 40\).*"
        r"got \(2, 1, 40, 48\)",
    ):
        M.psnr(pred, torch.zeros(2, 1, 40, 48), data_range=1.0)
    with pytest.raises(ValueError, match=r"expected pred of shape \(N, C, H, W\), got \(48, 40\)"):
        M.mae(torch.zeros(48, 40), torch.zeros(48, 40))
    with pytest.raises(ValueError, match=r"expected mask of shape \(2, 1, 48, 40\).*got \(2, 48"):
        M.ssim(pred, pred, data_range=1.0, mask=torch.ones(2, 48, 40))
    with pytest.raises(ValueError, match=r"expected input of shape \(2, 1, 48, 40\)"):
        M.bsr(pred, pred, torch.zeros(1, 1, 48, 40))
    with pytest.raises(ValueError, match="at least 11x11 pixels, got 10x40"):
        M.ssim(torch.zeros(1, 1, 10, 40), torch.zeros(1, 1, 10, 40), data_range=1.0)
    with pytest.raises(TypeError, match="data_range"):
        M.ssim(pred, pred)  # required keyword, never guessed
    with pytest.raises(ValueError, match="data_range must be positive"):
        M.psnr(pred, pred, data_range=0)
    with pytest.raises(TypeError, match="data_range must be a real number"):
        M.psnr(pred, pred, data_range=torch.tensor(1.0))
    with pytest.raises(ValueError, match="unknown metric"):
        M.compute_metrics(pred, pred, data_range=1.0, include=["lpips"])
    with pytest.raises(ValueError, match="needs input="):
        M.compute_metrics(pred, pred, data_range=1.0, include=["bsr"])
    with pytest.raises(ValueError, match="'bsr', 'bsr_lit' need input="):
        M.compute_metrics(pred, pred, data_range=1.0, include=["bsr_lit", "bsr"])
    with pytest.raises(ValueError, match=r"bsr_lit: expected input of shape \(2, 1, 48, 40\)"):
        M.bsr_lit(pred, pred, torch.zeros(1, 1, 48, 40))
    with pytest.raises(ValueError, match=r"got \(2, 2, 2, 48, 40\)"):
        M.mae(np.zeros((2, 2, 2, 48, 40)), np.zeros((2, 2, 2, 48, 40)))


class _HostTensorSpy(TorchDispatchMode):
    """Records every op that touches a CPU tensor while the metrics run on another device."""

    def __init__(self) -> None:
        super().__init__()
        self.host_ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        if any(isinstance(a, torch.Tensor) and a.device.type == "cpu" for a in flat):
            self.host_ops.append(str(func))
        return func(*args, **kwargs)


def test_torch_path_needs_no_host_values_or_host_tensors():
    """On the meta device, reading a value (.item(), bool(tensor)) raises, and the spy sees any
    kernel built on the host and copied over (a sync on CUDA)."""
    pred = torch.empty(2, 1, 176, 170, device="meta")
    mask = torch.empty(2, 1, 176, 170, device="meta", dtype=torch.bool)
    spy = _HostTensorSpy()
    with spy:
        out = M.compute_metrics(pred, pred, data_range=1.0, mask=mask, input=pred)
        M.gmsd(pred, pred, data_range=1.0, mask=mask, downsample=True)
        M.ssim_map(pred, pred, data_range=1.0, full=True)
    assert spy.host_ops == []
    assert all(v.shape == (2,) and v.device.type == "meta" for v in out.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_without_syncs():
    preds, targets, inputs, masks = _batch(2)
    cpu = M.compute_metrics(
        *_t(preds, targets), data_range=1.0, mask=_t(masks)[0], input=_t(inputs)[0]
    )
    pred, target, image, mask = (x.cuda() for x in _t(preds, targets, inputs, masks))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        gpu = M.compute_metrics(pred, target, data_range=1.0, mask=mask, input=image)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for key, value in cpu.items():
        torch.testing.assert_close(gpu[key].cpu(), value, atol=1e-5, rtol=1e-5)
