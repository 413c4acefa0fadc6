"""The sections that shape a training run: ``loss``, ``optim``, ``train``, ``eval``, ``logging``.

:class:`LossConfig` weighs G's loss terms (:class:`PerceptualConfig` names the frozen feature
network of its optional perceptual term); :class:`OptimConfig` holds one
:class:`OptimizerConfig` per network plus the learning-rate schedule, warm-up and gradient
clipping; :class:`TrainConfig` the run's length, precision, EMA, checkpoints and initialisation;
:class:`EvalConfig` how validation picks the best checkpoint; :class:`LoggingConfig` where and how
often diagnostics are written.
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Literal

from pydantic import Field, field_validator, model_validator

from medi2i.config.section import _Section

# --------------------------------------------------------------------------------------------
# loss
# --------------------------------------------------------------------------------------------

PerceptualNetwork = Literal["vgg16", "vgg19", "discriminator"]

PERCEPTUAL_WEIGHT_FILES: dict[str, tuple[str, str]] = {
    "vgg16": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "vgg19": ("vgg19-dcbb9e9d.pth", "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"),
}
"""The local file each VGG network loads (torchvision's ImageNet weights) and where a user can
download it; medi2i itself downloads nothing."""


def perceptual_weights_hint(network: str) -> str:
    """What ``loss.perceptual.weights`` must name for ``network`` (used in error messages)."""
    if network in PERCEPTUAL_WEIGHT_FILES:
        name, url = PERCEPTUAL_WEIGHT_FILES[network]
        return (
            f"the local path of torchvision's ImageNet {network.upper()} weights file {name} "
            f"(medi2i downloads nothing: fetch it yourself from {url})"
        )
    return (
        "a medi2i run directory (its best checkpoint, else its last) or a checkpoint .pt of a "
        "run with an unconditional D, whose frozen D gives the features (works offline)"
    )


class PerceptualConfig(_Section):
    """The frozen feature network of G's perceptual term (``loss.perceptual_weight``).

    ``vgg16`` / ``vgg19``: torchvision's ImageNet VGG ``features`` stack, loaded from the local
    file ``weights`` names (:data:`PERCEPTUAL_WEIGHT_FILES`); ``layers`` picks its ReLU outputs
    (``relu1_2``, ``relu2_2``, ...; null: ``relu1_2, relu2_2, relu3_3, relu4_3`` for vgg16,
    ``relu1_2, relu2_2, relu3_4, relu4_4`` for vgg19). ``discriminator``: the D of a previous
    medi2i run (``weights``: its run directory or a checkpoint), every intermediate feature map of
    every scale; ``layers`` must stay null. Networks and input normalisation:
    ``medi2i.models.feature_nets``.
    """

    network: PerceptualNetwork = Field(
        "vgg16", description="feature network: vgg16, vgg19 (ImageNet) or a run's discriminator"
    )
    weights: str | None = Field(
        None,
        description="local file of the network's weights: vgg16-397923af.pth / "
        "vgg19-dcbb9e9d.pth (torchvision's), or a run directory / checkpoint for discriminator; "
        "nothing is downloaded",
    )
    layers: list[str] | None = Field(
        None,
        min_length=1,
        description="VGG layers compared (relu1_1, relu1_2, relu2_1, ...); null: the network's "
        "default set",
    )

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"a layer is listed twice in {value}")
        return value

    @model_validator(mode="after")
    def _discriminator_layers(self) -> PerceptualConfig:
        if self.network == "discriminator" and self.layers is not None:
            raise ValueError(
                "layers: the discriminator's features are every intermediate feature map of "
                f"every scale; leave layers null (got {self.layers})"
            )
        return self


class LossConfig(_Section):
    """G's loss: ``w_recon + gan_weight*GAN + feat_match_weight*FM (+ smooth_weight*smooth)
    (+ perceptual_weight*perceptual)``.

    ``w_recon = recon_weight * (l1_weight*L1 + ssim_weight*(1 - SSIM))`` with each pixel
    weighted 1 outside the mask and ``lung_weight`` inside. RegGAN's published settings for
    reference: correction (recon) 20, smoothness 10, adversarial 1. Their L1 is on [-1, 1]
    images (twice an L1 in [0, 1] units), so their smoothness-to-L1 balance is
    ``smooth_weight = data_range / 4`` at ``recon_weight`` 1: 0.25 for [0, 1] data, the default
    (see ``medi2i.losses.regularizers``). ``r1_weight`` is gamma in ``gamma/2 * E|grad D(real)|^2``
    (0 = off), applied every ``r1_interval`` D steps and then multiplied by the interval (lazy
    regularisation, StyleGAN2). ``perceptual_weight`` (0 = off) weighs a mean L1 between frozen
    features of the prediction and of the target (``perceptual``: which network, from which
    local file; :mod:`medi2i.losses.perceptual`). Conventions of every term: ``medi2i.losses``.
    """

    recon_weight: float = Field(1.0, ge=0.0)
    l1_weight: float = Field(1.0, ge=0.0)
    ssim_weight: float = Field(1.0, ge=0.0)
    lung_weight: float = Field(10.0, ge=0.0)
    gan_mode: Literal["lsgan", "hinge", "bce"] = "lsgan"
    gan_weight: float = Field(
        0.05,
        ge=0.0,
        description="weight of the adversarial term; 0.05 with D on the detail band "
        "(model.D.input: detail) leaves the reconstruction most of G's gradient (gshare_*)",
    )
    feat_match_weight: float = Field(
        0.5,
        ge=0.0,
        description="weight of feature matching on D's features, compared in the target's "
        "frame; 0.5 with D on the detail band (the weights 1 / 10 of a raw-input D gave GAN "
        "and FM 92% of G's gradient on the detail band)",
    )
    r1_weight: float = Field(0.0, ge=0.0)
    r1_interval: int = Field(16, ge=1)
    smooth_weight: float | None = Field(
        None,
        ge=0.0,
        description="weight of R's smoothness term; default (null): data_range / 4, RegGAN's "
        "balance (smoothness 10 against an L1 on [-1, 1] weighted 20)",
    )
    smooth_type: Literal["gradient_l2", "bending"] = "gradient_l2"
    recon_scales: list[float] = Field(
        default_factory=lambda: [1.0],
        min_length=1,
        max_length=5,
        description="multi-resolution reconstruction: the weight of L1+SSIM at full, 1/2, 1/4, "
        "... resolution (2x2 average pooling of images and mask), normalised by their sum; "
        "[1] = full resolution only, e.g. [1, 0.5, 0.25]",
    )
    lung_weight_start: float | None = Field(
        None,
        ge=0.0,
        description="lung-weight curriculum: G's reconstruction weights the lung by this at "
        "epoch 0 and ramps to lung_weight over lung_weight_ramp_epochs (null: lung_weight "
        "throughout; R's fit keeps lung_weight)",
    )
    lung_weight_ramp_epochs: int = Field(
        0, ge=0, description="epochs of the lung-weight ramp (needs lung_weight_start)"
    )
    lung_weight_ramp: Literal["linear", "cosine"] = Field(
        "linear", description="shape of the lung-weight ramp"
    )
    perceptual_weight: float = Field(
        0.0,
        ge=0.0,
        description="weight of the perceptual term, an L1 between frozen features of the "
        "prediction (in the target's frame) and of the target; 0 = off; try 0.1-1.0 (relative "
        "to l1_weight's L1); needs loss.perceptual.weights",
    )
    perceptual: PerceptualConfig = Field(default_factory=PerceptualConfig)

    @field_validator("recon_scales")
    @classmethod
    def _recon_scales(cls, value: list[float]) -> list[float]:
        if any(w < 0 for w in value) or sum(value) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {value}")
        return value

    @model_validator(mode="after")
    def _curriculum(self) -> LossConfig:
        if self.lung_weight_start is not None and self.lung_weight_ramp_epochs < 1:
            raise ValueError(
                "lung_weight_start needs lung_weight_ramp_epochs >= 1 (the epochs of the ramp)"
            )
        return self

    @model_validator(mode="after")
    def _perceptual_weights(self) -> LossConfig:
        if self.perceptual_weight > 0 and self.perceptual.weights is None:
            network = self.perceptual.network
            raise ValueError(
                f"perceptual_weight={self.perceptual_weight} needs perceptual.weights: for "
                f"network {network!r}, {perceptual_weights_hint(network)}; or set "
                "perceptual_weight: 0 (off)"
            )
        return self


# --------------------------------------------------------------------------------------------
# optim
# --------------------------------------------------------------------------------------------


class OptimizerConfig(_Section):
    """Adam(W) settings of one network; ``grad_clip`` overrides the global one when set."""

    lr: float = Field(2e-4, gt=0.0)
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float | None = Field(None, gt=0.0)

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"each beta must be in [0, 1), got {list(v)}")
        return v


class OptimConfig(_Section):
    """Optimisers and learning-rate schedule.

    The rate rises linearly from 0 over ``warmup_epochs`` (skipped entirely with
    ``skip_warmup: true`` - useful when starting from ``pretrained_G``), then follows
    ``schedule``. ``grad_clip`` is the global gradient-norm limit per network (``null`` = off).
    """

    G: OptimizerConfig = Field(default_factory=OptimizerConfig)
    R: OptimizerConfig = Field(default_factory=OptimizerConfig)
    D: OptimizerConfig = Field(default_factory=OptimizerConfig)
    grad_clip: float | None = Field(5.0, gt=0.0)
    warmup_epochs: float = Field(1.0, ge=0.0)
    skip_warmup: bool = False
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    schedule_unit: Literal["epoch", "step"] = "step"
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)


# --------------------------------------------------------------------------------------------
# train / eval / logging
# --------------------------------------------------------------------------------------------


PHASE_NETWORKS = ("G", "R", "D")


class PhaseConfig(_Section):
    """One phase of a run (``train.phases``): the networks that train, for how many epochs.

    A network that is not in a phase takes no part in its steps: G alone is compared with the
    target directly, without R's warp, and without D's verdict.
    """

    networks: list[Literal["G", "R", "D"]] = Field(
        min_length=1, description="the networks trained in this phase; G is in every phase"
    )
    epochs: int | None = Field(
        None, ge=1, description="length in epochs; the last phase omits it and runs to the end"
    )
    share: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="length as a share of train.epochs, instead of epochs (the phase ends at "
        "the nearest whole epoch): the schedule keeps its shape when the run is made longer "
        "or shorter",
    )

    @field_validator("networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        if "G" not in value:
            raise ValueError(f"G trains in every phase, got networks {value}")
        if len(set(value)) != len(value):
            raise ValueError(f"a network is listed twice in {value}")
        return sorted(value, key=PHASE_NETWORKS.index)


class TrainConfig(_Section):
    """Length, precision, EMA, checkpoints and initialisation of a training run.

    ``phases`` (optional) trains the networks in stages within one run, each phase by epoch,
    e.g. G and R first, then D joins (:mod:`medi2i.training.phases`). Networks only join:
    each phase keeps the previous phase's networks, and the last lists every enabled network
    (a network the model turns off may be listed; it does not train).
    """

    epochs: int = Field(10, ge=1)
    steps_per_epoch: int | None = Field(None, ge=1, description="default: one pass over data")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    amp: Literal["off", "bf16", "fp16"] = "off"
    channels_last: bool = False
    compile: bool = Field(
        False,
        description="torch.compile G, a learnt R and D (inductor; on the CPU it needs a C++ "
        "compiler); the first steps pay the compilation",
    )
    deterministic: bool = False
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    ema_warmup_steps: int | None = Field(
        None,
        ge=0,
        description="steps over which the EMA's horizon ramps up from 1 step; default "
        "(null): 1/(1 - ema_decay), the EMA's own horizon, so no weight of the random "
        "initialisation survives; ignored with pretrained_G (the start is not random)",
    )
    pretrained_G: str | None = None
    val_every: int = Field(1, ge=1, description="epochs between validations")
    checkpoint_every: int = Field(0, ge=0, description="epochs between kept checkpoints, 0=off")
    save_every_steps: int = Field(
        0, ge=0, description="also refresh last.pt every N steps inside an epoch, 0=off"
    )
    max_nonfinite_steps: int = Field(10, ge=1)
    out_dir: str = "runs"
    phases: list[PhaseConfig] | None = Field(
        None,
        description="stages of the run by epoch, e.g. [{networks: [G, R], epochs: 6}, "
        "{networks: [G, R, D]}]; null: every enabled network from the first step",
    )

    @model_validator(mode="after")
    def _phases(self) -> TrainConfig:
        phases = self.phases
        if phases is None:
            return self
        if not phases:
            raise ValueError("phases: empty; give at least one phase, or null for none")
        last = phases[-1]
        if last.epochs is not None or last.share is not None:
            raise ValueError(
                "phases: the last phase runs to the end of training: leave out its 'epochs' "
                f"and 'share' (got epochs {last.epochs}, share {last.share})"
            )
        for number, phase in enumerate(phases[:-1], start=1):
            if (phase.epochs is None) == (phase.share is None):
                raise ValueError(
                    f"phases: phase {number} needs its length, 'epochs' or 'share' (one of "
                    "them; only the last phase omits it)"
                )
        for number, (before, after) in enumerate(pairwise(phases), start=2):
            if not set(before.networks) <= set(after.networks):
                raise ValueError(
                    f"phases: phase {number} ({'+'.join(after.networks)}) drops a network of phase "
                    f"{number - 1} ({'+'.join(before.networks)}); networks only join"
                )
        if any(p.share is not None for p in phases):
            return self  # a phase a short run rounds to no epoch is skipped (phase_starts)
        starts = self.phase_starts()
        ends = [*starts[1:], self.epochs]
        for number, (start, end) in enumerate(zip(starts, ends), start=1):
            if end <= start:
                raise ValueError(
                    f"phases: phase {number} would get no epoch of train.epochs={self.epochs} "
                    f"(it would start at epoch {start + 1} and end at {end}); lengthen the run "
                    "or shorten the phases before it"
                )
        return self

    def phase_starts(self) -> list[int]:
        """The 0-based first epoch of each phase: the lengths (``epochs``, or ``share`` of
        ``epochs``) accumulated and rounded to the nearest whole epoch (halves up), at most
        ``epochs``. With shares, a run too short for a phase gives it no epoch: it is skipped."""
        starts, position = [], 0.0
        for phase in self.phases or []:
            starts.append(min(self.epochs, math.floor(position + 0.5)))
            position += (
                phase.epochs if phase.epochs is not None else (phase.share or 0.0) * (self.epochs)
            )
        return starts

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_off(cls, value: object) -> object:
        # YAML 1.1 reads a bare `off` (in a file or an override) as false
        return "off" if value is False else value


class EvalConfig(_Section):
    """Validation and best-checkpoint selection (always on the EMA weights)."""

    best_metric: str = "psnr_mask"
    best_mode: Literal["max", "min"] = "max"
    max_val_images: int | None = Field(None, ge=1)
    sample_count: int = Field(4, ge=0, description="validation images shown in sample grids")
    test_at_end: bool = Field(
        True, description="evaluate the best EMA weights on the test split after training"
    )


class LoggingConfig(_Section):
    """Where and how often diagnostics are written."""

    tensorboard: bool = True
    log_every: int = Field(10, ge=1, description="steps between logged scalars")
    gshare_every: int = Field(
        10,
        ge=0,
        description="steps between measurements of each G-loss term's gradient norm on G's "
        "output (gnorm_*/gshare_*; one extra backward through the losses, D and R), 0=off",
    )
    progress: bool = True
