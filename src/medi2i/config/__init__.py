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
    reconstruction (L1 + SSIM, lung-weighted), adversarial, feature matching, R1, smoothness,
    the optional perceptual term (``loss.perceptual``: its frozen network and local file).
``optim``
    per-network Adam settings, learning-rate schedule and warm-up, gradient clipping.
``train``
    length, precision, EMA, checkpoints, initialisation from ``pretrained_G``, phases.
``eval``
    which metrics and which checkpoint decide "best".
``logging``
    TensorBoard, console and file logging cadence.

Every run directory receives the fully resolved config (:func:`save_config`), so a result can
always be traced back to the exact settings that produced it.

Layout: :mod:`~medi2i.config.section` (``_Section``, the base of every section),
:mod:`~medi2i.config.schema_data` (``data`` and its subsections),
:mod:`~medi2i.config.schema_model` (``G``, ``R``, ``D``, ``model``),
:mod:`~medi2i.config.schema_training` (``loss``, ``optim``, ``train``, ``eval``, ``logging``),
:mod:`~medi2i.config.schema` (``Config``, the root), :mod:`~medi2i.config.errors`
(``ConfigError`` and the text of each problem), :mod:`~medi2i.config.loading` (YAML with
``base:`` and line numbers, overrides, ``build_config``, ``load_config``) and
:mod:`~medi2i.config.dumping` (``config_to_dict``, ``dump_config``, ``save_config``). Import the
public names from ``medi2i.config``. The package imports only from ``medi2i.utils`` (layer 1).
"""

from __future__ import annotations

from medi2i.config.dumping import config_to_dict, dump_config, save_config
from medi2i.config.errors import ConfigError, Origin
from medi2i.config.loading import build_config, load_config, parse_override
from medi2i.config.schema import Config
from medi2i.config.schema_data import (
    AugmentConfig,
    DataConfig,
    IntensityAugmentConfig,
    MaskConfig,
    MisalignConfig,
    NormalizationConfig,
)
from medi2i.config.schema_model import (
    DiscriminatorConfig,
    GeneratorConfig,
    ModelConfig,
    Network,
    RegistrationConfig,
)
from medi2i.config.schema_training import (
    PERCEPTUAL_WEIGHT_FILES,
    EvalConfig,
    LoggingConfig,
    LossConfig,
    OptimConfig,
    OptimizerConfig,
    PerceptualConfig,
    PerceptualNetwork,
    PhaseConfig,
    TrainConfig,
    perceptual_weights_hint,
)

__all__ = [
    "PERCEPTUAL_WEIGHT_FILES",
    "AugmentConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DiscriminatorConfig",
    "EvalConfig",
    "GeneratorConfig",
    "IntensityAugmentConfig",
    "LoggingConfig",
    "LossConfig",
    "MaskConfig",
    "MisalignConfig",
    "ModelConfig",
    "Network",
    "NormalizationConfig",
    "OptimConfig",
    "OptimizerConfig",
    "Origin",
    "PerceptualConfig",
    "PerceptualNetwork",
    "PhaseConfig",
    "RegistrationConfig",
    "TrainConfig",
    "build_config",
    "config_to_dict",
    "dump_config",
    "load_config",
    "parse_override",
    "perceptual_weights_hint",
    "save_config",
]
