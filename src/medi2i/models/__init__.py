"""Networks: generator G, registration network R (+ warp), discriminator D.

Build them from the config with :func:`build_generator`, :func:`build_registration` and
:func:`build_discriminator` (after :func:`resolve_d_conditional`); :func:`model_summary` prints
their parameter counts and output shapes. R and D exist only during training, as do the frozen
feature networks of the perceptual loss (:mod:`.feature_nets`: ImageNet VGG, a trained D).
"""

from __future__ import annotations

from medi2i.models.discriminator import (
    D_PARAMETERS,
    MultiScaleDiscriminator,
    PatchDiscriminator,
    build_discriminator,
    resolve_d_conditional,
)
from medi2i.models.feature_nets import DiscriminatorFeatures, VGGFeatures
from medi2i.models.generator import (
    GENERATOR_PRESETS,
    LARGE_PARAMETERS,
    SMALL_PARAMETERS,
    GeneratorSpec,
    UNetGenerator,
    build_generator,
    resolve_generator_config,
)
from medi2i.models.layers import count_parameters, crop_padding, pad_to_multiple
from medi2i.models.registration import (
    R_PARAMETERS,
    RegistrationNet,
    Warp,
    build_registration,
    warp,
)
from medi2i.models.summary import model_summary

__all__ = [
    "D_PARAMETERS",
    "GENERATOR_PRESETS",
    "LARGE_PARAMETERS",
    "R_PARAMETERS",
    "SMALL_PARAMETERS",
    "DiscriminatorFeatures",
    "GeneratorSpec",
    "MultiScaleDiscriminator",
    "PatchDiscriminator",
    "RegistrationNet",
    "UNetGenerator",
    "VGGFeatures",
    "Warp",
    "build_discriminator",
    "build_generator",
    "build_registration",
    "count_parameters",
    "crop_padding",
    "model_summary",
    "pad_to_multiple",
    "resolve_d_conditional",
    "resolve_generator_config",
    "warp",
]
