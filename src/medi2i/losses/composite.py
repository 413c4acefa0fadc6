"""G's and D's full losses from a :class:`~medi2i.config.LossConfig`, with their diagnostics.

G's loss::

    total = w_recon + w_gan + w_fm (+ w_smooth) (+ w_perceptual)
    w_recon      = recon_weight · (l1_weight·L1 + ssim_weight·(1 − SSIM))   lung-weighted
    w_gan        = gan_weight · GAN_G                                   (AdversarialLoss.g_loss)
    w_fm         = feat_match_weight · FM                               (feature_matching_loss)
    w_smooth     = smooth_weight · smoothness(field)                    (R on)
    w_perceptual = perceptual_weight · perceptual(pred, target)         (PerceptualLoss)

``share_<part> = 100 · |w_<part>| / Σ |w_*|`` (in %, the shares sum to 100; absolute values
because the hinge G loss can be negative; all 0 if every part is 0). A part that is off (no D
outputs given, no field given, no perceptual network given, or weight 0) reads 0 and is not
computed. These are the numbers that show, e.g., a GAN term drowned by the others (recon 47 %,
GAN 18 %, FM 35 %).

D's loss::

    total = GAN_D (+ r1_scale(r1_weight, r1_interval) · R1   on steps where R1 is due)

``gan_weight`` balances G's objective only; it does not scale D's loss (D's loss has no other
term to balance except R1, which has its own weight).

All parts are detached 0-dim tensors; nothing here calls ``.item()`` or otherwise waits for the
device, so the trainer chooses when to read them. These classes hold no parameters and are
plain callables (the perceptual term's frozen network is handed in, built by
:func:`~medi2i.losses.perceptual.build_perceptual_loss`). The parts' names are the logged names
of :mod:`medi2i.run.scalars` (:data:`PART_NAMES` is defined there and re-exported here).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from medi2i.config import LossConfig
from medi2i.losses.adversarial import (
    AdversarialLoss,
    DOutputs,
    discriminator_stats,
    feature_matching_loss,
    r1_due,
    r1_penalty,
    r1_scale,
)
from medi2i.losses.perceptual import PerceptualLoss
from medi2i.losses.reconstruction import reconstruction_loss
from medi2i.losses.regularizers import smoothness_loss
from medi2i.run.scalars import (
    D_FAKE,
    D_GAN,
    D_REAL,
    PART_NAMES,
    R1,
    RECON_DSSIM,
    RECON_L1,
    W_R1,
    gnorm_key,
    gshare_key,
    share_key,
    weighted_key,
)

logger = logging.getLogger(__name__)

__all__ = ["PART_NAMES", "DiscriminatorLoss", "GeneratorLoss", "gradient_shares", "loss_shares"]

_TINY = 1e-12


def loss_shares(weighted: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each weighted part's share of G's loss, in percent of the sum of absolute parts.

    Args:
        weighted: ``{name: weighted part}`` of 0-dim tensors on one device.

    Returns:
        ``{"share_<name>": tensor}``, detached, summing to 100 (all 0 when every part is 0).
    """
    names = list(weighted)
    magnitudes = torch.stack([weighted[n].detach().float().abs() for n in names])
    shares = 100.0 * magnitudes / magnitudes.sum().clamp_min(_TINY)
    return {share_key(n): shares[i] for i, n in enumerate(names)}


class GeneratorLoss:
    """G's (and R's) total loss and its weighted parts.

    Args:
        cfg: loss settings (default ``LossConfig()``).
        data_range: intensity range width of the images (1.0 for [0, 1], 2.0 for [−1, 1]),
            used by SSIM.
        perceptual: the perceptual term (:func:`~medi2i.losses.perceptual.
            build_perceptual_loss`), needed when ``cfg.perceptual_weight > 0``; ignored
            otherwise.

    Raises:
        ValueError: if ``data_range`` is not positive, or ``perceptual_weight > 0`` without
            ``perceptual``.
    """

    def __init__(
        self,
        cfg: LossConfig | None = None,
        *,
        data_range: float,
        perceptual: PerceptualLoss | None = None,
    ) -> None:
        if not data_range > 0:
            raise ValueError(f"GeneratorLoss: data_range must be positive, got {data_range}")
        self.cfg = cfg if cfg is not None else LossConfig()
        self.data_range = float(data_range)
        if self.cfg.perceptual_weight > 0 and perceptual is None:
            raise ValueError(
                f"GeneratorLoss: perceptual_weight={self.cfg.perceptual_weight} needs the "
                "perceptual loss (build it with medi2i.losses.build_perceptual_loss)"
            )
        self.perceptual = perceptual if self.cfg.perceptual_weight > 0 else None
        self.adversarial = AdversarialLoss(self.cfg.gan_mode)
        # the reconstruction's lung weight; the trainer sets it each epoch under a curriculum
        self.lung_weight = float(self.cfg.lung_weight)
        # RegGAN's balance by default: smoothness 10 against an L1 on [-1, 1] weighted 20
        self.smooth_weight = (
            self.cfg.smooth_weight if self.cfg.smooth_weight is not None else self.data_range / 4
        )
        logger.debug("GeneratorLoss(%s, data_range=%s)", self.cfg, self.data_range)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.cfg!r}, data_range={self.data_range}, "
            f"perceptual={self.perceptual!r})"
        )

    def __call__(
        self,
        pred: Tensor,
        target: Tensor,
        mask: Tensor | None = None,
        *,
        fake_outputs: DOutputs | None = None,
        real_outputs: DOutputs | None = None,
        fm_outputs: DOutputs | None = None,
        field: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute G's loss (:meth:`weighted_terms` summed, with diagnostics).

        Args:
            pred: image compared with the target (by the reconstruction and the perceptual
                term): ``warp(G(x))`` when R is on, else ``G(x)``; (N, C, H, W).
            target: target image, same shape.
            mask: optional lung / ROI mask, (N, 1, H, W) or (N, C, H, W).
            fake_outputs: D's outputs on G's output (graph kept back to G); None in G-only
                modes (then GAN and FM read 0).
            real_outputs: D's outputs on the real target, needed for feature matching when
                ``feat_match_weight > 0`` (may be computed under ``torch.no_grad()``: FM
                detaches them anyway).
            fm_outputs: D's outputs on the image feature matching compares with the target:
                it must be in the target's frame (``warp(G(x))`` when R is on), because FM is
                a position-wise L1 between feature maps. Default ``fake_outputs`` (right when
                R is off, where G's output is the image compared with the target).
            field: R's displacement field (N, 2, H, W) in pixels, or None when R is off.

        Returns:
            ``(total, parts)``. ``parts`` (all detached 0-dim tensors): ``w_recon``, ``w_gan``,
            ``w_fm``, ``w_smooth``, ``w_perceptual``; ``share_recon`` … ``share_perceptual``
            (percent); the unweighted ``recon`` (with ``recon_l1``, ``recon_dssim``), ``gan``,
            ``fm``, ``smooth``, ``perceptual``;
            ``total``; and ``D_real`` / ``D_fake`` when the corresponding outputs are given.

        Raises:
            ValueError: if feature matching is on and ``fake_outputs`` is given without
                ``real_outputs``, or on malformed inputs.
        """
        weighted, raw, stats = self.weighted_terms(
            pred,
            target,
            mask,
            fake_outputs=fake_outputs,
            real_outputs=real_outputs,
            fm_outputs=fm_outputs,
            field=field,
        )
        return self.summarise(weighted, raw, stats)

    def weighted_terms(
        self,
        pred: Tensor,
        target: Tensor,
        mask: Tensor | None = None,
        *,
        fake_outputs: DOutputs | None = None,
        real_outputs: DOutputs | None = None,
        fm_outputs: DOutputs | None = None,
        field: Tensor | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """G's weighted loss terms with their graphs (arguments as in :meth:`__call__`).

        Returns:
            ``(weighted, raw, stats)``: ``weighted[name]`` = weight x term for every name of
            :data:`PART_NAMES` (graph kept; a term that is off is a constant 0); ``raw`` the
            unweighted terms (plus ``recon_l1``, ``recon_dssim``, detached); ``stats`` D's
            detached ``D_real`` / ``D_fake`` when outputs are given.
        """
        cfg = self.cfg
        recon, recon_parts = reconstruction_loss(
            pred,
            target,
            mask,
            data_range=self.data_range,
            lung_weight=self.lung_weight,
            l1_weight=cfg.l1_weight,
            ssim_weight=cfg.ssim_weight,
            scale_weights=tuple(cfg.recon_scales),
        )
        zero = recon.new_zeros(())
        raw = {"recon": recon, "gan": zero, "fm": zero, "smooth": zero, "perceptual": zero}
        stats: dict[str, Tensor] = {}
        if fake_outputs is not None:
            if cfg.gan_weight > 0:
                raw["gan"], _ = self.adversarial.g_loss(fake_outputs)
            if cfg.feat_match_weight > 0:
                if real_outputs is None:
                    raise ValueError(
                        "GeneratorLoss: feature matching (feat_match_weight="
                        f"{cfg.feat_match_weight}) needs real_outputs, D's outputs on the target"
                    )
                raw["fm"] = feature_matching_loss(
                    real_outputs, fm_outputs if fm_outputs is not None else fake_outputs
                )
        if fake_outputs is not None or real_outputs is not None:
            all_stats = discriminator_stats(real_outputs, fake_outputs, mode=cfg.gan_mode)
            stats = {k: all_stats[k] for k in (D_REAL, D_FAKE) if k in all_stats}
        if field is not None and self.smooth_weight > 0:
            raw["smooth"] = smoothness_loss(field, cfg.smooth_type)
        if self.perceptual is not None:
            raw["perceptual"] = self.perceptual(pred, target)

        weights = {
            "recon": cfg.recon_weight,
            "gan": cfg.gan_weight,
            "fm": cfg.feat_match_weight,
            "smooth": self.smooth_weight,
            "perceptual": cfg.perceptual_weight,
        }
        weighted = {name: weights[name] * raw[name] for name in PART_NAMES}
        raw_out = {n: raw[n].detach() for n in PART_NAMES}
        raw_out[RECON_L1] = recon_parts["l1"]
        raw_out[RECON_DSSIM] = recon_parts["dssim"]
        return weighted, raw_out, stats

    @staticmethod
    def summarise(
        weighted: dict[str, Tensor], raw: dict[str, Tensor], stats: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Sum :meth:`weighted_terms` into G's total loss and its diagnostics.

        Returns:
            ``(total, parts)`` as :meth:`__call__` describes.
        """
        total = weighted[PART_NAMES[0]]
        for name in PART_NAMES[1:]:
            total = total + weighted[name]
        parts: dict[str, Tensor] = {weighted_key(n): weighted[n].detach() for n in PART_NAMES}
        parts.update(loss_shares(weighted))
        parts.update(raw)
        parts["total"] = total.detach()
        parts.update(stats)
        return total, parts


def gradient_shares(weighted: dict[str, Tensor], output: Tensor) -> dict[str, Tensor]:
    """How hard each weighted term of G's loss pulls on G's output image.

    For each term ``t``: ``gnorm_<name> = ‖∂t/∂output‖₂`` (over the whole batch) and
    ``gshare_<name> = 100 · gnorm / Σ gnorm`` (percent; all 0 when every norm is 0). This, not
    the share of the loss *value*, says what drives G: a GAN term whose value is nearly constant
    (D at chance) can hold half the loss value while contributing a small gradient, and a term's
    gradient grows linearly with its weight, so a target share can be reached by solving for the
    weight. The output is G's image (before R's warp), the one point every term passes through.

    Costs one extra backward pass per active term through the loss and D/R (not through G), so
    the trainer measures it every few steps only. The graphs are kept for the real backward.

    Args:
        weighted: ``{name: weighted term}`` as :meth:`GeneratorLoss.weighted_terms` returns.
        output: G's output tensor the terms were computed from (requires grad).

    Returns:
        Detached 0-dim float32 tensors ``gnorm_<name>`` and ``gshare_<name>`` for every name.
    """
    norms: dict[str, Tensor] = {}
    for name, term in weighted.items():
        grad = None
        if term.requires_grad:
            (grad,) = torch.autograd.grad(term, output, retain_graph=True, allow_unused=True)
        norms[name] = (
            grad.detach().float().norm()
            if grad is not None
            else output.new_zeros((), dtype=torch.float32)
        )
    stacked = torch.stack(list(norms.values()))
    shares = 100.0 * stacked / stacked.sum().clamp_min(_TINY)
    out = {gnorm_key(n): norms[n] for n in norms}
    out.update({gshare_key(n): shares[i] for i, n in enumerate(norms)})
    return out


class DiscriminatorLoss:
    """D's loss: the GAN term, plus the (lazy) R1 penalty on steps where it is due.

    Args:
        cfg: loss settings (default ``LossConfig()``); uses ``gan_mode``, ``r1_weight`` and
            ``r1_interval``.
    """

    def __init__(self, cfg: LossConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else LossConfig()
        self.adversarial = AdversarialLoss(self.cfg.gan_mode)
        self.r1_factor = r1_scale(self.cfg.r1_weight, self.cfg.r1_interval)
        logger.debug("DiscriminatorLoss(%s), R1 factor %s", self.cfg, self.r1_factor)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cfg!r})"

    def r1_due(self, step: int) -> bool:
        """Whether D step ``step`` (0-based) should apply R1 (see :func:`r1_due`).

        Args:
            step: D's optimisation step counter.

        Returns:
            True every ``r1_interval`` steps when ``r1_weight > 0``.
        """
        return r1_due(step, self.cfg.r1_weight, self.cfg.r1_interval)

    def __call__(
        self,
        real_outputs: DOutputs,
        fake_outputs: DOutputs,
        *,
        real_images: Tensor | None = None,
        apply_r1: bool = False,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute D's loss.

        For R1, make the real batch require grad before D's forward pass
        (``y = y.detach().requires_grad_(apply_r1)``) and pass it as ``real_images``; the GAN
        term and R1 then share that one forward pass.

        Args:
            real_outputs: D's outputs on real images.
            fake_outputs: D's outputs on G's output, detached from G.
            real_images: the real batch the real outputs came from (needed when R1 applies).
            apply_r1: True on steps where R1 is due (see :meth:`r1_due`); ignored when
                ``r1_weight`` is 0.

        Returns:
            ``(total, parts)``. ``parts``: ``d_gan`` (GAN term), ``d_real_loss``,
            ``d_fake_loss``, ``total``, the :func:`~medi2i.losses.adversarial.
            discriminator_stats` (``D_real``, ``D_fake``, ``D_acc`` …), and, on R1 steps only,
            ``r1`` (raw penalty) and ``w_r1`` (as added to the total, lazy factor included).

        Raises:
            ValueError: if R1 applies and ``real_images`` is missing or does not require grad.
        """
        gan, parts = self.adversarial.d_loss(real_outputs, fake_outputs)
        total = gan
        parts[D_GAN] = gan.detach()
        if apply_r1 and self.r1_factor > 0:
            if real_images is None:
                raise ValueError("DiscriminatorLoss: apply_r1=True needs real_images")
            penalty = r1_penalty(real_outputs, real_images)
            weighted = self.r1_factor * penalty
            total = total + weighted
            parts[R1] = penalty.detach()
            parts[W_R1] = weighted.detach()
        parts["total"] = total.detach()
        return total, parts
