"""Load a trained generator (EMA or online weights) with its config and normaliser.

R and D are training aids: inference needs only G, the config that built it and the
normalisation the training data went through (stored in every checkpoint).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from medi2i.config import Config
from medi2i.data.intensity import IntensityProfile
from medi2i.data.normalization import Normalizer
from medi2i.models import build_generator
from medi2i.run.checkpoint import load_checkpoint
from medi2i.run.layout import resolve_checkpoint

log = logging.getLogger(__name__)

Weights = Literal["ema", "online"]


@dataclass
class LoadedGenerator:
    """A generator ready for inference, and what is needed to use it correctly."""

    generator: nn.Module
    config: Config
    normalizer: Normalizer
    checkpoint: Path
    weights: str
    epoch: int | None
    intensity: IntensityProfile | None = None
    """The training inputs' intensities; ``None`` when the checkpoint carries none."""


def load_generator(
    run_or_checkpoint: str | Path,
    *,
    weights: Weights = "ema",
    device: str | torch.device = "cpu",
) -> LoadedGenerator:
    """Build G from a checkpoint's config and load its EMA (default) or online weights.

    Args:
        run_or_checkpoint: a run directory (its ``best.pt``, else ``last.pt``) or a ``.pt``.
        weights: ``ema`` (what validation selected the checkpoint by) or ``online``.
        device: where to put the network (eval mode).

    Returns:
        The generator with its config, normaliser and provenance.

    Raises:
        FileNotFoundError: no checkpoint.
        ValueError: unreadable checkpoint or unknown ``weights``.
    """
    if weights not in ("ema", "online"):
        raise ValueError(f"weights must be 'ema' or 'online', got {weights!r}")
    path = resolve_checkpoint(run_or_checkpoint)
    state = load_checkpoint(path, map_location="cpu")
    cfg = Config.model_validate(state["config"])
    lo, hi = cfg.data.normalization.output_range
    generator = build_generator(cfg.model.G, output_range=(lo, hi))
    sd = state["ema"]["G"] if weights == "ema" else state["model"]["G"]
    generator.load_state_dict(sd)
    generator.to(device).eval()
    for p in generator.parameters():
        p.requires_grad_(False)
    normalizer = Normalizer.from_state_dict(state["normalizer"])
    profile = state.get("intensity_profile")
    intensity = None if profile is None else IntensityProfile.from_dict(profile)
    log.info("loaded G (%s weights, epoch %s) from %s", weights, state.get("epoch"), path)
    return LoadedGenerator(generator, cfg, normalizer, path, weights, state.get("epoch"), intensity)
