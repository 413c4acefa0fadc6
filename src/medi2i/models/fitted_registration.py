"""Registration by optimisation: a smooth field fitted to each training pair at every step.

The learnt R (:class:`~medi2i.models.registration.RegistrationNet`, RegGAN's formulation) has
to *learn* to register from the same few hundred steps that train G, through G's own loss. On
the bone-suppression benchmark that does not happen at the demo's budget: R alone, given the
*aligned truth* as its moving image, recovered 22% of the misalignment after 400 steps (47%
after 1,600), and inside G+R, where its moving image is G's imperfect output, 1-8%. Image
registration does not need learning to work on one pair: a smooth field fitted by gradient
descent to that pair (instance optimisation, as classical registration and the refinement
stage of learnt registration do) registered the aligned truth onto the target to 98% in 100
iterations.

What the fit compares matters as much. G's output differs from its target far more through
G's own errors (residual bone, blur: 33 dB whole-image PSNR against the truth early in
training) than through the misalignment (the misaligned target scores 39.6 dB against its
aligned truth), so a field fitted to raw intensities aligns G's errors, not the anatomy: fitted
on G-only outputs it *added* misalignment (-33% recovered with squared error, -15% with L1).
The fine detail that G reproduces and the misalignment moves - vessels, edges, the texture of
the lung - is what to compare: the **detail band** ``image - gaussian(image, sigma)`` with
``sigma`` 1 px recovered 71% of the misalignment on the same G-only outputs (sigma 2 px: 56%,
4 px: 30%; 0.7 px: 66%).

The field is parameterised by a coarse grid of control displacements, one every
``grid_spacing`` pixels, interpolated to every pixel by bicubic convolution
(``align_corners=True``: the outermost control points sit on the image's corner pixels). The
grid is the regulariser: with 32 px spacing a 256-px image has 9 x 9 control points, smooth at
the scale of patient motion and breathing; a finer grid fits G's errors again (12 points on a
256-px image: 34% recovered, 4-5 points: 72%). The fit minimises the lung-weighted mean squared
difference of the detail bands with Adam (``step_px`` per iteration), from a zero field, for
``iterations`` steps; each pair's control points are optimised independently (Adam's update
is element-wise and the loss is a sum of per-pair terms), so a pair's field does not depend on
the batch it came in.

In training (``model.R.kind: fit``) the field is fitted to G's output *detached* and given to
G's loss as a fixed frame: G learns through the warped image only, never through the field.
The fit still follows wherever G's output sits, so a displacement of G's whole output stays
free; :mod:`medi2i.models.field_centring` (``model.R.center``) takes that freedom away. There
are no weights: nothing to train, checkpoint or synchronise across ranks.
"""

from __future__ import annotations

import functools
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from medi2i.models.layers import gaussian_blur
from medi2i.models.warp import warp_with_jacobian

logger = logging.getLogger(__name__)

__all__ = [
    "FittedRegistration",
    "control_grid_adjoint",
    "control_grid_field",
    "control_grid_shape",
]


def control_grid_shape(size: tuple[int, int], spacing: int) -> tuple[int, int]:
    """Control points per axis so that neighbours are at most ``spacing`` pixels apart.

    Args:
        size: ``(H, W)`` of the field.
        spacing: largest distance between neighbouring control points, in pixels (>= 1).

    Returns:
        ``(rows, cols)``, each at least 2 (the corners).
    """
    if spacing < 1:
        raise ValueError(f"grid spacing must be >= 1 px, got {spacing}")
    return tuple(max(2, math.ceil((s - 1) / spacing) + 1) for s in size)  # type: ignore[return-value]


@functools.lru_cache(maxsize=32)
def _cubic_weights(points: int, size: int, device: torch.device) -> torch.Tensor:
    """``(size, points)``: bicubic convolution along one axis as a matrix (corners aligned).

    Bicubic interpolation is separable and linear in the control values, so interpolating an
    identity gives the weights once; applying them is two small matrix products, which on a CPU
    cost a fraction of ``F.interpolate``'s bicubic kernel and its backward at every fit step.
    """
    eye = torch.eye(points, device=device).reshape(points, 1, points, 1).expand(-1, -1, -1, 2)
    weights = F.interpolate(eye, size=(size, 2), mode="bicubic", align_corners=True)
    return weights[:, 0, :, 0].T.contiguous()


def control_grid_field(control: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Displacements at every pixel from control-point displacements (bicubic convolution).

    The same values as ``F.interpolate(control, size, mode="bicubic", align_corners=True)``
    (to float rounding), computed as ``rows_weights @ control @ cols_weights.T``.

    Args:
        control: ``(N, 2, rows, cols)`` displacements at the control points, in pixels; the
            outermost points sit on the corner pixels (``align_corners=True``).
        size: ``(H, W)`` of the field.

    Returns:
        ``(N, 2, H, W)`` displacement in pixels, differentiable with respect to ``control``.
    """
    rows, cols = control.shape[-2:]
    along_h = _cubic_weights(rows, int(size[0]), control.device).to(control.dtype)
    along_w = _cubic_weights(cols, int(size[1]), control.device).to(control.dtype)
    return along_h @ control @ along_w.T


def control_grid_adjoint(grad_field: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The gradient with respect to the control points from the gradient with respect to the
    field: the adjoint (transpose) of :func:`control_grid_field`'s linear map.

    Args:
        grad_field: ``(N, 2, H, W)`` gradient of a loss with respect to the field.
        grid: ``(rows, cols)`` of the control grid.

    Returns:
        ``(N, 2, rows, cols)``: ``rows_weights.T @ grad_field @ cols_weights``.
    """
    h, w = grad_field.shape[-2:]
    along_h = _cubic_weights(int(grid[0]), int(h), grad_field.device).to(grad_field.dtype)
    along_w = _cubic_weights(int(grid[1]), int(w), grad_field.device).to(grad_field.dtype)
    return along_h.T @ grad_field @ along_w


class FittedRegistration(nn.Module):
    """Fit a smooth field warping ``moving`` onto ``fixed``, per pair, by gradient descent.

    See the module docstring for why and for the measurements behind the defaults.

    Args:
        grid_spacing: pixels between neighbouring control points.
        iterations: Adam steps per fit.
        step_px: Adam's step size, in pixels of control displacement.
        detail_sigma: the images compared are ``image - gaussian(image, detail_sigma)``;
            0 compares raw intensities.
        lung_weight: weight of pixels inside the mask in the fit's mean squared difference
            (1 outside), as in the reconstruction loss.

    Raises:
        ValueError: on a setting out of range.
    """

    def __init__(
        self,
        grid_spacing: int = 32,
        iterations: int = 40,
        step_px: float = 0.2,
        detail_sigma: float = 1.0,
        lung_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if grid_spacing < 1 or iterations < 1 or step_px <= 0 or detail_sigma < 0:
            raise ValueError(
                "need grid_spacing >= 1, iterations >= 1, step_px > 0 and detail_sigma >= 0, "
                f"got {grid_spacing}, {iterations}, {step_px} and {detail_sigma}"
            )
        if lung_weight < 0:
            raise ValueError(f"lung_weight must be >= 0, got {lung_weight}")
        self.grid_spacing = int(grid_spacing)
        self.iterations = int(iterations)
        self.step_px = float(step_px)
        self.detail_sigma = float(detail_sigma)
        self.lung_weight = float(lung_weight)

    def extra_repr(self) -> str:
        return (
            f"grid_spacing={self.grid_spacing}, iterations={self.iterations}, "
            f"step_px={self.step_px:g}, detail_sigma={self.detail_sigma:g}, "
            f"lung_weight={self.lung_weight:g}"
        )

    def _detail(self, image: torch.Tensor) -> torch.Tensor:
        if self.detail_sigma == 0:
            return image
        return image - gaussian_blur(image, self.detail_sigma)

    def forward(
        self, moving: torch.Tensor, fixed: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Fit the field that warps ``moving`` onto ``fixed``.

        Args:
            moving: ``(N, C, H, W)`` image to be warped (G's output); not differentiated.
            fixed: ``(N, C, H, W)`` reference (the misaligned target).
            mask: optional ``(N, 1, H, W)`` region weighted ``lung_weight`` (in [0, 1]).

        Returns:
            ``(N, 2, H, W)`` displacement in pixels (channel 0 = rows), detached; apply it with
            :func:`~medi2i.models.warp.warp`.

        Raises:
            ValueError: on mismatched shapes.
        """
        if moving.ndim != 4 or fixed.shape != moving.shape:
            raise ValueError(
                "moving and fixed must have the same shape (N, C, H, W), got "
                f"{tuple(moving.shape)} and {tuple(fixed.shape)}"
            )
        n, _, h, w = moving.shape
        if mask is not None and (mask.ndim != 4 or mask.shape[0] != n or mask.shape[-2:] != (h, w)):
            raise ValueError(
                f"mask must have shape (N, 1, H, W) = {(n, 1, h, w)}, got {tuple(mask.shape)}"
            )
        with torch.no_grad(), torch.autocast(moving.device.type, enabled=False):
            m = self._detail(moving.detach().float())
            f = self._detail(fixed.detach().float())
            if mask is None:
                weights = torch.ones((n, 1, h, w), device=moving.device)
            else:
                weights = 1.0 + (self.lung_weight - 1.0) * mask.detach().float().mean(1, True)
            # the loss is a sum of per-pair weighted means: each pair's fit is independent of
            # the batch; 2 * weights is its derivative's factor on the residual
            weights = 2.0 * weights / weights.sum(dim=(1, 2, 3), keepdim=True)
            rows, cols = control_grid_shape((h, w), self.grid_spacing)
            control = torch.zeros((n, 2, rows, cols), device=moving.device, requires_grad=True)
            opt = torch.optim.Adam([control], lr=self.step_px)
            for _ in range(self.iterations):
                # the gradient of sum(weights * (warp(m, field) - f)^2) by hand (warp's
                # Jacobian and the grid's adjoint): the same numbers as autograd, cheaper
                warped, jac = warp_with_jacobian(m, control_grid_field(control, (h, w)))
                grad_field = ((weights * (warped - f)).unsqueeze(2) * jac).sum(1)
                control.grad = control_grid_adjoint(grad_field, (rows, cols))
                opt.step()
        return control_grid_field(control.detach(), (h, w))
