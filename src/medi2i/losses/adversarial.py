"""Adversarial losses (LSGAN, hinge, non-saturating BCE), feature matching and the R1 penalty.

All functions take the discriminator's output structure, one ``(logits, features)`` pair per
scale, finest scale first::

    D(x, cond=None) -> [(logits_0, [f_00, f_01, ...]), (logits_1, [...]), ...]

with raw (unbounded) logits of shape (N, 1, h_k, w_k) and ``features`` the intermediate
activations (logits excluded) used by feature matching. A bare tensor is accepted as the logits
of a one-scale D without features, and a list of tensors as per-scale logits.

Conventions (``r`` = logits on real images, ``f`` = on fake ones, means over every logit of one
scale, then the plain mean over scales, so scales of different sizes count the same):

=========  ==============================  ======================  =========  ==============
mode       D loss (per scale)              G loss (per scale)      threshold  reference
=========  ==============================  ======================  =========  ==============
lsgan      ½·[mean (r − 1)² + mean f²]     mean (f − 1)²           0.5        Mao et al. 2017
hinge      ½·[mean relu(1 − r)             −mean f                 0          Lim & Ye 2017,
           + mean relu(1 + f)]                                                SAGAN
bce        ½·[mean softplus(−r)            mean softplus(−f)       0          Goodfellow et
           + mean softplus(f)]             (non-saturating)                   al. 2014
=========  ==============================  ======================  =========  ==============

The ½ on D's loss (the average of its real and fake terms) follows pix2pix/pix2pixHD for every
mode, hinge included (SAGAN-style hinge sums them: a factor 2, which only rescales D's
gradients). ``softplus(−x) = −log σ(x)`` is BCE-with-logits against label 1, computed stably.

Diagnostics (detached tensors, no host sync: the trainer decides when to read them):
``D_real`` / ``D_fake`` = mean raw logit on real / fake (overall and ``_s{k}`` per scale);
``D_acc`` = ½·(fraction of real logits above the mode's decision threshold + fraction of fake
logits below it), with ``D_acc_real`` / ``D_acc_fake`` its two halves. The threshold is the
logit half-way between what D is trained to output on real and on fake (LSGAN targets 1 and 0;
hinge margins ±1; BCE's σ(0) = ½). The names are those of :mod:`medi2i.run.scalars`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from medi2i.run.scalars import (
    D_ACC,
    D_ACC_FAKE,
    D_ACC_REAL,
    D_FAKE,
    D_FAKE_LOSS,
    D_REAL,
    D_REAL_LOSS,
    scale_key,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DECISION_THRESHOLDS",
    "GAN_MODES",
    "AdversarialLoss",
    "DOutputs",
    "GANMode",
    "as_scales",
    "discriminator_stats",
    "feature_matching_loss",
    "r1_due",
    "r1_penalty",
    "r1_scale",
]

GANMode = Literal["lsgan", "hinge", "bce"]
GAN_MODES: tuple[str, ...] = ("lsgan", "hinge", "bce")
DECISION_THRESHOLDS: dict[str, float] = {"lsgan": 0.5, "hinge": 0.0, "bce": 0.0}
"""Logit separating "D says real" (above) from "D says fake" (below) in each mode."""

ScaleOutput = tuple[Tensor, Sequence[Tensor]]
DOutputs = Tensor | Sequence[ScaleOutput] | Sequence[Tensor]
"""What a discriminator returns: per-scale ``(logits, features)`` pairs (or bare logits)."""


def as_scales(outputs: DOutputs, name: str = "outputs") -> list[tuple[Tensor, list[Tensor]]]:
    """Normalise a discriminator's output to a list of ``(logits, features)`` per scale.

    Args:
        outputs: a list of ``(logits, features)`` pairs (the D interface), a list of logits
            tensors, or one logits tensor (a one-scale D).
        name: argument name used in error messages.

    Returns:
        List of ``(logits, list_of_features)``, finest scale first.

    Raises:
        ValueError: if there is no scale, or logits have fewer than 2 dimensions.
        TypeError: if an element is neither a tensor nor a ``(logits, features)`` pair.
    """
    if isinstance(outputs, Tensor):
        outputs = [outputs]
    if not isinstance(outputs, Sequence) or len(outputs) == 0:
        raise ValueError(
            f"{name}: expected a non-empty list of (logits, features) per scale, got {outputs!r}"
        )
    scales: list[tuple[Tensor, list[Tensor]]] = []
    for k, item in enumerate(outputs):
        if isinstance(item, Tensor):
            logits, feats = item, []
        elif isinstance(item, Sequence) and len(item) == 2 and isinstance(item[0], Tensor):
            logits, feats = item[0], list(item[1])
        else:
            raise TypeError(
                f"{name}[{k}]: expected a (logits, features) pair or a logits tensor, "
                f"got {type(item).__name__}"
            )
        if logits.ndim < 2:
            raise ValueError(
                f"{name}[{k}]: expected logits of shape (N, 1, h, w) or (N, ...), "
                f"got {tuple(logits.shape)}"
            )
        scales.append((logits, feats))
    return scales


def _check_same_scales(
    real: list[tuple[Tensor, list[Tensor]]], fake: list[tuple[Tensor, list[Tensor]]], name: str
) -> None:
    if len(real) != len(fake):
        raise ValueError(
            f"{name}: real and fake outputs have {len(real)} and {len(fake)} scales; "
            "they must come from the same discriminator"
        )


# --------------------------------------------------------------------------------------------
# per-mode terms, on float32 logits
# --------------------------------------------------------------------------------------------


def _real_term(x: Tensor, mode: str) -> Tensor:
    """D's per-logit loss on real samples."""
    if mode == "lsgan":
        return (x - 1.0).square()
    if mode == "hinge":
        return F.relu(1.0 - x)
    return F.softplus(-x)


def _fake_term(x: Tensor, mode: str) -> Tensor:
    """D's per-logit loss on fake samples."""
    if mode == "lsgan":
        return x.square()
    if mode == "hinge":
        return F.relu(1.0 + x)
    return F.softplus(x)


def _gen_term(x: Tensor, mode: str) -> Tensor:
    """G's per-logit loss on fake samples."""
    if mode == "lsgan":
        return (x - 1.0).square()
    if mode == "hinge":
        return -x
    return F.softplus(-x)


def _mean_over_scales(values: list[Tensor]) -> Tensor:
    return torch.stack(values).mean()


def _check_mode(mode: str) -> str:
    if mode not in GAN_MODES:
        raise ValueError(f"gan_mode must be one of {list(GAN_MODES)}, got {mode!r}")
    return mode


def discriminator_stats(
    real_outputs: DOutputs | None = None,
    fake_outputs: DOutputs | None = None,
    *,
    mode: str = "lsgan",
) -> dict[str, Tensor]:
    """Detached diagnostics of D's raw outputs: ``D_real``, ``D_fake``, ``D_acc`` (see module).

    Args:
        real_outputs: D's outputs on real images, or None.
        fake_outputs: D's outputs on fake images, or None.
        mode: GAN mode, which sets the decision threshold for the accuracy.

    Returns:
        Dict of 0-dim detached float32 tensors: ``D_real`` and ``D_real_s{k}`` when real outputs
        are given, ``D_fake`` and ``D_fake_s{k}`` for fake ones, and with both ``D_acc``,
        ``D_acc_real``, ``D_acc_fake`` and ``D_acc_s{k}``.

    Raises:
        ValueError: on an unknown mode or mismatched scale counts.
    """
    threshold = DECISION_THRESHOLDS[_check_mode(mode)]
    stats: dict[str, Tensor] = {}
    acc: dict[str, list[Tensor]] = {}
    for which, key, outputs in (("real", D_REAL, real_outputs), ("fake", D_FAKE, fake_outputs)):
        if outputs is None:
            continue
        scales = as_scales(outputs, f"{which}_outputs")
        means, hits = [], []
        with torch.no_grad():
            for k, (logits, _) in enumerate(scales):
                x = logits.detach().float()
                means.append(x.mean())
                stats[scale_key(key, k)] = means[-1]
                hit = x > threshold if which == "real" else x < threshold
                hits.append(hit.float().mean())
            stats[key] = _mean_over_scales(means)
        acc[which] = hits
    if "real" in acc and "fake" in acc:
        if len(acc["real"]) != len(acc["fake"]):
            raise ValueError(
                f"discriminator_stats: real and fake outputs have {len(acc['real'])} and "
                f"{len(acc['fake'])} scales"
            )
        for k, (r, f) in enumerate(zip(acc["real"], acc["fake"])):
            stats[scale_key(D_ACC, k)] = 0.5 * (r + f)
        stats[D_ACC_REAL] = _mean_over_scales(acc["real"])
        stats[D_ACC_FAKE] = _mean_over_scales(acc["fake"])
        stats[D_ACC] = 0.5 * (stats[D_ACC_REAL] + stats[D_ACC_FAKE])
    return stats


class AdversarialLoss:
    """GAN losses of one mode for D's and G's steps.

    Args:
        mode: ``"lsgan"``, ``"hinge"`` or ``"bce"`` (non-saturating), see the module table.

    Raises:
        ValueError: on an unknown mode.
    """

    def __init__(self, mode: GANMode | str = "lsgan") -> None:
        self.mode = _check_mode(mode)

    @property
    def threshold(self) -> float:
        """Decision threshold on the raw logit used by ``D_acc``."""
        return DECISION_THRESHOLDS[self.mode]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"

    def d_loss(
        self, real_outputs: DOutputs, fake_outputs: DOutputs
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """D's loss: mean over scales of ½·(real term + fake term).

        Args:
            real_outputs: D's outputs on real (target) images.
            fake_outputs: D's outputs on fake images (G's output detached by the caller).

        Returns:
            ``(loss, parts)``: scalar float32 loss and detached diagnostics ``d_real_loss``,
            ``d_fake_loss`` (the two terms, scale-averaged) plus :func:`discriminator_stats`.

        Raises:
            ValueError: on malformed outputs or different scale counts.
        """
        real = as_scales(real_outputs, "real_outputs")
        fake = as_scales(fake_outputs, "fake_outputs")
        _check_same_scales(real, fake, "d_loss")
        real_terms = [_real_term(r.float(), self.mode).mean() for r, _ in real]
        fake_terms = [_fake_term(f.float(), self.mode).mean() for f, _ in fake]
        real_loss, fake_loss = _mean_over_scales(real_terms), _mean_over_scales(fake_terms)
        loss = 0.5 * (real_loss + fake_loss)
        parts = {D_REAL_LOSS: real_loss.detach(), D_FAKE_LOSS: fake_loss.detach()}
        parts.update(discriminator_stats(real, fake, mode=self.mode))
        return loss, parts

    def g_loss(self, fake_outputs: DOutputs) -> tuple[Tensor, dict[str, Tensor]]:
        """G's adversarial loss on D's outputs for G's (non-detached) fakes.

        Args:
            fake_outputs: D's outputs on fake images, with the graph back to G.

        Returns:
            ``(loss, parts)``: scalar float32 loss and detached ``D_fake`` / ``D_fake_s{k}``.

        Raises:
            ValueError: on malformed outputs.
        """
        fake = as_scales(fake_outputs, "fake_outputs")
        loss = _mean_over_scales([_gen_term(f.float(), self.mode).mean() for f, _ in fake])
        return loss, discriminator_stats(None, fake, mode=self.mode)


def feature_matching_loss(real_outputs: DOutputs, fake_outputs: DOutputs) -> Tensor:
    """pix2pixHD feature matching: L1 between D's features on real and fake images.

    ``mean_k mean_l mean|F_kl(fake) − F_kl(real)|`` over scales ``k`` and layers ``l``; the
    real features are detached, so only the fake path (G, and D if it is not frozen) receives
    gradients. pix2pixHD instead sums the layers, each weighted ``4 / (n_layers_D + 1)``; with
    its default 3 layers that is weight 1 on each of 4 feature maps, i.e. 4× our mean, so
    ``feat_match_weight`` = 10 here weighs a quarter of ``lambda_feat`` = 10 there.

    Args:
        real_outputs: D's outputs on real images (features used as targets).
        fake_outputs: D's outputs on fake images.

    Returns:
        Scalar float32 loss, 0 when the features are identical.

    Raises:
        ValueError: when the two outputs differ in scales, layer counts or feature shapes, or a
            scale has no features.
    """
    real = as_scales(real_outputs, "real_outputs")
    fake = as_scales(fake_outputs, "fake_outputs")
    _check_same_scales(real, fake, "feature_matching_loss")
    per_scale = []
    for k, ((_, real_feats), (_, fake_feats)) in enumerate(zip(real, fake)):
        if len(real_feats) != len(fake_feats) or not real_feats:
            raise ValueError(
                f"feature_matching_loss: scale {k} has {len(real_feats)} real and "
                f"{len(fake_feats)} fake feature maps; expected the same non-zero count"
            )
        layers = []
        for layer, (r, f) in enumerate(zip(real_feats, fake_feats)):
            if r.shape != f.shape:
                raise ValueError(
                    f"feature_matching_loss: scale {k} layer {layer}: real features "
                    f"{tuple(r.shape)} vs fake {tuple(f.shape)}"
                )
            layers.append(F.l1_loss(f.float(), r.detach().float()))
        per_scale.append(torch.stack(layers).mean())
    return _mean_over_scales(per_scale)


def r1_penalty(real_outputs: DOutputs, real_images: Tensor) -> Tensor:
    """R1 gradient penalty (Mescheder et al. 2018): ``E_x ‖∇_x D(x)‖²`` on real images.

    D's scalar output per image is the *sum* of all its logits over patches and scales
    (StyleGAN2 / StarGAN v2 differentiate ``logits.sum()``), so the gradient per image is that
    of its summed patch scores; its squared L2 norm over (C, H, W) is averaged over the batch.
    The penalty is returned unweighted: the loss term is ``r1_scale(r1_weight, r1_interval) ·
    r1_penalty(...)``, i.e. ``γ/2 · E‖∇D‖²`` times the lazy interval. With a PatchGAN the value
    grows with the number of patches, so ``r1_weight`` depends on the image size.

    Args:
        real_outputs: D's outputs computed from ``real_images`` (graph kept).
        real_images: the real batch, with ``requires_grad=True`` set *before* D's forward pass
            (e.g. ``y = y.detach().requires_grad_(True)``). With a conditional D only the image
            being judged should require grad, not the condition.

    Returns:
        Scalar float32 penalty with a graph (``create_graph=True``) so it trains D.

    Raises:
        ValueError: if ``real_images`` does not require grad or the outputs do not depend on it.
    """
    if not isinstance(real_images, Tensor) or not real_images.requires_grad:
        raise ValueError(
            "r1_penalty: real_images must be a tensor with requires_grad=True, set before "
            "D's forward pass (y = y.detach().requires_grad_(True))"
        )
    scales = as_scales(real_outputs, "real_outputs")
    score = torch.stack([logits.float().sum() for logits, _ in scales]).sum()
    (grad,) = torch.autograd.grad(score, real_images, create_graph=True, allow_unused=True)
    if grad is None:
        raise ValueError("r1_penalty: real_outputs were not computed from real_images")
    return grad.float().square().flatten(1).sum(1).mean()


def r1_scale(r1_weight: float, r1_interval: int = 1) -> float:
    """Multiplier of :func:`r1_penalty` in D's loss: ``r1_weight / 2 · r1_interval``.

    ``r1_weight`` is γ in ``γ/2 · E‖∇D‖²``. With lazy regularisation (StyleGAN2) the penalty is
    computed only every ``r1_interval`` D steps and multiplied by the interval, so its average
    strength matches the every-step version. (StyleGAN2 also rescales Adam's learning rate and
    betas by ``interval / (interval + 1)``; that is the optimiser's business, not the loss's.)

    Args:
        r1_weight: γ, ≥ 0.
        r1_interval: apply every this many D steps, ≥ 1.

    Returns:
        The factor as a Python float.

    Raises:
        ValueError: if ``r1_weight < 0`` or ``r1_interval < 1``.
    """
    if r1_weight < 0 or r1_interval < 1:
        raise ValueError(
            f"r1_scale: expected r1_weight >= 0 and r1_interval >= 1, "
            f"got {r1_weight} and {r1_interval}"
        )
    return 0.5 * float(r1_weight) * int(r1_interval)


def r1_due(step: int, r1_weight: float, r1_interval: int = 1) -> bool:
    """Whether D step ``step`` (0-based) applies R1: ``r1_weight > 0`` and ``step % interval == 0``.

    Args:
        step: D's optimisation step counter, from 0.
        r1_weight: γ; 0 switches R1 off.
        r1_interval: lazy interval, ≥ 1.

    Returns:
        True when the penalty should be computed this step.
    """
    return r1_weight > 0 and step % max(int(r1_interval), 1) == 0
