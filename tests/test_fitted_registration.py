"""The fitted registration (model.R.kind: fit): its filter, its field model and its fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from medi2i.config import RegistrationConfig
from medi2i.data.deform import random_smooth_displacement, warp_image
from medi2i.models import build_registration
from medi2i.models.fitted_registration import (
    FittedRegistration,
    control_grid_adjoint,
    control_grid_field,
    control_grid_shape,
)
from medi2i.models.layers import gaussian_blur
from medi2i.models.warp import warp, warp_with_jacobian


def _textured(size: int, seed: int) -> np.ndarray:
    """Vessel-scale texture on a smooth background: what the fit must align."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    background = 0.5 + 0.2 * np.sin(3 * yy) * np.cos(2 * xx)
    texture = ndimage.gaussian_filter(rng.standard_normal((size, size)), 1.5)
    return (background + 0.05 * texture / texture.std()).astype(np.float32)


def _pair(size: int, seed: int, max_px: float) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    moving = _textured(size, seed)
    disp = random_smooth_displacement((size, size), max_px, np.random.default_rng(seed + 100))
    fixed = warp_image(moving, disp)
    as_t = lambda a: torch.from_numpy(a)[None, None]  # noqa: E731
    return as_t(moving), as_t(fixed), disp


@pytest.mark.parametrize("sigma", [1.0, 2.5])
def test_gaussian_blur_equals_scipy(sigma: float) -> None:
    image = np.random.default_rng(0).random((2, 3, 23, 31)).astype(np.float32)
    expected = np.stack(
        [
            [
                ndimage.gaussian_filter(c.astype(np.float64), sigma, mode="nearest", truncate=3.0)
                for c in n
            ]
            for n in image
        ]
    )
    out = gaussian_blur(torch.from_numpy(image), sigma).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-6)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(torch.from_numpy(image), 0.0)


def test_control_grid_shape_keeps_points_at_most_spacing_apart() -> None:
    assert control_grid_shape((256, 256), 32) == (9, 9)
    assert control_grid_shape((128, 100), 32) == (5, 5)
    assert control_grid_shape((257, 10), 32) == (9, 2)  # never fewer than the two corners
    with pytest.raises(ValueError, match="spacing"):
        control_grid_shape((64, 64), 0)


def test_control_grid_field_interpolates_the_control_points() -> None:
    control = torch.zeros(1, 2, 3, 4)
    control[0, 0] = 1.5  # constant rows component
    control[0, 1, 0, 0], control[0, 1, -1, -1] = -2.0, 3.0
    field = control_grid_field(control, (40, 50))
    assert torch.allclose(field[0, 0], torch.full((40, 50), 1.5), atol=1e-6)
    assert field[0, 1, 0, 0] == pytest.approx(-2.0, abs=1e-6)  # corners sit on corner pixels
    assert field[0, 1, -1, -1] == pytest.approx(3.0, abs=1e-6)


@pytest.mark.parametrize("grid, size", [((3, 4), (40, 50)), ((2, 2), (7, 5)), ((5, 9), (128, 256))])
def test_control_grid_field_equals_torch_bicubic_interpolation(grid, size) -> None:
    control = torch.randn(2, 2, *grid, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.interpolate(
        control, size=size, mode="bicubic", align_corners=True
    )
    assert torch.allclose(control_grid_field(control, size), expected, atol=1e-5)


def test_fit_recovers_a_known_smooth_misalignment() -> None:
    moving, fixed, disp = _pair(96, seed=1, max_px=3.0)
    field = FittedRegistration(grid_spacing=24)(moving, fixed)[0].numpy()
    before = np.linalg.norm(disp, axis=0).mean()
    after = np.linalg.norm(disp - field, axis=0).mean()
    assert before > 1.0
    assert after < 0.25 * before, (before, after)  # at least 75% of the misalignment removed


def test_warp_jacobian_equals_autograd_inside_and_at_the_border() -> None:
    """The hand-written derivative of the warp with respect to the field is autograd's,
    including pixels sampled beyond the border (clamped: zero) and several channels."""
    torch.manual_seed(0)
    image = torch.rand(2, 3, 20, 24, dtype=torch.float64)
    disp = (torch.rand(2, 2, 20, 24, dtype=torch.float64) - 0.5) * 8  # +-4 px: many clamped
    disp[0, :, 3, 5] = torch.tensor([0.25, -0.75], dtype=torch.float64)  # an interior sample
    upstream = torch.randn(2, 3, 20, 24, dtype=torch.float64)
    warped, jac = warp_with_jacobian(image, disp)
    field = disp.clone().requires_grad_(True)
    reference = warp(image, field)
    (reference * upstream).sum().backward()
    torch.testing.assert_close(warped, reference.detach(), atol=1e-12, rtol=0)
    by_hand = (upstream.unsqueeze(2) * jac).sum(1)
    torch.testing.assert_close(by_hand, field.grad, atol=1e-12, rtol=0)
    assert (by_hand == 0).any() and (by_hand != 0).any()  # both cases were exercised


def test_control_grid_adjoint_is_the_transpose_of_the_field_map() -> None:
    torch.manual_seed(1)
    control = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 2, 30, 41, dtype=torch.float64)
    (control_grid_field(control, (30, 41)) * upstream).sum().backward()
    torch.testing.assert_close(control_grid_adjoint(upstream, (4, 5)), control.grad)


def _autograd_fit(reg: FittedRegistration, moving, fixed, mask) -> torch.Tensor:
    """The fit written with autograd: the reference the hand-derived gradient must match."""
    n, _, h, w = moving.shape
    m = moving - gaussian_blur(moving, reg.detail_sigma)
    f = fixed - gaussian_blur(fixed, reg.detail_sigma)
    weights = 1.0 + (reg.lung_weight - 1.0) * mask
    weights = weights / weights.sum(dim=(1, 2, 3), keepdim=True)
    rows, cols = control_grid_shape((h, w), reg.grid_spacing)
    control = torch.zeros((n, 2, rows, cols), requires_grad=True)
    opt = torch.optim.Adam([control], lr=reg.step_px)
    for _ in range(reg.iterations):
        loss = ((warp(m, control_grid_field(control, (h, w))) - f).square() * weights).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return control_grid_field(control.detach(), (h, w))


def test_fit_equals_the_autograd_fit() -> None:
    moving, fixed, _ = _pair(64, seed=6, max_px=3.0)
    mask = torch.zeros_like(moving)
    mask[..., 10:40, 12:50] = 1.0
    reg = FittedRegistration(grid_spacing=16, iterations=25, lung_weight=10.0)
    reference = _autograd_fit(reg, moving, fixed, mask)
    assert reference.abs().max() > 1.0  # the fit moved: the comparison is not of zeros
    torch.testing.assert_close(reg(moving, fixed, mask), reference, atol=1e-4, rtol=0)


def test_fit_of_an_aligned_pair_stays_near_zero() -> None:
    moving, _, _ = _pair(64, seed=2, max_px=1.0)
    field = FittedRegistration(grid_spacing=16)(moving, moving.clone())
    assert field.abs().max() < 0.05


def test_each_pair_is_fitted_independently_of_its_batch() -> None:
    a_moving, a_fixed, _ = _pair(64, seed=3, max_px=2.0)
    b_moving, b_fixed, _ = _pair(64, seed=4, max_px=3.0)
    reg = FittedRegistration(grid_spacing=16, iterations=15)
    alone = reg(a_moving, a_fixed)
    batched = reg(torch.cat([a_moving, b_moving]), torch.cat([a_fixed, b_fixed]))
    torch.testing.assert_close(batched[:1], alone, atol=1e-5, rtol=0)


def test_field_is_detached_and_works_under_no_grad() -> None:
    moving, fixed, _ = _pair(48, seed=5, max_px=2.0)
    moving.requires_grad_(True)
    reg = FittedRegistration(grid_spacing=16, iterations=5)
    field = reg(moving, fixed)
    assert not field.requires_grad and moving.grad is None
    with torch.no_grad():
        torch.testing.assert_close(reg(moving, fixed), field)


def test_lung_weight_steers_the_fit_to_the_mask() -> None:
    """Two halves moved differently: the weighted half's motion wins where the grid is shared."""
    moving = torch.from_numpy(_textured(64, 6))[None, None]
    left = warp_image(moving[0, 0].numpy(), np.stack([np.zeros((64, 64)), np.full((64, 64), 1.5)]))
    fixed = torch.from_numpy(left)[None, None].clone()
    fixed[..., 32:] = moving[..., 32:]  # right half not moved
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :32] = 1.0
    reg_left = FittedRegistration(grid_spacing=64, lung_weight=50.0)  # one 2x2 grid: rigid-ish
    reg_right = FittedRegistration(grid_spacing=64, lung_weight=0.02)
    dx_left = reg_left(moving, fixed, mask)[0, 1].mean()
    dx_right = reg_right(moving, fixed, mask)[0, 1].mean()
    assert dx_left > 1.0 > 0.5 > dx_right


def test_bad_shapes_and_settings_are_named() -> None:
    reg = FittedRegistration()
    with pytest.raises(ValueError, match="same shape"):
        reg(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 30))
    with pytest.raises(ValueError, match="mask must have shape"):
        reg(torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 32), torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="iterations"):
        FittedRegistration(iterations=0)


def test_config_selects_the_fitted_kind() -> None:
    cfg = RegistrationConfig(enabled=True, kind="fit", grid_spacing=16, fit_iterations=7)
    reg = build_registration(cfg, lung_weight=4.0)
    assert isinstance(reg, FittedRegistration)
    assert (reg.grid_spacing, reg.iterations, reg.lung_weight) == (16, 7, 4.0)
    assert not list(reg.parameters())
    with pytest.raises(ValueError):
        RegistrationConfig(kind="elastix")
