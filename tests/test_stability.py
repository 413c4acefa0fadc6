"""Loss-jump / collapse detection: fires on real breaks, stays quiet on noise and improvement."""

from __future__ import annotations

import numpy as np
import pytest

from medi2i.run.stability import (
    LOSS_RISE_FACTOR,
    PSNR_DROP_DB,
    Jump,
    find_instabilities,
    find_jumps,
)

# The real case: a G-only run whose loss doubled at epoch 4 and whose lung PSNR fell 5.6 dB.
REAL_LOSS = [0.160, 0.118, 0.100, 0.204, 0.198, 0.201, 0.195]
REAL_PSNR = [28.0, 30.1, 31.2, 25.6, 25.9, 25.7, 26.0]


def test_real_case_loss_jump_is_found_once_at_its_epoch():
    jumps = find_jumps(range(1, 8), REAL_LOSS, key="train_loss_G", higher_is_better=False)
    assert len(jumps) == 1  # reported where it happens, not again while it stays up
    j = jumps[0]
    assert (j.epoch, j.key, j.before, j.after) == (4, "train_loss_G", 0.100, 0.204)
    assert "2x its best so far (0.1 at epoch 3)" in j.message


def test_real_case_psnr_collapse_is_found():
    jumps = find_jumps(range(1, 8), REAL_PSNR, key="val_psnr_mask", higher_is_better=True)
    assert [(j.epoch, j.before, j.after) for j in jumps] == [(4, 31.2, 25.6)]
    assert "5.6 dB below its best so far (31.2 at epoch 3)" in jumps[0].message


def test_noisy_decreasing_loss_does_not_fire():
    rng = np.random.default_rng(0)
    epochs = np.arange(1, 61)
    loss = 0.08 + 0.4 / epochs
    for _ in range(20):  # several noise draws: 5% multiplicative noise on each epoch mean
        noisy = loss * (1 + 0.05 * rng.standard_normal(epochs.size))
        assert find_jumps(epochs, noisy, key="train_loss_G", higher_is_better=False) == []


def test_noisy_improving_psnr_does_not_fire_even_with_a_fast_start():
    rng = np.random.default_rng(1)
    epochs = np.arange(1, 41)
    psnr = 32.0 - 12.0 * np.exp(-epochs / 3.0)  # +several dB per early epoch, then a plateau
    for _ in range(20):
        noisy = psnr + rng.uniform(-0.5, 0.5, epochs.size)  # the benchmark's largest noise
        assert find_jumps(epochs, noisy, key="val_psnr_mask", higher_is_better=True) == []


def test_just_inside_and_just_outside_the_thresholds():
    below = [0.10, LOSS_RISE_FACTOR * 0.10 * 0.99]
    above = [0.10, LOSS_RISE_FACTOR * 0.10 * 1.01]
    assert find_jumps([1, 2], below, key="loss", higher_is_better=False) == []
    assert len(find_jumps([1, 2], above, key="loss", higher_is_better=False)) == 1
    assert (
        find_jumps([1, 2], [30.0, 30.0 - PSNR_DROP_DB + 0.1], key="psnr", higher_is_better=True)
        == []
    )
    assert (
        len(
            find_jumps([1, 2], [30.0, 30.0 - PSNR_DROP_DB - 0.1], key="psnr", higher_is_better=True)
        )
        == 1
    )


def test_relative_threshold_for_metrics_without_decibels():
    assert find_jumps([1, 2, 3], [0.90, 0.92, 0.85], key="val_ssim", higher_is_better=True) == []
    (j,) = find_jumps([1, 2, 3], [0.90, 0.92, 0.80], key="val_ssim", higher_is_better=True)
    assert j.epoch == 3 and "13% below" in j.message


def test_slow_drift_against_the_running_minimum_and_a_second_jump_after_recovery():
    # each epoch +20% over the previous one: never a 1.5x step, but 1.73x the best by epoch 4
    drift = [0.1, 0.12, 0.144, 0.1728]
    assert [j.epoch for j in find_jumps(range(1, 5), drift, key="l", higher_is_better=False)] == [4]
    # jump, recovery, jump again: two events
    twice = [0.1, 0.2, 0.1, 0.09, 0.2]
    assert [j.epoch for j in find_jumps(range(1, 6), twice, key="l", higher_is_better=False)] == [
        2,
        5,
    ]


def test_unsorted_epochs_and_non_finite_values_are_handled():
    jumps = find_jumps(
        [4, 1, 3, 2], [0.204, 0.16, float("nan"), 0.10], key="l", higher_is_better=False
    )
    assert [(j.epoch, j.before) for j in jumps] == [(4, 0.10)]
    assert find_jumps([], [], key="l", higher_is_better=False) == []
    # a non-positive best cannot be compared by a factor
    assert find_jumps([1, 2], [-0.1, 0.5], key="l", higher_is_better=False) == []


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="one per epoch"):
        find_jumps([1, 2], [0.1], key="l", higher_is_better=False)
    with pytest.raises(ValueError, match="rise_factor"):
        find_jumps([1], [0.1], key="l", higher_is_better=False, rise_factor=1.0)


def test_find_instabilities_on_an_epoch_log():
    rows = [
        {"epoch": e, "train_loss_G": loss, "val_psnr_mask": psnr}
        for e, (loss, psnr) in enumerate(zip(REAL_LOSS, REAL_PSNR), start=1)
    ]
    jumps = find_instabilities(rows)
    assert [(j.epoch, j.key) for j in jumps] == [(4, "train_loss_G"), (4, "val_psnr_mask")]
    assert all(isinstance(j, Jump) for j in jumps)
    assert set(jumps[0].to_dict()) == {"epoch", "key", "before", "after", "message"}
    # whole-image PSNR stands in when there is no mask; a healthy log gives nothing
    no_mask = [{"epoch": r["epoch"], "val_psnr": r["val_psnr_mask"]} for r in rows]
    assert [j.key for j in find_instabilities(no_mask)] == ["val_psnr"]
    healthy = [{"epoch": e, "train_loss_G": 1 / e, "val_psnr_mask": 20 + e} for e in range(1, 9)]
    assert find_instabilities(healthy) == []
    assert find_instabilities([{"epoch": 1}]) == []


def test_gan_terms_rising_as_d_learns_is_not_a_jump():
    """With D on, G's total loss rises as D learns (the GAN term grows); the watched series is
    the reconstruction part, which keeps falling."""
    rows = [
        {
            "epoch": e,
            "train_loss_G": 0.3 + 0.1 * e,
            "train_w_recon": 0.3 / e,
            "val_psnr_mask": 30 + e,
        }
        for e in range(1, 8)
    ]
    assert find_instabilities(rows) == []
    without_recon = [{k: v for k, v in r.items() if k != "train_w_recon"} for r in rows]
    assert [j.key for j in find_instabilities(without_recon)] == ["train_loss_G"]
