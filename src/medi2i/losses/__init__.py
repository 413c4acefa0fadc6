"""Losses: reconstruction, adversarial (+ feature matching, R1), regularisers.

* :mod:`.reconstruction` - lung-weighted ``L1 + (1 − SSIM)``.
* :mod:`.adversarial` - LSGAN / hinge / BCE, D diagnostics, feature matching, R1.
* :mod:`.regularizers` - smoothness of R's displacement field.
* :mod:`.perceptual` - L1 between a frozen network's features (ImageNet VGG from a local file,
  or a previous run's D) of the prediction and the target.
* :mod:`.composite` - :class:`GeneratorLoss` and :class:`DiscriminatorLoss` built from
  ``LossConfig``, returning the total and the detached diagnostics (``w_recon``, ``w_gan``,
  ``w_fm``, ``w_smooth``, ``w_perceptual``, their shares, ``D_real``, ``D_fake``).
"""

from __future__ import annotations

from medi2i.losses.adversarial import (
    DECISION_THRESHOLDS,
    GAN_MODES,
    AdversarialLoss,
    DOutputs,
    GANMode,
    as_scales,
    discriminator_stats,
    feature_matching_loss,
    r1_due,
    r1_penalty,
    r1_scale,
)
from medi2i.losses.composite import (
    PART_NAMES,
    DiscriminatorLoss,
    GeneratorLoss,
    gradient_shares,
    loss_shares,
)
from medi2i.losses.perceptual import (
    PerceptualLoss,
    PerceptualWeightsError,
    build_perceptual_loss,
    load_discriminator_features,
    load_vgg_features,
)
from medi2i.losses.reconstruction import pixel_weights, reconstruction_loss
from medi2i.losses.regularizers import (
    SMOOTH_TYPES,
    SmoothType,
    bending_energy,
    gradient_l2,
    smoothness_loss,
)

__all__ = [
    "DECISION_THRESHOLDS",
    "GAN_MODES",
    "PART_NAMES",
    "SMOOTH_TYPES",
    "AdversarialLoss",
    "DOutputs",
    "DiscriminatorLoss",
    "GANMode",
    "GeneratorLoss",
    "PerceptualLoss",
    "PerceptualWeightsError",
    "SmoothType",
    "as_scales",
    "bending_energy",
    "build_perceptual_loss",
    "discriminator_stats",
    "feature_matching_loss",
    "gradient_l2",
    "gradient_shares",
    "load_discriminator_features",
    "load_vgg_features",
    "loss_shares",
    "pixel_weights",
    "r1_due",
    "r1_penalty",
    "r1_scale",
    "reconstruction_loss",
    "smoothness_loss",
]
