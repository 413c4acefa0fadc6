"""One optimisation step of every network: the story of a training step, in one place.

One optimisation step, for a batch ``(x, y, mask)`` (input, possibly misaligned target, lung
mask drawn in the input's frame)::

    y_hat = G(x)
    D step   (when D is on): D_loss = GAN(D(y), D(y_hat.detach())) [+ R1 on lazy steps]
                             (D(y) is kept, detached, for the G step's feature matching)
    G step:  with R on:  field = R(y_hat, y)   (learnt R, model.R.kind net)
                             or R(y_hat.detach(), y, mask)   (fitted R, kind fit: no
                             weights; G learns through the warped image only);
                         [field -= running mean of the fields' affine part, model.R.center]
                         pred = warp(y_hat, field);
                         mask_t = warp(mask, field.detach())        (the target's frame)
             with R off: pred = y_hat;  mask_t = mask
             G_loss = w_recon(pred, y, mask_t) + gan_weight*GAN(D(y_hat))
                      + feat_match_weight*FM(D(y), D(pred)) [+ smooth_weight*smooth(field),
                        learnt R only] [+ perceptual_weight*perceptual(pred, y)]
    clip each network's gradient norm (the norm before clipping is logged), then - unless a
    loss or gradient is non-finite, in which case the step is skipped and counted - step the
    optimisers and schedulers and update the EMA of G.

Frames. Every position-wise comparison is made in the target's frame: the reconstruction,
the lung weighting (the mask is warped by R's field, detached so that R cannot win by shrinking
the weighted region), feature matching, a position-wise L1 between D's feature maps, which
against G's unwarped output would pull G towards reproducing the target's misalignment, and the
perceptual term, an L1 between a frozen network's feature maps (the same ``pred`` as the
reconstruction, inside ``GeneratorLoss``). The adversarial term alone is position-free, and D
judges G's own output, as it was trained to.

Gradient shares. Every ``logging.gshare_every`` steps each weighted term's gradient norm on
``y_hat`` is measured (``gnorm_*``, ``gshare_*``): what drives G, which the loss values'
shares (``share_*``) do not tell when a term's value is large but flat.

D and G are updated simultaneously from the same parameters (both losses are computed before
either optimiser steps), so one finite-check covers the whole step. D sees each image once per
step: the D step scores the target and G's output (detached) in one call, and the G step scores
only what needs G's graph (G's output, and warp(G(x)) for feature matching), reusing the D
step's scores of the target. That is exact because the G step calls D in eval mode: spectral
normalisation then skips its power iteration and uses the vectors the D step just updated, so
both calls see the same normalised weights (a second training-mode call would have advanced
them). In the G step D's parameters are frozen and D is called unwrapped, so its gradients
are never touched there - which also keeps DDP's gradient reduction for D in the D step only.

Phases (``train.phases``, :mod:`medi2i.training.phases`): a network that has not joined yet takes
no part - without R the frame is G's own, without D there is no D step and no GAN or FM term - and
its optimiser and schedule do not step.

The diagnostics a step returns carry the logged names of :mod:`medi2i.run.scalars`.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass

import torch

from medi2i.losses import gradient_shares
from medi2i.models.registration import warp
from medi2i.run.scalars import (
    D_FAKE,
    D_REAL,
    EMA_DECAY,
    FIELD_MAX_PX,
    FIELD_SYSTEMATIC_PX,
    LOSS_D,
    LOSS_G,
    NETWORKS,
    clip_cut_key,
    clip_rate_key,
    grad_norm_key,
)
from medi2i.training.device import batch_tensor
from medi2i.training.distributed import unwrap_model
from medi2i.utils.precision import autocast

log = logging.getLogger(__name__)

__all__ = ["TrainStep", "TrainingError"]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite steps in a row)."""


def _detached(outputs: list) -> list:
    """D's outputs with every tensor detached (targets of feature matching, not graphs)."""
    return [(logits.detach(), [f.detach() for f in feats]) for logits, feats in outputs]


@contextlib.contextmanager
def _frozen(d_net: torch.nn.Module):
    """D as the G step uses it: no parameter gradients, and in eval mode, where spectral
    normalisation reuses the singular vectors of the D step's call instead of iterating again
    (the same normalised weights as the D step's scores of the target). D has no other
    mode-dependent layer."""
    was_training = d_net.training
    d_net.requires_grad_(False)
    d_net.eval()
    try:
        yield d_net
    finally:
        d_net.requires_grad_(True)
        d_net.train(was_training)


def _split(outputs: list, n: int) -> list[list]:
    """Split D's outputs on ``cat([a, b, ...])`` (``n`` images each) into one output per part."""
    parts = outputs[0][0].shape[0] // n
    return [
        [
            (logits[k * n : (k + 1) * n], [f[k * n : (k + 1) * n] for f in feats])
            for logits, feats in outputs
        ]
        for k in range(parts)
    ]


@dataclass
class _TargetFrame:
    """G's output in the target's frame: what every position-wise loss compares."""

    pred: torch.Tensor
    """warp(G(x)) with R on, else G(x)."""
    mask: torch.Tensor
    """The lung mask in the same frame (warped by R's detached field)."""
    field: torch.Tensor | None
    """R's field in pixels, None without R."""


class TrainStep:
    """The training step of :class:`~medi2i.training.trainer.Trainer` (a base class of it).

    It uses the trainer's networks, losses, optimisers, schedules, scaler, EMA, config, the
    current training phase (``phase``: the networks that train now, :mod:`.phases`) and step
    counters (``global_step``, ``d_step``, ``skipped_steps``, ``nonfinite_in_row``).
    """

    @property
    def r_on(self) -> bool:
        """R takes part in this phase's steps."""
        return self.R is not None and "R" in self.phase

    @property
    def d_on(self) -> bool:
        """D takes part in this phase's steps."""
        return self.D is not None and "D" in self.phase

    def _stepping(self) -> list[str]:
        """The networks with an optimiser that train in this phase."""
        return [name for name in self.optimizers if name in self.phase]

    def _clip_limit(self, name: str) -> float | None:
        own = getattr(self.cfg.optim, name).grad_clip
        return own if own is not None else self.cfg.optim.grad_clip

    def _autocast(self):
        return autocast(self.device.type, self.amp_dtype)

    def _clip(self, name: str) -> dict[str, torch.Tensor]:
        """Unscale, measure and clip one network's gradient; returns detached diagnostics."""
        opt = self.optimizers[name]
        self.scaler.unscale_(opt)
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        limit = self._clip_limit(name)
        norm = torch.nn.utils.clip_grad_norm_(params, limit if limit else float("inf"))
        norm = norm.detach()
        out = {grad_norm_key(name): norm}
        if limit:
            fired = norm > limit
            out[clip_rate_key(name)] = fired.float()
            # fraction of the gradient's length removed by clipping ("clip cut 80%")
            out[clip_cut_key(name)] = torch.where(fired, 1.0 - limit / norm, 0.0)
        return out

    def _to_device(self, batch: dict, key: str) -> torch.Tensor:
        return batch_tensor(batch, key, self.device, self.memory_format)

    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """One optimisation step of every network; returns detached diagnostics.

        G translates the input; R (when on) puts G's output into the target's frame; D (when
        on) learns to tell the target from G's output; G (and a learnt R) learn from the
        reconstruction in the target's frame plus D's verdict; then every optimiser steps
        together, unless a loss or gradient is not finite.
        """
        x, y, mask = (self._to_device(batch, key) for key in ("input", "target", "mask"))
        stats: dict[str, torch.Tensor] = {}
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        with self._autocast():
            y_hat = self.G(x)
        y_hat = y_hat.float()
        frame = self._in_target_frame(y_hat, y, mask, stats)
        d_total, real_out = self._d_step(x, y, y_hat, frame, stats) if self.d_on else (None, None)
        g_total = self._g_step(x, y, y_hat, frame, real_out, stats)
        return self._apply_step(g_total, d_total, stats)

    def _in_target_frame(
        self, y_hat: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, stats: dict
    ) -> _TargetFrame:
        """G's output and the lung mask in the target's frame (R's field applied when R is on).

        Every position-wise loss compares images in the target's frame: with R on that is
        warp(G(x)), and the lung mask (drawn in the input's frame) is warped by the same field,
        detached so that R cannot shrink the weighted region.
        """
        if not self.r_on:
            return _TargetFrame(y_hat, mask, None)
        if self.r_learnt:
            with self._autocast():
                # A learnt R reads G's output with its graph (RegGAN's formulation): G also
                # learns through the field. With a detached copy G learnt only through the
                # warp and ended 0.9 dB lower in lung PSNR on the benchmark's validation split.
                field = self.R(y_hat, y)
        else:
            # A fitted R registers G's output as it is and hands G's loss a fixed frame: G
            # learns through the warped image, not through the field.
            field = self.R(y_hat.detach(), y, mask)
        field = field.float()
        if self.r_centring is not None:
            # a displacement common to the data is G's to fix, not R's to absorb
            field = self.r_centring(field)
            stats[FIELD_SYSTEMATIC_PX] = self.r_centring.estimate()[:, 0].norm()
        stats[FIELD_MAX_PX] = field.detach().norm(dim=1).amax()
        return _TargetFrame(warp(y_hat, field), warp(mask, field.detach()), field)

    def _d_step(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        y_hat: torch.Tensor,
        frame: _TargetFrame,
        stats: dict,
    ) -> tuple[torch.Tensor, list]:
        """D's loss on the target (real) against G's output (fake), back-propagated into D.

        D judges G's output as it is, or (``model.D.frame: target``) warped into the target's
        frame, where a conditional D sees real and fake pairs equally misaligned. Returns the
        loss and D's outputs on the target, detached (the G step's real scores).
        """
        judged = frame.pred if self.d_in_target_frame else y_hat
        cond = torch.cat([x, x]) if self.d_conditional else None
        apply_r1 = self.d_loss.r1_due(self.d_step)
        real = y.detach().requires_grad_(apply_r1)
        with self._autocast():
            outputs = self.D(torch.cat([real, judged.detach()]), cond)
        real_out, fake_out = _split(outputs, x.shape[0])
        total, parts = self.d_loss(real_out, fake_out, real_images=real, apply_r1=apply_r1)
        self.scaler.scale(total).backward()
        parts.pop("total")  # logged as loss_D
        stats.update(parts)
        stats[LOSS_D] = total.detach()
        stats.update(self._clip("D"))
        return total, _detached(real_out)

    def _d_view(
        self, x: torch.Tensor, y_hat: torch.Tensor, frame: _TargetFrame
    ) -> tuple[list, list | None]:
        """The frozen D's outputs for G's loss: (judged image, feature-matching image).

        The GAN term judges what D was trained on: G's own output (position-free), or with
        ``model.D.frame: target`` the warped output. Feature matching is a position-wise L1
        between D's feature maps of the target (the D step's) and of the image in the target's
        frame (warp(G(x)) with R on): against the unwarped output it would pull G towards
        reproducing the target's misalignment. None: feature matching uses the judged image.
        """
        if self.d_in_target_frame:
            # a learnt R's field is detached here: R registers, it does not learn to fool D
            images = [warp(y_hat, frame.field.detach()) if self.r_learnt else frame.pred]
        else:
            images = [y_hat]
            if self.r_on and self.cfg.loss.feat_match_weight > 0:
                images.append(frame.pred)
        with _frozen(unwrap_model(self.D)) as d_net:
            cond = torch.cat([x] * len(images)) if self.d_conditional else None
            with self._autocast():
                outputs = d_net(torch.cat(images), cond)
        chunks = _split(outputs, x.shape[0])
        return chunks[0], chunks[1] if len(chunks) > 1 else None

    def _g_step(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        y_hat: torch.Tensor,
        frame: _TargetFrame,
        real_out: list | None,
        stats: dict,
    ) -> torch.Tensor:
        """G's (and a learnt R's) loss: reconstruction in the target's frame, D's verdict,
        feature matching and R's smoothness; back-propagated into G and R. ``real_out``: the D
        step's outputs on the target (None without D)."""
        fake_out = fm_out = None
        if self.d_on:
            fake_out, fm_out = self._d_view(x, y_hat, frame)
        weighted, raw, d_view = self.g_loss.weighted_terms(
            frame.pred,
            y,
            frame.mask,
            fake_outputs=fake_out,
            real_outputs=real_out,
            fm_outputs=fm_out,
            field=frame.field if self.r_learnt else None,  # a fitted field is not G's to smooth
        )
        every = self.cfg.logging.gshare_every
        if every and self.global_step % every == 0:
            stats.update(gradient_shares(weighted, y_hat))
        total, parts = self.g_loss.summarise(weighted, raw, d_view)
        self.scaler.scale(total).backward()
        for key in (D_REAL, D_FAKE, "total"):  # D's view is logged by the D step; loss_G
            parts.pop(key, None)
        stats.update(parts)
        stats[LOSS_G] = total.detach()
        stats.update(self._clip("G"))
        if self.r_on and self.r_learnt:
            stats.update(self._clip("R"))
        return total

    def _apply_step(
        self, g_total: torch.Tensor, d_total: torch.Tensor | None, stats: dict
    ) -> dict[str, torch.Tensor]:
        """Step every optimiser, the EMA and the schedules; skip a step that is not finite.

        The step's only host sync is the finiteness check. A skipped step's numbers are not
        finite, so they stay out of the epoch's means (an empty dict is returned).
        """
        checks = [g_total.detach()] + ([d_total.detach()] if d_total is not None else [])
        if not self.scaler.is_enabled():  # fp16's scaler handles inf gradients itself
            norms = {grad_norm_key(net) for net in NETWORKS}
            checks += [v for k, v in stats.items() if k in norms]
        finite = bool(torch.isfinite(torch.stack([c.float() for c in checks])).all())
        stepping = self._stepping()
        if finite:
            for name in stepping:
                self.scaler.step(self.optimizers[name])
            decay = self.ema.update(unwrap_model(self.G), self.global_step)
            stats[EMA_DECAY] = torch.tensor(decay)
            self.nonfinite_in_row = 0
        else:
            self.skipped_steps += 1
            self.nonfinite_in_row += 1
            log.warning(
                "non-finite loss or gradient at step %d (epoch %d): step skipped "
                "(%d in a row, %d in total)",
                self.global_step,
                self.epoch,
                self.nonfinite_in_row,
                self.skipped_steps,
            )
            if self.nonfinite_in_row >= self.cfg.train.max_nonfinite_steps:
                raise TrainingError(
                    f"{self.nonfinite_in_row} non-finite steps in a row (train."
                    f"max_nonfinite_steps={self.cfg.train.max_nonfinite_steps}); stopping. "
                    "Lower the learning rates, check the data for NaNs, or use amp: off."
                )
            stats = {}
        self.scaler.update()
        with warnings.catch_warnings():
            # a skipped first step trips torch's "scheduler before optimizer" warning; the
            # schedule follows the step count either way
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            for name in stepping:  # a network's schedule counts its own steps
                self.schedulers[name].step()
        if self.d_on:
            self.d_step += 1
        self.global_step += 1
        return stats
