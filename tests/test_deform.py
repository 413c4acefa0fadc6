"""Tests for medi2i.data.deform: random smooth displacement fields and backward warping."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from medi2i.data.deform import displacement_stats, random_smooth_displacement, warp_image


def _norm(disp: np.ndarray) -> np.ndarray:
    return np.sqrt((disp.astype(np.float64) ** 2).sum(axis=0))


def test_zero_max_gives_exact_zeros_and_draws_nothing() -> None:
    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    disp = random_smooth_displacement((17, 23), 0.0, rng)
    assert disp.shape == (2, 17, 23)
    assert disp.dtype == np.float32
    assert not np.any(disp)
    assert rng.bit_generator.state == state


def test_zero_field_warp_is_exact_identity() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((3, 20, 30)).astype(np.float32)
    zeros = np.zeros((2, 20, 30), dtype=np.float32)
    np.testing.assert_array_equal(warp_image(image, zeros), image)
    np.testing.assert_array_equal(warp_image(image[0], zeros, order=0), image[0])


@pytest.mark.parametrize(
    ("shape", "max_px", "control_points", "affine_fraction"),
    [
        ((64, 64), 4.0, 4, 0.5),
        ((37, 90), 0.7, 3, 0.0),
        ((128, 48), 12.5, 6, 1.0),
        ((5, 7), 2.0, 4, 0.3),
        ((1, 1), 1.5, 4, 0.5),
    ],
)
def test_max_norm_is_exactly_max_px(shape, max_px, control_points, affine_fraction) -> None:
    for seed in range(3):
        disp = random_smooth_displacement(
            shape,
            max_px,
            np.random.default_rng(seed),
            control_points=control_points,
            affine_fraction=affine_fraction,
        )
        assert disp.shape == (2, *shape)
        assert disp.dtype == np.float32
        assert np.all(np.isfinite(disp))
        assert abs(_norm(disp).max() - max_px) < 1e-4


def test_same_seed_same_field_different_seed_different_field() -> None:
    a = random_smooth_displacement((32, 32), 3.0, np.random.default_rng(7))
    b = random_smooth_displacement((32, 32), 3.0, np.random.default_rng(7))
    c = random_smooth_displacement((32, 32), 3.0, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1


def test_field_is_smooth() -> None:
    max_px = 4.0
    disp = random_smooth_displacement((128, 128), max_px, np.random.default_rng(1))
    row_steps = np.abs(np.diff(disp, axis=1)).max()
    col_steps = np.abs(np.diff(disp, axis=2)).max()
    # With 4 control points over 128 px, neighbours differ by a few percent of the maximum at most
    # (white noise of the same size would differ by about 2 * max_px).
    assert row_steps < 0.1 * max_px
    assert col_steps < 0.1 * max_px
    # ... and the second differences are smaller still (no kinks).
    assert np.abs(np.diff(disp, n=2, axis=2)).max() < 0.01 * max_px


def test_pure_affine_field_is_affine() -> None:
    disp = random_smooth_displacement(
        (40, 60), 3.0, np.random.default_rng(2), affine_fraction=1.0
    ).astype(np.float64)
    np.testing.assert_allclose(np.diff(disp, n=2, axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.diff(disp, n=2, axis=2), 0.0, atol=1e-5)


def test_constant_integer_shift_matches_np_roll_in_valid_region() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((30, 40)).astype(np.float32)
    dy, dx = 2, -3
    disp = np.zeros((2, 30, 40), dtype=np.float32)
    disp[0], disp[1] = dy, dx
    # out[y, x] = image[y + dy, x + dx]  <=>  np.roll by (-dy, -dx)
    expected = np.roll(image, shift=(-dy, -dx), axis=(0, 1))
    valid = (slice(0, 30 - dy), slice(-dx, 40))
    for order in (0, 1):
        out = warp_image(image, disp, order=order)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out[valid], expected[valid], atol=1e-6)
    # Outside the image the border is replicated.
    out = warp_image(image, disp)
    np.testing.assert_allclose(out[-1, -dx:], image[-1, : 40 + dx], atol=1e-6)


def test_channel_zero_moves_rows_channel_one_moves_columns() -> None:
    image = np.zeros((9, 9), dtype=np.float32)
    image[4, 4] = 1.0
    down = np.zeros((2, 9, 9), dtype=np.float32)
    down[0] = -1.0  # out[y] = image[y - 1]: content moves down one row
    assert np.argwhere(warp_image(image, down)).tolist() == [[5, 4]]
    right = np.zeros((2, 9, 9), dtype=np.float32)
    right[1] = -2.0
    assert np.argwhere(warp_image(image, right)).tolist() == [[4, 6]]


def test_half_pixel_shift_is_bilinear_and_nearest_for_order_zero() -> None:
    image = np.tile(np.arange(8, dtype=np.float32), (3, 1))
    disp = np.zeros((2, 3, 8), dtype=np.float32)
    disp[1] = 0.5
    np.testing.assert_allclose(warp_image(image, disp)[:, :-1], image[:, :-1] + 0.5, atol=1e-6)
    nearest = warp_image(image, disp, order=0)
    assert set(np.unique(nearest)).issubset(set(image.ravel().tolist()))


def test_multichannel_warp_equals_per_channel_warp() -> None:
    rng = np.random.default_rng(4)
    stack = rng.random((2, 24, 24)).astype(np.float32)
    disp = random_smooth_displacement((24, 24), 3.0, rng)
    both = warp_image(stack, disp)
    np.testing.assert_array_equal(both[1], warp_image(stack[1], disp))


def test_agrees_with_monai_warp() -> None:
    torch = pytest.importorskip("torch")
    blocks = pytest.importorskip("monai.networks.blocks")
    rng = np.random.default_rng(5)
    image = rng.random((40, 50)).astype(np.float32)
    disp = random_smooth_displacement((40, 50), 3.0, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warp = blocks.Warp(mode="bilinear", padding_mode="border")
        theirs = warp(torch.from_numpy(image)[None, None], torch.from_numpy(disp)[None])
    np.testing.assert_allclose(warp_image(image, disp), theirs[0, 0].numpy(), atol=1e-4)


def test_displacement_stats_analytic() -> None:
    disp = np.zeros((2, 10, 10), dtype=np.float32)
    disp[0, :5], disp[1, :5] = 3.0, 4.0  # norm 5 on half the pixels, 0 elsewhere
    stats = displacement_stats(disp)
    assert set(stats) == {"max_px", "mean_px", "p95_px"}
    assert stats["max_px"] == pytest.approx(5.0)
    assert stats["mean_px"] == pytest.approx(2.5)
    assert stats["p95_px"] == pytest.approx(5.0)
    ramp = np.zeros((2, 1, 101))
    ramp[1, 0] = np.arange(101)
    stats = displacement_stats(ramp)
    assert stats["p95_px"] == pytest.approx(95.0)
    assert stats["mean_px"] == pytest.approx(50.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: random_smooth_displacement((8, 8), -1.0, np.random.default_rng()), "max_px"),
        (lambda: random_smooth_displacement((8,), 1.0, np.random.default_rng()), "shape"),
        (
            lambda: random_smooth_displacement(
                (8, 8), 1.0, np.random.default_rng(), control_points=1
            ),
            "control_points",
        ),
        (
            lambda: random_smooth_displacement(
                (8, 8), 1.0, np.random.default_rng(), affine_fraction=1.5
            ),
            "affine_fraction",
        ),
        (lambda: warp_image(np.zeros((8, 8)), np.zeros((2, 8, 9))), "disp"),
        (lambda: warp_image(np.zeros((8, 8)), np.zeros((2, 8, 8)), order=3), "order"),
        (lambda: warp_image(np.zeros(8), np.zeros((2, 8, 8))), "image"),
        (lambda: displacement_stats(np.zeros((3, 4, 4))), "disp"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call()
