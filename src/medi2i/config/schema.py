"""The root of the schema: :class:`Config`, one field per section, in the order YAML dumps them.

The field order here is the key order of every dumped config (``seed``, ``data``, ``model``,
``loss``, ``optim``, ``train``, ``eval``, ``logging``); the sections themselves live in
:mod:`~medi2i.config.schema_data`, :mod:`~medi2i.config.schema_model` and
:mod:`~medi2i.config.schema_training`.
"""

from __future__ import annotations

from pydantic import Field, model_validator

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

    @model_validator(mode="after")
    def _phases_match_model(self) -> Config:
        """Every enabled network joins in ``train.phases`` (a network the model turns off may
        be listed: it does not train, so one phase list serves a run and its ablations)."""
        phases = self.train.phases
        if not phases:
            return self
        enabled = {"G", *(n for n in ("R", "D") if getattr(self.model, n).enabled)}
        missing = sorted(enabled - set(phases[-1].networks))
        if missing:
            problems = "; ".join(f"model.{n}.enabled is true but {n} never joins" for n in missing)
            raise ValueError(
                f"train.phases: {problems} (the last phase lists every enabled network)"
            )
        return self
