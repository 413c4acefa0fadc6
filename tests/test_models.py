"""Tests of the networks: generator G, registration R + warp, discriminator D (CPU, fast)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from medi2i.config import (
    Config,
    DiscriminatorConfig,
    GeneratorConfig,
    ModelConfig,
    RegistrationConfig,
    build_config,
)
from medi2i.data.deform import random_smooth_displacement, warp_image
from medi2i.models import (
    D_PARAMETERS,
    LARGE_PARAMETERS,
    R_PARAMETERS,
    SMALL_PARAMETERS,
    MultiScaleDiscriminator,
    RegistrationNet,
    UNetGenerator,
    Warp,
    build_discriminator,
    build_generator,
    build_registration,
    count_parameters,
    crop_padding,
    model_summary,
    pad_to_multiple,
    resolve_d_conditional,
    resolve_generator_config,
    warp,
)

TINY_G = {
    "preset": "custom",
    "base_channels": 8,
    "channel_mults": [1, 2, 2],
    "res_blocks": 1,
    "norm": "group",
    "activation": "silu",
    "dropout": 0.0,
    "attention": True,
    "out_activation": "none",
    "residual_output": False,
    "upsample": "bilinear",
}


def tiny_generator(**overrides) -> UNetGenerator:
    return build_generator(GeneratorConfig(**{**TINY_G, **overrides}))


def tiny_discriminator(conditional: bool = False, **kwargs) -> MultiScaleDiscriminator:
    cfg = DiscriminatorConfig(**{"base_channels": 8, **kwargs})
    return build_discriminator(cfg, conditional)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ------------------------------------------------------------------------------------------
# generator
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(37, 50), (64, 64), (5, 3), (1, 9)])
def test_generator_keeps_any_input_size(shape: tuple[int, int]) -> None:
    g = tiny_generator().eval()
    x = torch.rand(2, 1, *shape)
    with torch.no_grad():
        y = g(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("shape", [(37, 50), (32, 32), (3, 2), (1, 1)])
def test_pad_to_multiple_round_trip_is_exact(shape: tuple[int, int]) -> None:
    x = torch.rand(1, 3, *shape)
    padded, pad = pad_to_multiple(x, 16)
    assert padded.shape[-2] % 16 == 0 and padded.shape[-1] % 16 == 0
    assert torch.equal(crop_padding(padded, pad), x)  # pad + crop, never a resize
    if min(shape) > 16 and pad.top > 0:  # reflect padding mirrors the image about its edge
        assert torch.equal(padded[..., pad.top - 1, pad.left :][..., : shape[1]], x[..., 1, :])


@pytest.mark.parametrize("preset", ["small", "large"])
def test_generator_has_no_transposed_convolutions(preset: str) -> None:
    with torch.device("meta"):
        g = build_generator(GeneratorConfig(preset=preset))
    kinds = {type(m) for m in g.modules()}
    assert not kinds & {nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d}


def test_preset_parameter_counts() -> None:
    with torch.device("meta"):
        small = count_parameters(build_generator(GeneratorConfig(preset="small")))
        large = count_parameters(build_generator(GeneratorConfig(preset="large")))
    assert small == SMALL_PARAMETERS == 2_254_705
    assert small <= 3_000_000
    assert large == LARGE_PARAMETERS == 60_802_177
    assert abs(large - 61_000_000) / 61_000_000 < 0.02


def test_small_preset_forward_64() -> None:
    g = build_generator(GeneratorConfig(preset="small")).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert g(x).shape == (1, 1, 64, 64)


def test_resolve_generator_config_presets_and_custom() -> None:
    spec = resolve_generator_config(GeneratorConfig(preset="large", attention=False))
    assert spec.attention is False and spec.base_channels == 64  # explicit field wins
    assert spec.channel_mults == (1, 2, 4, 8, 8) and spec.multiple == 16
    with pytest.raises(ValueError, match=r"missing: .*res_blocks"):
        resolve_generator_config(GeneratorConfig(preset="custom", base_channels=8))
    assert resolve_generator_config(GeneratorConfig(**TINY_G)).multiple == 4


def test_residual_output_adds_the_input() -> None:
    g = tiny_generator(residual_output=True).eval()
    last = g.head[-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    x = torch.rand(2, 1, 21, 30)
    with torch.no_grad():
        assert torch.equal(g(x), x)
        nn.init.constant_(last.bias, 0.25)
        assert torch.allclose(g(x), x + 0.25)


def test_output_activations() -> None:
    x = torch.rand(1, 1, 16, 16) * 4 - 2
    with torch.no_grad():
        clamped = tiny_generator(out_activation="clamp", residual_output=True)(x)
        assert clamped.min() >= 0.0 and clamped.max() <= 1.0
        g = build_generator(
            GeneratorConfig(**{**TINY_G, "out_activation": "clamp"}), output_range=(-1.0, 1.0)
        )
        assert g(x).min() >= -1.0
        assert tiny_generator(out_activation="tanh")(x).abs().max() < 1.0


def test_generator_rejects_wrong_channels() -> None:
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        tiny_generator()(torch.rand(1, 2, 16, 16))


# ------------------------------------------------------------------------------------------
# registration + warp
# ------------------------------------------------------------------------------------------


def test_registration_parameter_count() -> None:
    assert count_parameters(build_registration(RegistrationConfig())) == R_PARAMETERS == 73_098
    assert count_parameters(build_registration(RegistrationConfig(attention=True))) == 89_866


@pytest.mark.parametrize("attention", [False, True])
def test_registration_initial_field_is_zero_and_warp_is_identity(attention: bool) -> None:
    r = build_registration(RegistrationConfig(attention=attention))
    moving, fixed = torch.rand(2, 1, 37, 50), torch.rand(2, 1, 37, 50)
    field = r(moving, fixed)
    assert field.shape == (2, 2, 37, 50)
    assert torch.count_nonzero(field) == 0
    assert torch.equal(Warp()(moving, field), moving)


def test_registration_rejects_mismatched_inputs() -> None:
    r = RegistrationNet()
    with pytest.raises(ValueError, match="fixed must have the shape"):
        r(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 17))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_field_is_exact_identity(dtype: torch.dtype) -> None:
    image = torch.rand(3, 2, 41, 29, dtype=dtype)
    out = warp(image, torch.zeros(3, 2, 41, 29))
    assert out.dtype == dtype
    assert torch.equal(out, image)


@pytest.mark.parametrize(("dy", "dx"), [(0, 3), (-2, 0), (4, -5)])
def test_integer_shift_matches_np_roll(dy: int, dx: int) -> None:
    image = torch.rand(1, 1, 30, 40)
    field = torch.empty(1, 2, 30, 40)
    field[:, 0], field[:, 1] = dy, dx
    out = warp(image, field)[0, 0].numpy()
    # out[y, x] = image[y + dy, x + dx]  <=>  np.roll by (-dy, -dx), valid where no wrap-around
    rolled = np.roll(image[0, 0].numpy(), shift=(-dy, -dx), axis=(0, 1))
    rows = slice(max(0, -dy), 30 - max(0, dy))
    cols = slice(max(0, -dx), 40 - max(0, dx))
    np.testing.assert_array_equal(out[rows, cols], rolled[rows, cols])
    if dx > 0:  # beyond the right edge the last column is replicated
        source_rows = np.arange(30)[rows] + dy
        edge = image[0, 0].numpy()[source_rows, -1:]
        np.testing.assert_array_equal(out[rows, 40 - dx :], np.repeat(edge, dx, axis=1))


def test_warp_agrees_with_numpy_deform_and_monai() -> None:
    rng = np.random.default_rng(3)
    image = rng.random((2, 45, 38)).astype(np.float32)
    disp = random_smooth_displacement((45, 38), 6.0, rng)
    expected = warp_image(image, disp)
    out = warp(torch.from_numpy(image)[None], torch.from_numpy(disp)[None])[0].numpy()
    np.testing.assert_allclose(out, expected, atol=1e-4)
    from monai.networks.blocks import Warp as MonaiWarp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        monai_out = MonaiWarp(mode="bilinear", padding_mode="border")(
            torch.from_numpy(image)[None], torch.from_numpy(disp)[None]
        )
    np.testing.assert_allclose(out, monai_out[0].numpy(), atol=1e-5)


def test_warp_is_float32_correct_under_bf16_autocast() -> None:
    image = torch.rand(1, 1, 24, 300)
    # a bf16-representable sub-pixel shift; positions near 299 need float32 to keep it
    field = torch.zeros(1, 2, 24, 300, dtype=torch.bfloat16)
    field[:, 1] = -0.375
    reference = warp(image, field.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = warp(image, field)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference, atol=1e-6, rtol=0)
    # the shift is really applied at the far end of the row (not rounded away)
    expected = 0.375 * image[..., 298] + 0.625 * image[..., 299]
    torch.testing.assert_close(out[..., 299], expected, atol=1e-6, rtol=0)


def test_warp_rejects_bad_field_shape() -> None:
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\) = \(1, 2, 8, 8\)"):
        warp(torch.rand(1, 1, 8, 8), torch.zeros(1, 2, 8, 9))


# ------------------------------------------------------------------------------------------
# discriminator
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_discriminator_default_parameter_count() -> None:
    with torch.device("meta"):
        assert count_parameters(build_discriminator(DiscriminatorConfig(), False)) == D_PARAMETERS
        assert count_parameters(build_discriminator(DiscriminatorConfig(), True)) == 5_527_426
    assert D_PARAMETERS == 5_525_378


@pytest.mark.slow
def test_every_d_conv_is_spectrally_normalised() -> None:
    d = build_discriminator(DiscriminatorConfig(), conditional=False).train()
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 * (3 + 2)  # scales x (n_layers + 1 blocks + final)
    x = torch.rand(2, 1, 32, 32)
    for _ in range(5):  # power iterations run on each training-mode forward
        d(x)
    for conv in convs:
        assert parametrize.is_parametrized(conv, "weight")
        weight = conv.weight.detach()
        sigma = torch.linalg.matrix_norm(weight.reshape(weight.shape[0], -1), ord=2)
        assert abs(sigma.item() - 1.0) < 0.05


def test_spectral_norm_can_be_turned_off() -> None:
    d = tiny_discriminator(spectral_norm=False)
    assert not any(parametrize.is_parametrized(m) for m in d.modules())


@pytest.mark.parametrize(("num_scales", "n_layers"), [(2, 3), (3, 2), (1, 1)])
def test_discriminator_output_structure(num_scales: int, n_layers: int) -> None:
    d = tiny_discriminator(num_scales=num_scales, n_layers=n_layers)
    out = d(torch.rand(3, 1, 40, 52))
    assert isinstance(out, list) and len(out) == num_scales
    sizes = []
    for logits, features in out:
        assert logits.ndim == 4 and logits.shape[:2] == (3, 1)
        assert isinstance(features, list) and len(features) == n_layers + 1
        assert all(f.shape[0] == 3 and f.shape[1] >= 8 for f in features)
        assert features[0].shape[1] == 8  # the first block has base_channels
        sizes.append(logits.shape[-1])
    assert sizes == sorted(sizes, reverse=True)  # finest scale first
    if n_layers == 3:  # 40x52 -> 21x27 -> 11x14 -> 6x8 (stride 2) -> 7x9 -> 8x10 (stride 1)
        assert out[0][0].shape[-2:] == (8, 10)


def test_conditional_discriminator_needs_cond() -> None:
    d = tiny_discriminator(conditional=True)
    x, cond = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    assert len(d(x, cond)) == 2
    with pytest.raises(ValueError, match=r"conditional: call D\(x, cond\).*\(2, 1, 32, 32\)"):
        d(x)
    with pytest.raises(ValueError, match="to match x"):
        d(x, torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="unconditional"):
        tiny_discriminator(conditional=False)(x, cond)


@pytest.mark.parametrize(
    ("choice", "r_on", "expected"),
    [("auto", True, False), ("auto", False, True), ("yes", True, True), ("no", False, False)],
)
def test_resolve_d_conditional(
    choice: str, r_on: bool, expected: bool, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = ModelConfig(R=RegistrationConfig(enabled=r_on), D=DiscriminatorConfig(conditional=choice))
    with caplog.at_level(logging.INFO, logger="medi2i.models"):
        assert resolve_d_conditional(cfg) is expected
    assert ("D is conditional" if expected else "D is unconditional") in caplog.text
    if choice == "auto":
        assert "R is on" in caplog.text if r_on else "R is off" in caplog.text


# ------------------------------------------------------------------------------------------
# gradients and summary
# ------------------------------------------------------------------------------------------


def _assert_all_grads(module: nn.Module, name: str) -> None:
    for pname, p in module.named_parameters():
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.count_nonzero(p.grad) > 0, f"{name}.{pname} has an all-zero gradient"


def test_gradients_reach_every_parameter() -> None:
    g = tiny_generator(dropout=0.1, res_blocks=2)
    r = build_registration(RegistrationConfig(base_channels=4, depth=2, attention=True))
    d = tiny_discriminator(conditional=True)
    x, y = torch.rand(2, 1, 36, 44), torch.rand(2, 1, 36, 44)

    # at initialisation R's last conv is zero: it must still get a gradient
    field = r(g(x), y)
    warp(g(x), field).sum().backward()
    assert torch.count_nonzero(r.flow.weight.grad) > 0
    assert torch.count_nonzero(r.flow.bias.grad) > 0

    # once R's output layer is non-zero, every parameter of G, R and D takes part
    for net in (g, r, d):
        net.zero_grad(set_to_none=True)
    with torch.no_grad():
        r.flow.weight.normal_(std=0.1)
    y_hat = g(x)
    warped = warp(y_hat, r(y_hat, y))
    loss = (warped - y).abs().mean()
    for logits, features in d(y_hat, x):
        loss = loss + logits.mean() + sum(f.mean() for f in features)
    loss.backward()
    _assert_all_grads(g, "G")
    _assert_all_grads(r, "R")
    _assert_all_grads(d, "D")


@pytest.mark.slow
def test_model_summary_lists_counts_and_shapes() -> None:
    cfg = build_config({"model": {"R": {"enabled": True}, "D": {"enabled": True}}})
    text = model_summary(cfg, image_size=64)
    assert f"{SMALL_PARAMETERS:,} parameters" in text
    assert f"{R_PARAMETERS:,} parameters" in text
    assert f"{D_PARAMETERS:,} parameters" in text  # unconditional: R is on
    assert "output (1, 1, 64, 64)" in text
    assert "field (1, 2, 64, 64)" in text
    assert "logits (1, 1, 11, 11)" in text
    assert "unconditional" in text
    assert "disabled" in model_summary(Config())


def test_warp_of_a_nan_field_is_nan_not_an_indexing_error():
    image = torch.rand(1, 1, 8, 8)
    disp = torch.zeros(1, 2, 8, 8)
    disp[0, 0, 2, 3] = float("nan")
    disp[0, 1, 5, 5] = float("inf")
    out = warp(image, disp)
    assert torch.isnan(out[0, 0, 2, 3])
    assert torch.isfinite(out[0, 0, 5, 5])  # an infinite displacement samples the border
    assert torch.isnan(out).sum() == 1
