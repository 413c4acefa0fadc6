"""The ``data`` section: where the paired images are and how they become tensors.

:class:`DataConfig` holds the dataset's location (folder layout or CSV manifest), what the train
split trains against, whether the pairs count as misaligned, and the loader's settings; its
subsections say how intensities are normalised (:class:`NormalizationConfig`), how mask files
become a region of interest (:class:`MaskConfig`), how the training split is augmented
(:class:`AugmentConfig`, :class:`IntensityAugmentConfig`) and how misalignment is simulated
(:class:`MisalignConfig`). Each model checks its own types, ranges and cross-field rules; the
messages of its validators are part of the error text a user sees.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from medi2i.config.section import _Section


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
    See :func:`medi2i.data.builders.resolve_pairs`.
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
