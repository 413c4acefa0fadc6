"""Typed, validated configuration.

A run is described by one YAML file (optionally built on others through ``base:``) plus
command-line overrides ``section.key=value``. The file is parsed into :class:`Config`, a tree of
pydantic models that reject unknown keys (``extra="forbid"``) and check every type and range.
Errors are collected and reported together as :class:`ConfigError`, each naming

* the dotted key (``loss.feat_match_weight``),
* where it came from (``configs/demo.yaml:14`` or ``command line 'loss.gan_weigth=2'``),
* the offending value and what is allowed,
* for an unknown key, the closest valid key ("did you mean ...?").

Key names follow the method's description (``lung_weight``, ``gan_weight``, ``feat_match_weight``,
``grad_clip``, ``skip_warmup``, ``pretrained_G``). Sections:

``data``
    where the paired images are, how they are normalised, masked, augmented and loaded.
``model``
    the generator ``G``, registration network ``R`` and discriminator ``D``.
``loss``
    reconstruction (L1 + SSIM, lung-weighted), adversarial, feature matching, R1, smoothness.
``optim``
    per-network Adam settings, learning-rate schedule and warm-up, gradient clipping.
``train``
    length, precision, EMA, checkpoints, initialisation from ``pretrained_G``.
``eval``
    which metrics and which checkpoint decide "best".
``logging``
    TensorBoard, console and file logging cadence.

Every run directory receives the fully resolved config (:func:`save_config`), so a result can
always be traced back to the exact settings that produced it.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medi2i.utils.atomic import atomic_write_text

log = logging.getLogger(__name__)

Network = Literal["G", "R", "D"]


class _Section(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


class NormalizationConfig(_Section):
    """How stored intensities map to the network's range.

    ``mode``:

    * ``fixed``: ``window: [lo, hi]`` in stored/physical units (e.g. ``[0, 65535]`` for 16-bit
      PNG, ``[-1000, 1000]`` HU for CT) maps linearly to ``output_range``.
    * ``dtype``: the window is the full range of each file's stored integer type (0-255 for
      8-bit, 0-65535 for 16-bit); float files are an error in this mode.
    * ``dataset_percentile``: the window is the ``percentiles`` of the training split's inputs
      and targets (computed once, stored with the model so prediction can invert it).
    * ``image_percentile``: the window is computed per image from the input's ``percentiles``
      and applied to input and target alike when ``share_scale`` (else each its own).

    Input and target share one scale unless ``share_scale: false`` (needed only when they
    are in different units, e.g. MR -> CT with ``mode: image_percentile``).
    """

    mode: Literal["fixed", "dtype", "dataset_percentile", "image_percentile"] = "dtype"
    window: tuple[float, float] | None = None
    percentiles: tuple[float, float] = (0.5, 99.5)
    share_scale: bool = True
    output_range: tuple[float, float] = (0.0, 1.0)
    clip: bool = True

    @field_validator("output_range")
    @classmethod
    def _check_output_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if tuple(v) not in {(0.0, 1.0), (-1.0, 1.0)}:
            raise ValueError(f"must be [0, 1] or [-1, 1], got {list(v)}")
        return v

    @field_validator("percentiles")
    @classmethod
    def _check_percentiles(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"must satisfy 0 <= low < high <= 100, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _check_window(self) -> NormalizationConfig:
        if self.mode == "fixed":
            if self.window is None:
                raise ValueError("mode 'fixed' needs window: [low, high] in stored units")
            if not self.window[0] < self.window[1]:
                raise ValueError(f"window must have low < high, got {list(self.window)}")
        return self


class MaskConfig(_Section):
    """How mask images become a binary region of interest.

    Rule (``binarize``): ``nonzero`` - every pixel whose stored value is not 0 is inside (works
    for 0/1, 0/255, 0/65535 masks and label maps); ``threshold`` - inside when the value is
    greater than ``threshold`` times the integer type's maximum (8-bit: 255, 16-bit: 65535) or,
    for float files, greater than ``threshold`` itself; ``labels`` - inside when the stored
    value is one of ``labels`` (e.g. the lung lobes 10-14 of a TotalSegmentator map).
    Without a mask file the whole image is inside.
    """

    binarize: Literal["nonzero", "threshold", "labels"] = "nonzero"
    threshold: float = Field(0.5, ge=0.0)
    labels: list[int] | None = None

    @model_validator(mode="after")
    def _check_labels(self) -> MaskConfig:
        if self.binarize == "labels" and not self.labels:
            raise ValueError("binarize 'labels' needs a non-empty labels list")
        return self


class IntensityAugmentConfig(_Section):
    """Random intensity changes applied identically to input and target (never to the mask).

    Values are ranges ``[low, high]`` sampled uniformly; the identity is gamma 1, contrast 1,
    brightness 0. Applied in the normalised [0, 1] domain.
    """

    p: float = Field(0.0, ge=0.0, le=1.0)
    gamma: tuple[float, float] = (1.0, 1.0)
    contrast: tuple[float, float] = (1.0, 1.0)
    brightness: tuple[float, float] = (0.0, 0.0)

    @field_validator("gamma", "contrast")
    @classmethod
    def _positive_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < v[0] <= v[1]:
            raise ValueError(f"must satisfy 0 < low <= high, got {list(v)}")
        return v

    @field_validator("brightness")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] <= v[1]:
            raise ValueError(f"must satisfy low <= high, got {list(v)}")
        return v


class AugmentConfig(_Section):
    """Training-split augmentation; input, target, aligned target and mask move together.

    Off by default. Validation and test splits are never augmented unless
    ``apply_to_eval: true`` (only useful for robustness studies).
    """

    hflip: float = Field(0.0, ge=0.0, le=1.0, description="probability of a left-right flip")
    vflip: float = Field(0.0, ge=0.0, le=1.0, description="probability of an up-down flip")
    affine_p: float = Field(0.0, ge=0.0, le=1.0, description="probability of a random affine")
    rotate_deg: float = Field(0.0, ge=0.0, le=45.0)
    translate_frac: float = Field(0.0, ge=0.0, le=0.25)
    scale: tuple[float, float] = (1.0, 1.0)
    intensity: IntensityAugmentConfig = Field(default_factory=IntensityAugmentConfig)
    apply_to_eval: bool = False

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.5 <= v[0] <= v[1] <= 2.0:
            raise ValueError(f"must satisfy 0.5 <= low <= high <= 2, got {list(v)}")
        return v


class MisalignConfig(_Section):
    """Simulated misalignment: warp the target by a random smooth field plus small affine.

    Turns any aligned dataset into a misaligned one; the unwarped target becomes
    ``aligned_target`` so that evaluation can still measure against the truth. ``max_px`` is
    the largest displacement in pixels (0 = off). ``splits`` lists where it applies.
    """

    max_px: float = Field(0.0, ge=0.0)
    control_points: int = Field(4, ge=2, le=32)
    splits: list[Literal["train", "val", "test"]] = Field(default_factory=lambda: ["train"])


class DataConfig(_Section):
    """Where the paired images are and how they are turned into tensors.

    Either ``root`` with the folder layout ``ROOT/{train,val,test}/{input,target,mask,aligned}/
    NAME.ext`` or ``manifest`` (CSV with columns ``split,input,target[,mask][,aligned]``, paths
    relative to the CSV's folder) - or both, when the manifest lives elsewhere. Relative paths
    in the config file are resolved against the current directory.

    ``train_target``: what G trains against on the train split. ``target`` (default): the
    measured targets. ``aligned``: the aligned targets (the ``aligned`` folder or column; an
    error naming the split if there are none), e.g. an oracle arm trained on perfectly aligned
    pairs; ``misalign`` still applies on top, so one dataset with aligned targets can sweep
    simulated misalignment (0, 2, 4, 8 px). Validation and test splits are not affected: they
    keep ``target`` and ``aligned_target``, and evaluation measures against the aligned target.

    ``pairs``: whether the training pairs are misaligned (the trainer uses this, e.g. to decide
    whether D may be conditioned on the input). ``aligned`` / ``misaligned`` are taken as
    stated. ``auto``: misaligned when the train split gets simulated misalignment (``train``
    in ``misalign.splits`` and ``misalign.max_px > 0``), or when ``train_target`` is
    ``target`` and the train split ships aligned targets (a dataset provides an aligned truth
    because its targets are misaligned); otherwise aligned. Real misaligned data without an
    aligned truth (e.g. dual-energy subtraction) cannot be recognised: set ``misaligned``.
    See :func:`medi2i.data.dataset.resolve_pairs`.
    """

    root: str | None = None
    manifest: str | None = None
    slice_index: int | None = Field(None, ge=0, description="slice of 3D NIfTI/TIFF inputs")
    normalization: NormalizationConfig = Field(default_factory=NormalizationConfig)
    mask: MaskConfig = Field(default_factory=MaskConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    misalign: MisalignConfig = Field(default_factory=MisalignConfig)
    train_target: Literal["target", "aligned"] = Field(
        "target",
        description="train split: train against the measured targets or the aligned targets",
    )
    pairs: Literal["auto", "aligned", "misaligned"] = Field(
        "auto",
        description=(
            "are the training pairs misaligned? auto: yes if the train split gets simulated "
            "misalignment, or ships aligned targets while train_target is 'target'; set "
            "misaligned for real misaligned data without an aligned truth (e.g. dual-energy "
            "subtraction)"
        ),
    )
    crop_size: int | None = Field(None, ge=8, description="random training crop (px), or none")
    batch_size: int = Field(4, ge=1)
    num_workers: int = Field(0, ge=0)
    pin_memory: bool | None = Field(None, description="default: on when training on CUDA")
    cache: bool = Field(True, description="keep decoded images in memory (per worker)")


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------


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


class ModelConfig(_Section):
    """The three networks; R and D exist only during training."""

    G: GeneratorConfig = Field(default_factory=GeneratorConfig)
    R: RegistrationConfig = Field(default_factory=RegistrationConfig)
    D: DiscriminatorConfig = Field(default_factory=DiscriminatorConfig)


# --------------------------------------------------------------------------------------------
# loss
# --------------------------------------------------------------------------------------------


class LossConfig(_Section):
    """G's loss: ``w_recon + gan_weight*GAN + feat_match_weight*FM (+ smooth_weight*smooth)``.

    ``w_recon = recon_weight * (l1_weight*L1 + ssim_weight*(1 - SSIM))`` with each pixel
    weighted 1 outside the mask and ``lung_weight`` inside. RegGAN's published settings for
    reference: correction (recon) 20, smoothness 10, adversarial 1. Their L1 is on [-1, 1]
    images (twice an L1 in [0, 1] units), so their smoothness-to-L1 balance is
    ``smooth_weight = data_range / 4`` at ``recon_weight`` 1: 0.25 for [0, 1] data, the default
    (see ``medi2i.losses.regularizers``). ``r1_weight`` is gamma in ``gamma/2 * E|grad D(real)|^2``
    (0 = off), applied every ``r1_interval`` D steps and then multiplied by the interval (lazy
    regularisation, StyleGAN2). Conventions of every term: ``medi2i.losses``.
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


class TrainConfig(_Section):
    """Length, precision, EMA, checkpoints and initialisation of a training run."""

    epochs: int = Field(10, ge=1)
    steps_per_epoch: int | None = Field(None, ge=1, description="default: one pass over data")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    amp: Literal["off", "bf16", "fp16"] = "off"
    channels_last: bool = False
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


class Config(_Section):
    """The complete, validated configuration of a medi2i run."""

    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)


# --------------------------------------------------------------------------------------------
# loading, overrides, errors
# --------------------------------------------------------------------------------------------


class ConfigError(ValueError):
    """One or more problems in a configuration; ``problems`` lists them one per line."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        n = len(self.problems)
        head = "invalid configuration" if n == 1 else f"invalid configuration ({n} problems)"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


Origin = str  # "path/to/file.yaml:12" or "command line 'a.b=c'"
_BASE_KEY = "base"


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records the line of every mapping key."""


def _compose_with_lines(text: str, source: str) -> tuple[Any, dict[tuple[str, ...], Origin]]:
    """Parse YAML text; return the data and a map from key path to ``file:line``."""
    try:
        node = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: not valid YAML: {exc}"]) from exc
    origins: dict[tuple[str, ...], Origin] = {}

    def walk(n: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                key = str(key_node.value)
                origins[(*path, key)] = f"{source}:{key_node.start_mark.line + 1}"
                walk(value_node, (*path, key))

    if node is not None:
        walk(node, ())
    data = yaml.load(text, Loader=yaml.SafeLoader) if node is not None else {}
    return data, origins


def _deep_merge(base: dict, update: Mapping) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml_tree(
    path: Path, seen: tuple[Path, ...] = ()
) -> tuple[dict, dict[tuple[str, ...], Origin]]:
    """Read a YAML file and, recursively, the files it names in ``base:``."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError([f"circular 'base:' chain: {chain}"])
    if not path.is_file():
        raise ConfigError([f"config file not found: {path}"])
    data, origins = _compose_with_lines(path.read_text(encoding="utf-8"), _display_path(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            [
                f"{_display_path(path)}: the top level must be a mapping of sections, "
                f"got {type(data).__name__}"
            ]
        )
    bases = data.pop(_BASE_KEY, None)
    origins.pop((_BASE_KEY,), None)
    if bases is None:
        return data, origins
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError([f"{_display_path(path)}: 'base' must be a path or a list of paths"])
    merged: dict = {}
    merged_origins: dict[tuple[str, ...], Origin] = {}
    for base in bases:
        base_data, base_origins = _read_yaml_tree(path.parent / base, (*seen, path))
        merged = _deep_merge(merged, base_data)
        merged_origins.update(base_origins)
    merged = _deep_merge(merged, data)
    merged_origins.update(origins)
    return merged, merged_origins


def _display_path(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:  # different drive on Windows
        return str(path)
    return str(path) if rel.startswith("..") else rel


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """Split ``section.key=value`` into a key path and a YAML-typed value.

    The value is parsed as YAML, so it is typed like the file (``2`` int, ``2.0`` float,
    ``true`` bool, ``null``, ``[1, 2]`` list, anything else a string).

    Raises:
        ConfigError: when the text has no ``=`` or an empty key.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError([f"override {text!r}: expected section.key=value"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError([f"override {text!r}: value is not valid YAML: {exc}"]) from exc
    return tuple(key.split(".")), value


def _set_path(data: dict, path: tuple[str, ...], value: Any) -> None:
    node = data
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def _model_at(path: Sequence[str | int]) -> type[BaseModel] | None:
    """The pydantic model that holds the key at ``path`` (None when not a model)."""
    model: Any = Config
    for part in path:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = field.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _suggest(key: str, candidates: Iterable[str]) -> str:
    options = list(candidates)
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in options}
        close = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.6)
        close = [lowered[c] for c in close]
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; valid keys here: {', '.join(sorted(options))}"


def _format_errors(exc: ValidationError, origins: Mapping[tuple[str, ...], Origin]) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        dotted = ".".join(loc) or "(top level)"
        origin = None
        for n in range(len(loc), 0, -1):  # closest recorded ancestor of the key
            origin = origins.get(loc[:n])
            if origin:
                break
        where = f"{origin}: " if origin else ""
        if err["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1])
            hint = _suggest(loc[-1], parent.model_fields) if parent else ""
            problems.append(f"{where}unknown key '{dotted}'{hint}")
            continue
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        problems.append(f"{where}'{dotted}'{shown}: {msg}")
    return problems


def build_config(
    data: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    *,
    origins: Mapping[tuple[str, ...], Origin] | None = None,
) -> Config:
    """Validate a plain mapping (plus overrides) into a :class:`Config`.

    Args:
        data: nested mapping as read from YAML (``None`` = all defaults).
        overrides: ``section.key=value`` strings applied on top, in order.
        origins: key path -> ``file:line``, for error messages.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: listing every problem found.
    """
    merged: dict = _deep_merge({}, data or {})
    all_origins: dict[tuple[str, ...], Origin] = dict(origins or {})
    problems: list[str] = []
    for text in overrides:
        try:
            path, value = parse_override(text)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        _set_path(merged, path, value)
        for n in range(1, len(path) + 1):
            all_origins.setdefault(path[:n], f"command line {text!r}")
        all_origins[path] = f"command line {text!r}"
    if problems:
        raise ConfigError(problems)
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, all_origins)) from None


def load_config(
    path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    overrides: Sequence[str] = (),
) -> Config:
    """Load YAML config file(s) (each following its ``base:``), apply overrides and validate.

    Args:
        path: the YAML file, or several merged in order (later files win, e.g. an experiment
            plus a CPU-sized overlay); ``None`` starts from the defaults.
        overrides: ``section.key=value`` strings (command line), applied last.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: unreadable/invalid YAML, unknown keys, wrong types or ranges - all listed,
            each with its file and line (or the override text) and a suggestion where possible.
    """
    paths = [] if path is None else [path] if isinstance(path, (str, os.PathLike)) else path
    data: dict = {}
    origins: dict[tuple[str, ...], Origin] = {}
    for one in paths:
        file_data, file_origins = _read_yaml_tree(Path(one))
        data = _deep_merge(data, file_data)
        origins.update(file_origins)
        log.debug("read config %s (%d keys)", one, len(file_origins))
    cfg = build_config(data, overrides, origins=origins)
    if overrides:
        log.info("config overrides: %s", " ".join(overrides))
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain JSON/YAML-safe nested dict of a config (tuples become lists)."""
    return cfg.model_dump(mode="json")


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text (keys in declaration order)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


def save_config(cfg: Config, path: str | os.PathLike) -> Path:
    """Write the fully resolved config atomically (e.g. ``RUN_DIR/config.yaml``)."""
    return atomic_write_text(path, dump_config(cfg))
