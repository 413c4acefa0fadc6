"""G's perceptual term: an L1 between a frozen network's features of the prediction and the target.

::

    perceptual(pred, target) = 1/L · Σ_l mean |φ_l(pred) − φ_l(target)|

over the ``L`` feature maps ``φ_l`` of the network ``loss.perceptual`` names (per-element mean
within a layer, then the plain mean over layers), computed in float32 whatever the autocast
setting, the target's features without gradient. The term is position-wise, so the trainer
passes the image the reconstruction compares (``warp(G(x))`` when R is on) and the target: it
is part of :class:`~medi2i.losses.composite.GeneratorLoss` (``perceptual`` of
:data:`~medi2i.run.scalars.PART_NAMES`, weighted by ``loss.perceptual_weight``).

Networks (:mod:`medi2i.models.feature_nets`, which also documents the VGG's input
normalisation):

* ``vgg16`` / ``vgg19``: torchvision's ImageNet ``features`` stack from the local file
  ``loss.perceptual.weights`` (``vgg16-397923af.pth`` / ``vgg19-dcbb9e9d.pth``). Nothing is
  downloaded: the file names and their download addresses are in
  :data:`medi2i.config.PERCEPTUAL_WEIGHT_FILES`. Only the ``features.*`` keys are used, and
  every one of them must fit the chosen network (a VGG19 file given as vgg16 is refused); the
  file is read with ``torch.load(weights_only=True)``, which runs no code.
* ``discriminator``: the D of a previous medi2i run (``weights``: its run directory - best
  checkpoint, else last - or a checkpoint file), rebuilt from that checkpoint's own config and
  loaded from its ``model.D``. A conditional D is refused: it needs the input image, which this
  term does not get.

Rules: the network is frozen (evaluation mode, no parameter gradients) and lives on the training
device; gradients reach the prediction only. It is never saved in checkpoints: the config names
its file, and a resumed run loads it again. A weights file that is missing, unreadable or does not
fit stops the run with :class:`PerceptualWeightsError`, naming the file, the keys and what was
expected; there is no fallback to a random network.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import Tensor, nn

from medi2i.config import Config, LossConfig, ModelConfig, perceptual_weights_hint
from medi2i.models.discriminator import build_discriminator, resolve_d_conditional
from medi2i.models.feature_nets import DiscriminatorFeatures, VGGFeatures, vgg_weight_problems
from medi2i.run.checkpoint import (
    CheckpointError,
    load_checkpoint,
    state_dict_problems,
    torch_load_checked,
)
from medi2i.run.layout import resolve_checkpoint

logger = logging.getLogger(__name__)

__all__ = [
    "PerceptualLoss",
    "PerceptualWeightsError",
    "build_perceptual_loss",
    "load_discriminator_features",
    "load_vgg_features",
]

_SHOWN_PROBLEMS = 12


class PerceptualWeightsError(ValueError):
    """The perceptual loss's weights file is missing, unreadable or does not fit its network."""


def _weights_error(
    network: str, path: Path | str | os.PathLike, problem: str, details: list[str] | None = None
) -> PerceptualWeightsError:
    """The error for an unusable weights file: the setting, the file, what is wrong with it,
    what was expected, then ``details`` one per line (the first few)."""
    text = (
        f"loss.perceptual.weights ({network}): {path}: {problem}; expected "
        f"{perceptual_weights_hint(network)}"
    )
    if details:
        shown = details[:_SHOWN_PROBLEMS]
        text += "".join(f"\n  - {d}" for d in shown)
        if len(details) > len(shown):
            text += f"\n  (+{len(details) - len(shown)} more)"
    return PerceptualWeightsError(text)


class PerceptualLoss:
    """The mean L1 distance between a frozen network's features of two images.

    Args:
        features: a frozen module mapping ``(N, C, H, W)`` images to a list of feature maps
            (:class:`~medi2i.models.feature_nets.VGGFeatures`,
            :class:`~medi2i.models.feature_nets.DiscriminatorFeatures`).
        source: where its weights came from, for messages.
    """

    def __init__(self, features: nn.Module, *, source: str = "") -> None:
        self.features = features
        self.source = source

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.features).__name__}, source={self.source!r})"

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        """``1/L · Σ_l mean |φ_l(pred) − φ_l(target)|`` in float32.

        Args:
            pred: ``(N, C, H, W)``, the image compared with the target (its graph is kept).
            target: the target, same shape (no gradient is computed for it).

        Returns:
            A 0-dim float32 tensor.

        Raises:
            ValueError: different shapes.
        """
        if pred.shape != target.shape:
            raise ValueError(
                f"perceptual loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} "
                "differ in shape"
            )
        with torch.autocast(pred.device.type, enabled=False):
            with torch.no_grad():
                wanted = self.features(target.detach().float())
            got = self.features(pred.float())
            terms = [(g - w).abs().mean() for g, w in zip(got, wanted, strict=True)]
        return torch.stack(terms).mean()


def load_vgg_features(
    network: str,
    path: str | os.PathLike,
    layers: list[str] | tuple[str, ...] | None = None,
    *,
    input_range: tuple[float, float],
) -> VGGFeatures:
    """torchvision's VGG ``features`` with the weights of a local file, frozen.

    Args:
        network: ``vgg16`` or ``vgg19``.
        path: the torchvision state dict file (e.g. ``vgg16-397923af.pth``).
        layers: the ReLUs compared (None: the network's default set).
        input_range: ``(lo, hi)``, the data's output range.

    Returns:
        The frozen network on the CPU.

    Raises:
        ValueError: an unknown layer name (the valid ones are listed).
        PerceptualWeightsError: the file is missing or unreadable, not a state dict, or its
            ``features.*`` keys do not fit ``network`` (every problem listed).
    """
    try:
        net = VGGFeatures(network, layers, input_range)
    except ValueError as exc:
        raise ValueError(f"loss.perceptual.layers: {exc}") from exc
    path = Path(path)
    if not path.is_file():
        raise _weights_error(network, path, "no such file" if not path.exists() else "not a file")
    try:
        state = torch_load_checked(path, "cpu", trusted=False)
    except CheckpointError as exc:
        raise _weights_error(network, path, f"cannot be read ({exc})") from exc
    if not isinstance(state, Mapping):
        raise _weights_error(network, path, f"not a state dict (found {type(state).__name__})")
    problems = vgg_weight_problems(state, network, built=net)
    if not any(str(key).startswith("features.") for key in state):
        found = ", ".join(map(str, list(state)[:8])) + (", ..." if len(state) > 8 else "")
        problems.insert(0, f"no features.* key in the file (its keys: {found or 'none'})")
    if problems:
        raise _weights_error(
            network,
            path,
            f"does not hold the {network} features ({len(problems)} problems)",
            problems,
        )
    net.load_state_dict({key: state[key] for key in net.state_dict()})
    logger.info("perceptual loss: %s %s from %s", network, ", ".join(net.layers), path)
    return net


def _stored_conditional(model: ModelConfig, sd: Mapping[str, Tensor]) -> bool:
    """Whether a checkpoint's D is conditional, resolved as its run did.

    ``model.D.conditional: auto`` without R depends on whether that run's pairs were misaligned,
    a fact of its data that the checkpoint does not record: the weights tell (a conditional D's
    first convolutions read one more channel).
    """
    if model.D.conditional == "auto" and not model.R.enabled:
        fits_unconditional = not state_dict_problems(sd, build_discriminator(model.D, False))
        return not fits_unconditional and not state_dict_problems(
            sd, build_discriminator(model.D, True)
        )
    return resolve_d_conditional(model)


def load_discriminator_features(path: str | os.PathLike) -> DiscriminatorFeatures:
    """The frozen D of a previous medi2i run.

    Args:
        path: the run directory (its ``best.pt``, else ``last.pt``) or a checkpoint file.

    Returns:
        D's features (on the CPU), rebuilt from the checkpoint's own config and loaded from its
        ``model.D``.

    Raises:
        PerceptualWeightsError: no checkpoint, an unreadable one, a config that does not
            validate, no D in it, a conditional D, or weights that do not fit the D its config
            describes (every problem listed).
    """
    network = "discriminator"
    try:
        file = resolve_checkpoint(path)
        state = load_checkpoint(file, "cpu")
    except (FileNotFoundError, CheckpointError) as exc:
        raise _weights_error(network, path, str(exc)) from exc
    try:
        cfg = Config.model_validate(state.get("config"))
    except ValidationError as exc:
        raise _weights_error(
            network, file, f"its stored config (key 'config') does not validate: {exc}"
        ) from exc
    sd = (state.get("model") or {}).get("D")
    if sd is None:
        raise _weights_error(
            network,
            file,
            f"no discriminator weights (key model.D; the run's mode: {state.get('mode', '?')}, "
            f"model.D.enabled: {cfg.model.D.enabled})",
        )
    if _stored_conditional(cfg.model, sd):
        raise _weights_error(
            network,
            file,
            f"its D is conditional (model.D.conditional: {cfg.model.D.conditional}): it judges "
            "(input, image) pairs, and the perceptual loss compares the prediction with the "
            "target without the input. Use a run whose D is unconditional "
            "(model.D.conditional: no)",
        )
    discriminator = build_discriminator(cfg.model.D, False)
    problems = state_dict_problems(sd, discriminator)
    if problems:
        raise _weights_error(
            network,
            file,
            f"its model.D does not fit the D its config describes ({len(problems)} problems)",
            problems,
        )
    discriminator.load_state_dict(sd)
    logger.info(
        "perceptual loss: the D of %s (epoch %s), %d scales x %d feature maps",
        file,
        state.get("epoch"),
        cfg.model.D.num_scales,
        cfg.model.D.n_layers + 1,
    )
    return DiscriminatorFeatures(discriminator)


def build_perceptual_loss(
    cfg: LossConfig, *, input_range: tuple[float, float], device: torch.device | str = "cpu"
) -> PerceptualLoss | None:
    """G's perceptual term from ``loss``, or None when it is off (nothing is loaded then).

    Args:
        cfg: the ``loss`` section (``perceptual_weight``, ``perceptual``).
        input_range: ``(lo, hi)``, the data's output range (VGG input normalisation).
        device: where the frozen network runs (the training device).

    Returns:
        The loss with its network on ``device``, or None for ``perceptual_weight: 0``.

    Raises:
        PerceptualWeightsError: ``weights`` unset, or a file that cannot be used (see
            :func:`load_vgg_features`, :func:`load_discriminator_features`).
        ValueError: an unknown layer name.
    """
    if cfg.perceptual_weight <= 0:
        return None
    pc = cfg.perceptual
    if pc.weights is None:
        raise PerceptualWeightsError(
            f"loss.perceptual_weight={cfg.perceptual_weight} needs loss.perceptual.weights: "
            f"{perceptual_weights_hint(pc.network)}"
        )
    # the network's random initialisation is overwritten by the file: it draws from a forked
    # generator, so a run's random stream is the same with and without the term
    with torch.random.fork_rng(devices=[]):
        if pc.network == "discriminator":
            features: nn.Module = load_discriminator_features(pc.weights)
        else:
            features = load_vgg_features(pc.network, pc.weights, pc.layers, input_range=input_range)
    return PerceptualLoss(features.to(device), source=f"{pc.network}: {pc.weights}")
