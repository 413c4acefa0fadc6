"""The root of the schema: :class:`Config`, one field per section, in the order YAML dumps them.

The field order here is the key order of every dumped config (``seed``, ``data``, ``model``,
``loss``, ``optim``, ``train``, ``eval``, ``logging``); the sections themselves live in
:mod:`~medi2i.config.schema_data`, :mod:`~medi2i.config.schema_model` and
:mod:`~medi2i.config.schema_training`.
"""

from __future__ import annotations

from pydantic import Field

from medi2i.config.schema_data import DataConfig
from medi2i.config.schema_model import ModelConfig
from medi2i.config.schema_training import (
    EvalConfig,
    LoggingConfig,
    LossConfig,
    OptimConfig,
    TrainConfig,
)
from medi2i.config.section import _Section


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
