"""Bone suppression ratios: the two-sided residue measure and the published one."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from medi2i.metrics.checks import check_input, check_mask, check_pair, metric_function
from medi2i.metrics.maps import IMAGE_DIMS, masked_mean, masked_sum

logger = logging.getLogger(__name__)

NO_BONE_REL_ENERGY = 1e-12
"""Below this share of the images' energy an input counts as having no bone (float32 rounding)."""


def bsr_values(
    pred: Tensor, target: Tensor, image: Tensor, mask: Tensor | None, bone_is_bright: bool
) -> Tensor:
    sign = 1.0 if bone_is_bright else -1.0

    def remaining_bone_energy(x: Tensor) -> Tensor:
        diff = x - target
        diff = diff - masked_mean(diff, mask, dims=(2, 3))[:, :, None, None]
        return masked_sum(torch.relu(sign * diff) ** 2, mask)

    input_energy = remaining_bone_energy(image)
    removed = 1.0 - remaining_bone_energy(pred) / input_energy
    # "No bone" up to float32 rounding: residue RMS below 1e-6 of the images' RMS.
    scale = masked_sum(image**2 + target**2, mask)
    return torch.where(input_energy > NO_BONE_REL_ENERGY * scale, removed, torch.nan)


def bsr_lit_values(pred: Tensor, target: Tensor, image: Tensor) -> Tensor:
    """The published BSR per image; NaN where ``input == target`` (see :func:`bsr_lit`)."""
    residue = target - pred
    residue = torch.relu(residue - residue.mean(IMAGE_DIMS, keepdim=True))
    bone_energy = ((image - target) ** 2).sum(IMAGE_DIMS)
    has_bone = bone_energy > 0
    if logger.isEnabledFor(logging.DEBUG):  # counting needs a device-to-host sync
        no_bone = int((~has_bone).sum())
        if no_bone:
            logger.debug(
                "bsr_lit: input equals target (no bone) for %d of %d image(s); their value is NaN",
                no_bone,
                has_bone.shape[0],
            )
    return torch.where(has_bone, 1.0 - (residue**2).sum(IMAGE_DIMS) / bone_energy, torch.nan)


@metric_function
def bsr(
    pred: Tensor,
    target: Tensor,
    input: Tensor,  # the project's name for the network input
    *,
    mask: Tensor | None = None,
    bone_is_bright: bool = True,
) -> Tensor:
    """Bone suppression ratio per image (higher is better; 1 = all bone removed).

    Implemented exactly as::

        d(x)   = x − target                      (per image and channel)
        d'(x)  = d(x) − mean_M(d(x))             (the mean offset inside M is removed)
        E(x)   = Σ_M relu(s · d'(x))²            (s = +1 if bone is bright, −1 otherwise)
        BSR    = 1 − E(pred) / E(input)

    ``input − target`` is the bone image. In the usual display (bone bright, as in a
    radiograph shown white-on-black) bone left in the prediction makes it *brighter* than the
    target, so the remaining bone is ``relu(pred' − target)``, the positive part; the issue's
    ``relu(target − pred)`` would score the unsuppressed input as perfect (its positive part is
    zero wherever bone is bright) and is the right sign only for dark bone (``bone_is_bright=
    False``, e.g. MONOCHROME1 data). Removing the mean offset makes a global brightness shift of
    the prediction cost nothing (PSNR/MAE report it). The denominator applies the same
    definition to the input itself (instead of ``Σ bone²``), so BSR is exactly 0 for
    ``pred = input`` and exactly 1 for ``pred = target + constant``; a prediction that keeps
    half the bone (``target + bone / 2``) scores 0.75 (the energy is quadratic). Negative values
    mean more bright residue than the input had. One-sided by design: only the bright side of
    the offset-corrected difference counts as bone; a prediction darker than the target is
    penalised only through the mean correction (which lifts the other pixels), so judge
    over-suppression with MAE/PSNR/SSIM.

    Args:
        pred: prediction, (N, C, H, W) tensor (or numpy array).
        target: bone-free reference, same shape.
        input: the network input (with bones), same shape.
        mask: optional (N, 1, H, W) or (N, C, H, W) mask; sums and mean offsets are taken
            inside it.
        bone_is_bright: True when bone raises the intensity (input − target ≥ 0 on bone).

    Returns:
        (N,) float32 tensor; NaN for an empty mask or when the input has no bone residue
        (``E(input) ≤ 1e-12 · Σ_M (input² + target²)``, i.e. zero up to float32 rounding).

    Raises:
        ValueError: on mismatched shapes.
        TypeError: on arguments of the wrong type.
    """
    p, t = check_pair(pred, target, "bsr")
    x = check_input(input, p, "bsr")
    m = check_mask(mask, p, "bsr")
    return bsr_values(p, t, x, m, bone_is_bright)


@metric_function
def bsr_lit(
    pred: Tensor,
    target: Tensor,
    input: Tensor,  # the project's name for the network input
) -> Tensor:
    """Bone suppression ratio per image exactly as the bone-suppression papers compute it.

    The ``cal_BSR`` of GL-LCM's and BS-LDM's ``metrics.py`` (``cxr`` = ``input``, ``gt`` =
    ``target``, ``bs`` = ``pred``), reported under the key ``bsr_lit`` so that it is never
    mistaken for :func:`bsr`::

        r       = target − pred                  (per image)
        BSR_lit = 1 − Σ relu(r − mean(r))² / Σ (input − target)²

    i.e. ``1 − Σ relu(gt − (bs + mean(gt − bs)))² / Σ (cxr − gt)²``. Sums and the mean run over
    the whole image (all pixels and channels of one image); there is no masked variant. The
    papers average the per-image values over the test images, as callers here do. (The papers
    also resize every image to a fixed size first; that belongs to their pipeline, not to the
    formula, and is not done here.)

    How it differs from :func:`bsr` (the two are not comparable):

    * **Which side counts.** Only pixels with ``target > pred + offset`` count (the prediction
      *darker* than the truth after the mean offset is removed), where ``bsr`` counts the
      prediction *brighter* than the truth. Reading this side as bone left unsuppressed is
      right only when bone darkens the image. On data with bright bone (``input − target ≥
      0`` on bone, as in the papers' own sample pairs) the counted side is dark residue -
      over-suppression - and bone left in the prediction counts only through the mean offset,
      which it raises so that the bone-free pixels appear too dark: keeping a fraction
      ``0 ≤ k ≤ 1`` of the bone (``pred = target + k·bone``) scores
      ``1 − k²·(1 − BSR_lit(input))``.
    * **Mean offset.** Removed from ``target − pred``, as in ``bsr`` (a constant brightness
      shift of the prediction costs nothing).
    * **Normaliser.** The input's bone energy ``Σ (input − target)²`` (no offset removed, no
      one-sided cut), where ``bsr`` applies its own numerator to the input. Hence ``pred =
      target + c`` scores exactly 1 in both, but the unprocessed input does **not** score 0:
      it scores ``1 − Σ relu(mean(b) − b)² / Σ b²`` with ``b = input − target`` (``1 −
      f·(1 − f)`` for bone of constant height covering a fraction ``f`` of the image; 0.66 to
      0.89 on the three sample pairs shipped with BS-LDM), and a prediction that carves the
      bone out dark (``pred = target − b``) scores ``1 − Σ relu(b − mean(b))² / Σ b²``
      (``1 − (1 − f)²``). Always read it against the identity baseline.

    Args:
        pred: prediction, (N, C, H, W) tensor (or numpy array).
        target: bone-free reference, same shape.
        input: the network input (with bones), same shape.

    Returns:
        (N,) float32 tensor, at most 1; NaN where ``input == target`` everywhere (no bone to
        suppress; the count of such images is logged at DEBUG level).

    Raises:
        ValueError: on mismatched shapes.
        TypeError: on arguments of the wrong type.
    """
    p, t = check_pair(pred, target, "bsr_lit")
    x = check_input(input, p, "bsr_lit")
    return bsr_lit_values(p, t, x)
