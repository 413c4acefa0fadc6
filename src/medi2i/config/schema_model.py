"""The ``model`` section: the generator ``G``, registration ``R`` and discriminator ``D``.

Fields left ``null`` in :class:`GeneratorConfig` take its preset's values (resolved by
:func:`medi2i.models.generator.resolve_generator_config`); R and D are off by default and exist
only during training. ``Network`` names the three networks.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from medi2i.config.section import _Section

Network = Literal["G", "R", "D"]


class GeneratorConfig(_Section):
    """UNet generator G. ``preset`` fills unspecified fields (``small``: CPU, ``large``: ~61M).

    Every field left ``null`` takes the preset's value (see
    :func:`medi2i.models.generator.resolve_generator_config`); ``preset: custom`` requires all
    of them. ``channel_mults`` gives one width multiplier of ``base_channels`` per resolution
    level, so the UNet halves the size ``len(channel_mults) - 1`` times and inputs are
    reflect-padded to a multiple of ``2**(len(channel_mults) - 1)`` (then cropped back).
    ``upsample`` is the interpolation before each decoder convolution (never a transposed conv).
    ``out_activation: clamp`` clips to the data's output range; ``residual_output`` makes
    ``G(x) = x + UNet(x)``.
    """

    preset: Literal["small", "large", "custom"] = "small"
    base_channels: int | None = Field(None, ge=4)
    channel_mults: list[int] | None = None
    res_blocks: int | None = Field(None, ge=1)
    norm: Literal["group", "instance", "batch", "none"] | None = None
    activation: Literal["silu", "relu", "leaky_relu", "gelu"] | None = None
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    attention: bool | None = None
    out_activation: Literal["none", "sigmoid", "tanh", "clamp"] | None = None
    residual_output: bool | None = None
    upsample: Literal["bilinear", "nearest"] | None = None

    @field_validator("channel_mults")
    @classmethod
    def _check_channel_mults(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and not (1 <= len(v) <= 8 and all(m >= 1 for m in v)):
            raise ValueError(f"must be 1 to 8 integers >= 1 (one per level), got {v}")
        return v


class RegistrationConfig(_Section):
    """Registration R (RegGAN idea): warps G's output onto the misaligned target.

    ``kind: net`` is RegGAN's learnt UNet (``base_channels``, ``depth``, ``attention``), trained
    through G's loss; ``kind: fit`` fits a smooth field to each pair at every step
    (``grid_spacing``, ``fit_iterations``, ``fit_step_px``, ``detail_sigma``; no weights).
    """

    enabled: bool = False
    kind: Literal["net", "fit"] = Field(
        "net",
        description="'net' = a learnt registration UNet trained with G's loss (RegGAN); 'fit' "
        "= a smooth field fitted to each pair's detail band at every step, a fixed frame for "
        "G's loss (models/fitted_registration.py)",
    )
    base_channels: int = Field(8, ge=2)
    depth: int = Field(3, ge=1, le=6)
    attention: bool = False
    grid_spacing: int = Field(
        32, ge=4, description="kind fit: pixels between the field's control points"
    )
    fit_iterations: int = Field(40, ge=1, le=1000, description="kind fit: Adam steps per fit")
    fit_step_px: float = Field(0.2, gt=0, le=10, description="kind fit: Adam's step size in pixels")
    detail_sigma: float = Field(
        1.0,
        ge=0,
        le=16,
        description="kind fit: compare image - gaussian(image, sigma); 0 = raw intensities",
    )
    center: bool = Field(
        False,
        description="subtract the running mean of the fields' affine part (translation and "
        "linear) before the warp: misalignment is taken to be random, so a displacement "
        "common to the data is G's to fix (models/field_centring.py)",
    )
    center_momentum: float = Field(0.99, ge=0, lt=1, description="center: running-mean momentum")


class DiscriminatorConfig(_Section):
    """Multi-scale PatchGAN D with spectral normalisation (pix2pixHD defaults).

    ``conditional``: ``auto`` = unconditional when the training pairs are misaligned
    (``data.pairs``) or R is on (a D conditioned on the input sees misaligned real pairs and
    aligned fake ones, and can learn to reward misalignment - the RegGAN lesson); conditional
    (input concatenated, pix2pix) only for aligned pairs with R off.
    """

    enabled: bool = False
    num_scales: int = Field(2, ge=1, le=4)
    n_layers: int = Field(3, ge=1, le=6)
    base_channels: int = Field(64, ge=4)
    spectral_norm: bool = True
    conditional: Literal["auto", "yes", "no"] = "auto"
    input: Literal["detail", "raw"] = Field(
        "detail",
        description="what D sees: 'detail' = the image minus its 7x7 local mean, scaled to "
        "unit std on the real targets (a spectrally normalised D cannot separate raw "
        "radiographs whose differences are ~1% of the range), or 'raw' images",
    )
    frame: Literal["output", "target"] = Field(
        "output",
        description="which image D judges as fake: 'output' = G's output as it is "
        "(position-free); 'target' = with R on, G's output warped into the target's frame, "
        "the image the reconstruction compares, so that real and fake pairs share the "
        "targets' misalignment and a conditional D stays fair",
    )

    @field_validator("conditional", mode="before")
    @classmethod
    def _yes_no(cls, value: object) -> object:
        # YAML 1.1 reads a bare `yes` / `no` (in a file or an override) as true / false
        return {True: "yes", False: "no"}.get(value, value) if isinstance(value, bool) else value


class ModelConfig(_Section):
    """The three networks; R and D exist only during training."""

    G: GeneratorConfig = Field(default_factory=GeneratorConfig)
    R: RegistrationConfig = Field(default_factory=RegistrationConfig)
    D: DiscriminatorConfig = Field(default_factory=DiscriminatorConfig)
