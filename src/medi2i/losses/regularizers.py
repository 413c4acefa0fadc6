"""Smoothness regularisers for R's displacement field.

Fields are (N, 2, H, W) displacements in pixels, channel 0 = rows, channel 1 = columns (the
convention of MONAI's ``Warp`` and of RegGAN). Both regularisers are dimensionless for a field
in pixels, so the same weight works at any resolution for the same physical deformation.

``gradient_l2`` (first order, "diffusion")::

    mean(d_r u ²) + mean(d_c u ²),   d_r u = u[:, :, 1:, :] − u[:, :, :-1, :] (forward diffs)

means over batch, both channels and every difference. This is the same formula RegGAN applies
(its ``smooothing_loss``), so its ``Smooth_lamda`` transfers without rescaling.

``bending`` (second order)::

    mean(u_rr² + u_cc² + 2·u_rc²)   over the interior (H − 2) × (W − 2)

with the compact stencils ``u_rr = u[i+1] − 2u[i] + u[i−1]`` and
``u_rc = (u[i+1, j+1] − u[i+1, j−1] − u[i−1, j+1] + u[i−1, j−1]) / 4``; it is 0 for any affine
field (rotation, scaling, shear, translation), which the first-order term penalises.

Why hand-written rather than MONAI's ``DiffusionLoss`` / ``BendingEnergyLoss``:

* ``DiffusionLoss`` uses central differences ``(u[i+1] − u[i−1]) / 2``, which are exactly 0 on
  a period-2 (checkerboard) field: the one oscillation a conv net most easily produces goes
  unpenalised. Forward differences see it.
* ``BendingEnergyLoss`` changed stencils across the MONAI versions this package allows
  (``monai>=1.4``): 1.5.1 applies the central difference twice (a 5-point
  ``[1, 0, −2, 0, 1] / 4`` stencil, again blind to checkerboards, and needs > 4 px per side);
  1.6 uses the compact stencils above (but indexes with lists, which torch deprecates: a
  warning on every call). Writing the ten lines here pins the compact form on every version;
  the tests check it equals MONAI 1.6's ``BendingEnergyLoss(normalize=False)``.

RegGAN's published weights next to ours (``LossConfig``):

==========================  ==============================  ====================================
term                        RegGAN (``Yaml/CycleGan.yaml``)  medi2i default
==========================  ==============================  ====================================
correction (recon)          ``Corr_lamda`` 20, plain L1 on   ``recon_weight`` 1 × (L1 + 1 − SSIM),
                            images in [−1, 1]                lung-weighted, any data range
smoothness                  ``Smooth_lamda`` 10,             ``smooth_weight`` data_range / 4,
                            forward-difference L2 (above)    ``gradient_l2`` (same formula)
adversarial                 ``Adv_lamda`` 1, LSGAN,          ``gan_weight`` 1, ``gan_mode``
                            unconditional PatchGAN           lsgan, plus FM
==========================  ==============================  ====================================

Scale check: RegGAN's L1 on [−1, 1] is ``2 / data_range`` times an L1 measured in our units, so
its smoothness-to-L1 ratio 10 : 20 corresponds to ``smooth_weight = data_range / 4`` with
``recon_weight · l1_weight = 1`` (0.25 for [0, 1] data; tested on the presets). That is the
default; 0.5 would hold R twice as stiff. Measured with ``benchmarks/bench_registration.py``
(R alone registering the benchmark's aligned targets onto the misaligned ones, 300 steps of
the demo's optimiser): 0.25 and 0.5 reach the same registration at this budget, so the RegGAN
balance is kept rather than a tuned number.
"""

from __future__ import annotations

import logging
from typing import Literal

from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["SMOOTH_TYPES", "SmoothType", "bending_energy", "gradient_l2", "smoothness_loss"]

SmoothType = Literal["gradient_l2", "bending"]
SMOOTH_TYPES: tuple[str, ...] = ("gradient_l2", "bending")


def _check_field(field: Tensor, name: str, min_size: int) -> Tensor:
    if not isinstance(field, Tensor):
        raise TypeError(f"{name}: field must be a torch.Tensor, got {type(field).__name__}")
    if field.ndim != 4 or field.shape[1] != 2:
        raise ValueError(
            f"{name}: expected a displacement field of shape (N, 2, H, W), got {tuple(field.shape)}"
        )
    if min(field.shape[-2:]) < min_size:
        raise ValueError(
            f"{name}: expected H and W of at least {min_size}, got {tuple(field.shape[-2:])}"
        )
    return field.float()


def gradient_l2(field: Tensor) -> Tensor:
    """First-order smoothness: mean squared forward difference along rows plus along columns.

    Args:
        field: (N, 2, H, W) displacement in pixels, H and W at least 2.

    Returns:
        Scalar float32 loss; 0 for a constant field (pure translation).

    Raises:
        ValueError: on a wrong shape.
        TypeError: if ``field`` is not a tensor.
    """
    u = _check_field(field, "gradient_l2", 2)
    d_rows = u[:, :, 1:, :] - u[:, :, :-1, :]
    d_cols = u[:, :, :, 1:] - u[:, :, :, :-1]
    return d_rows.square().mean() + d_cols.square().mean()


def bending_energy(field: Tensor) -> Tensor:
    """Second-order smoothness: mean of ``u_rr² + u_cc² + 2·u_rc²`` over the interior.

    Args:
        field: (N, 2, H, W) displacement in pixels, H and W at least 3.

    Returns:
        Scalar float32 loss; 0 for any affine field.

    Raises:
        ValueError: on a wrong shape.
        TypeError: if ``field`` is not a tensor.
    """
    u = _check_field(field, "bending_energy", 3)
    centre = u[:, :, 1:-1, 1:-1]
    u_rr = u[:, :, 2:, 1:-1] - 2.0 * centre + u[:, :, :-2, 1:-1]
    u_cc = u[:, :, 1:-1, 2:] - 2.0 * centre + u[:, :, 1:-1, :-2]
    u_rc = 0.25 * (u[:, :, 2:, 2:] - u[:, :, 2:, :-2] - u[:, :, :-2, 2:] + u[:, :, :-2, :-2])
    return (u_rr.square() + u_cc.square() + 2.0 * u_rc.square()).mean()


def smoothness_loss(field: Tensor, kind: SmoothType | str = "gradient_l2") -> Tensor:
    """Smoothness of a displacement field, by name (``LossConfig.smooth_type``).

    Args:
        field: (N, 2, H, W) displacement in pixels.
        kind: ``"gradient_l2"`` (:func:`gradient_l2`) or ``"bending"`` (:func:`bending_energy`).

    Returns:
        Scalar float32 loss.

    Raises:
        ValueError: on an unknown ``kind`` or a wrong field shape.
    """
    if kind == "gradient_l2":
        return gradient_l2(field)
    if kind == "bending":
        return bending_energy(field)
    raise ValueError(f"smoothness_loss: kind must be one of {list(SMOOTH_TYPES)}, got {kind!r}")
