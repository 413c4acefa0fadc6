"""Removing the systematic part of R's fields (model.R.center)."""

from __future__ import annotations

import pytest
import torch

from medi2i.models.field_centring import SystematicFieldRemoval, affine_parts


def _affine_field(n: int, h: int, w: int, coef: torch.Tensor) -> torch.Tensor:
    r = torch.arange(h, dtype=torch.float32).view(h, 1) - (h - 1) / 2
    c = torch.arange(w, dtype=torch.float32).view(1, w) - (w - 1) / 2
    field = coef[..., 0, None, None] + coef[..., 1, None, None] * r + coef[..., 2, None, None] * c
    return field.expand(n, 2, h, w).clone()


def test_affine_parts_recover_translation_and_slopes() -> None:
    coef = torch.tensor([[0.3, 0.01, -0.02], [-0.5, 0.004, 0.03]])
    field = _affine_field(3, 40, 56, coef)
    torch.testing.assert_close(affine_parts(field), coef.expand(3, 2, 3), atol=1e-6, rtol=0)


def test_a_displacement_common_to_every_field_is_removed_and_the_rest_kept() -> None:
    torch.manual_seed(0)
    common = torch.tensor([[0.3, 0.004, 0.0], [-0.25, 0.0, 0.006]])
    removal = SystematicFieldRemoval(momentum=0.9)
    for _ in range(200):  # random pair-to-pair fields around a common affine displacement
        own = _affine_field(4, 32, 32, 0.0 * common) + torch.randn(4, 2, 1, 1)
        out = removal(own + _affine_field(4, 32, 32, common))
    torch.testing.assert_close(removal.estimate(), common, atol=0.15, rtol=0)
    # what is left of the last batch is its own, pair-specific part
    assert (out - own).abs().mean() < 0.15


def test_no_update_no_gradient_and_nonfinite_batches_are_ignored() -> None:
    removal = SystematicFieldRemoval(momentum=0.0)
    field = torch.ones(2, 2, 8, 8, requires_grad=True)
    out = removal(field)
    assert torch.allclose(out, torch.zeros_like(out), atol=1e-6)  # momentum 0: this batch
    out.sum().backward()
    assert torch.equal(field.grad, torch.ones_like(field))  # the subtracted part is constant
    before = removal.state_dict()
    removal(torch.full((2, 2, 8, 8), float("nan")))
    assert torch.equal(removal.state_dict()["mean"], before["mean"])
    kept = removal(torch.zeros(1, 2, 8, 8), update=False)
    torch.testing.assert_close(kept, -torch.ones(1, 2, 8, 8))


def test_state_round_trip_and_bias_correction() -> None:
    removal = SystematicFieldRemoval(momentum=0.99)
    removal(torch.full((1, 2, 8, 8), 2.0))
    # one update: the raw average is 0.02, bias-corrected it is the batch's 2.0
    torch.testing.assert_close(removal.estimate(), torch.tensor([[2.0, 0, 0], [2.0, 0, 0]]))
    other = SystematicFieldRemoval(momentum=0.99)
    other.load_state_dict(removal.state_dict())
    torch.testing.assert_close(other.estimate(), removal.estimate())
    with pytest.raises(ValueError, match="momentum"):
        SystematicFieldRemoval(momentum=1.0)
