"""The training loop: G-only, G+R, G+D and G+R+D, with EMA validation and exact resume.

One optimisation step, for a batch ``(x, y, mask)`` (input, possibly misaligned target, lung
mask drawn in the input's frame)::

    y_hat = G(x)
    D step   (when D is on): D_loss = GAN(D(y), D(y_hat.detach())) [+ R1 on lazy steps]
    G step:  with R on:  field = R(y_hat, y)   (learnt R, model.R.kind net)
                             or R(y_hat.detach(), y, mask)   (fitted R, kind fit: no
                             weights; G learns through the warped image only);
                         [field -= running mean of the fields' affine part, model.R.center]
                         pred = warp(y_hat, field);
                         mask_t = warp(mask, field.detach())        (the target's frame)
             with R off: pred = y_hat;  mask_t = mask
             G_loss = w_recon(pred, y, mask_t) + gan_weight*GAN(D(y_hat))
                      + feat_match_weight*FM(D(y), D(pred)) [+ smooth_weight*smooth(field),
                        learnt R only]
    clip each network's gradient norm (the norm before clipping is logged), then - unless a
    loss or gradient is non-finite, in which case the step is skipped and counted - step the
    optimisers and schedulers and update the EMA of G.

Frames. Every position-wise comparison is made in the target's frame: the reconstruction,
the lung weighting (the mask is warped by R's field, detached so that R cannot win by shrinking
the weighted region) and feature matching, a position-wise L1 between D's feature maps, which
against G's unwarped output would pull G towards reproducing the target's misalignment. The
adversarial term alone is position-free, and D judges G's own output, as it was trained to.

Gradient shares. Every ``logging.gshare_every`` steps each weighted term's gradient norm on
``y_hat`` is measured (``gnorm_*``, ``gshare_*``): what drives G, which the loss values'
shares (``share_*``) do not tell when a term's value is large but flat.

D and G are updated simultaneously from the same parameters (both losses are computed before
either optimiser steps), so one finite-check covers the whole step. D's real and fake halves
go through D in one call (spectral normalisation's power iteration then uses the same weights
for both). In the G step D's parameters are frozen and D is called unwrapped, so its gradients
are never touched there - which also keeps DDP's gradient reduction for D in the D step only.

Validation, sample grids, best-checkpoint selection and the final test evaluation use the EMA
generator (``EMA.module``), a separate copy: the online weights are never swapped or touched,
so validation can never run on the online weights by mistake.

Each epoch the run checks its own reconstruction loss and validation lung PSNR for a jump or a
collapse (:mod:`medi2i.run.stability`) and reports it (log, console, ``summary.json``);
validation also measures whether D separates held-out real targets from the EMA generator's
outputs (``val_D_acc``, ``val_D_gap``), the evidence that D is informative rather than at chance.

Everything needed to continue is checkpointed (atomically) at every epoch end - and every
``train.save_every_steps`` steps when set - so ``--resume RUN_DIR`` reproduces the
uninterrupted run step for step: the sample order and augmentation are pure functions of
``(seed, epoch, index)``, and the RNG, optimiser, scheduler, scaler and EMA states are restored.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from medi2i.config import Config, config_to_dict, save_config
from medi2i.data.builders import build_dataloader, build_dataset, build_normalizer, resolve_pairs
from medi2i.data.dataset import PairedImageDataset
from medi2i.data.intensity import IntensityProfile
from medi2i.data.normalization import Normalizer
from medi2i.data.pairs import MissingSplitError
from medi2i.inference.loading import LoadedGenerator
from medi2i.inference.predictor import Predictor
from medi2i.inference.scoring import score_split
from medi2i.losses import DiscriminatorLoss, GeneratorLoss, gradient_shares
from medi2i.models import build_discriminator, build_generator, build_registration
from medi2i.models.discriminator import resolve_d_conditional
from medi2i.models.field_centring import SystematicFieldRemoval
from medi2i.models.registration import warp
from medi2i.run.checkpoint import (
    CheckpointManager,
    checkpoint_payload,
    load_checkpoint,
    save_checkpoint,
)
from medi2i.run.layout import RunLayout
from medi2i.run.stability import FALLBACK_KEYS, INSTABILITY_KEYS, find_instabilities
from medi2i.training.device import autocast, batch_tensor
from medi2i.training.distributed import (
    DistContext,
    barrier,
    cleanup_distributed,
    init_distributed,
    unwrap_model,
)
from medi2i.training.ema import EMA, resolve_warmup_steps
from medi2i.training.epoch_line import epoch_summary_line
from medi2i.training.run_logger import RunLogger
from medi2i.training.running_means import RunningMeans
from medi2i.training.sampler import EpochSampler
from medi2i.training.samples import sample_grid
from medi2i.training.schedules import build_scheduler
from medi2i.training.state import capture_rng_state, load_pretrained_generator, restore_rng_state
from medi2i.training.validation import EvalResult, evaluate_generator
from medi2i.utils.atomic import atomic_write_text
from medi2i.utils.formatting import compact
from medi2i.utils.progress import Progress
from medi2i.utils.version import __version__

log = logging.getLogger(__name__)

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

INTENSITY_PROFILE_IMAGES = 64
"""Training inputs (evenly spaced) the stored intensity profile is measured on."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite steps in a row)."""


def mode_name(cfg: Config) -> str:
    """``G``, ``G+R``, ``G+D`` or ``G+R+D``."""
    return "G" + ("+R" if cfg.model.R.enabled else "") + ("+D" if cfg.model.D.enabled else "")


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


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Trains G (with R and D when enabled) as a config describes.

    Args:
        cfg: the validated run config.
        run_dir: where config, checkpoints, logs and samples go.
        ctx: the (distributed) execution context.
        resume: a checkpoint dict to continue from (``None`` = fresh start).

    Raises:
        DatasetError: the dataset cannot be used.
        ValueError: inconsistent settings (e.g. a bad ``pretrained_G``).
    """

    def __init__(
        self, cfg: Config, run_dir: Path, ctx: DistContext, resume: dict | None = None
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.layout = RunLayout(self.run_dir)
        self.ctx = ctx
        self.device = ctx.device
        tc = cfg.train
        _seed_everything(cfg.seed)
        if tc.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        # -- data ------------------------------------------------------------------------------
        self.normalizer = (
            Normalizer.from_state_dict(resume["normalizer"]) if resume else build_normalizer(cfg)
        )
        lo, hi = cfg.data.normalization.output_range
        self.data_range = float(hi - lo)
        self.train_set = build_dataset(cfg, "train", normalizer=self.normalizer)
        # where the training inputs sit in the normalisation window: predict checks new images
        # against it (checkpoint key intensity_profile)
        self.intensity_profile = IntensityProfile.from_images(
            self.train_set.raw_inputs(INTENSITY_PROFILE_IMAGES)
        )
        log.info("intensity profile: %s", self.intensity_profile.describe())
        world_batch = cfg.data.batch_size * ctx.world_size
        self.steps_per_epoch = tc.steps_per_epoch or max(1, len(self.train_set) // world_batch)
        self.sampler = EpochSampler(
            len(self.train_set),
            batch_size=cfg.data.batch_size,
            steps=self.steps_per_epoch,
            seed=cfg.seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
        )
        self.train_loader = build_dataloader(
            self.train_set, cfg, shuffle=False, sampler=self.sampler, pin_memory=self._pin()
        )
        self.val_set = self._optional_split("val")
        self.pairs_misaligned, why = resolve_pairs(cfg, self.train_set)
        log.info(
            "training pairs: %s (%s)", "misaligned" if self.pairs_misaligned else "aligned", why
        )
        self.pairs_reason = why
        self.val_loader = self._eval_loader(self.val_set)

        # -- networks, optimisers, schedules ---------------------------------------------------
        self.G = build_generator(cfg.model.G, output_range=(lo, hi)).to(self.device)
        self.R = None
        if cfg.model.R.enabled:
            self.R = build_registration(cfg.model.R, lung_weight=cfg.loss.lung_weight)
            self.R = self.R.to(self.device)
        # a fitted R has no weights: nothing to optimise, checkpoint or synchronise
        self.r_learnt = self.R is not None and cfg.model.R.kind == "net"
        self.r_centring = None
        if self.R is not None and cfg.model.R.center:
            self.r_centring = SystematicFieldRemoval(cfg.model.R.center_momentum)
        self.d_conditional = False
        self.d_in_target_frame = self.R is not None and cfg.model.D.frame == "target"
        self.D = None
        if cfg.model.D.enabled:
            self.d_conditional = resolve_d_conditional(cfg.model, self.pairs_misaligned)
            self.D = build_discriminator(cfg.model.D, self.d_conditional).to(self.device)
            if self.D.front is not None and resume is None:
                self.D.front.calibrate(self._calibration_targets())
        self.memory_format = torch.channels_last if tc.channels_last else torch.preserve_format
        for net in self._nets().values():
            net.to(memory_format=self.memory_format)
        warmup = resolve_warmup_steps(
            tc.ema_decay, tc.ema_warmup_steps, pretrained=bool(tc.pretrained_G)
        )
        self.ema = EMA(self.G, tc.ema_decay, warmup)
        if tc.pretrained_G and resume is None:
            info = load_pretrained_generator(tc.pretrained_G, self.G, self.ema)
            log.info("initialised G from %s: %s", tc.pretrained_G, info)
        self.optimizers = {
            name: self._make_optimizer(name, net) for name, net in self._nets().items()
        }
        self.schedulers = {
            name: build_scheduler(
                opt, cfg.optim, steps_per_epoch=self.steps_per_epoch, epochs=tc.epochs
            )
            for name, opt in self.optimizers.items()
        }
        self.amp_dtype = _AMP_DTYPES.get(tc.amp)
        if self.amp_dtype is not None and self.device.type == "cpu" and tc.amp == "fp16":
            raise ValueError("train.amp 'fp16' needs CUDA; use 'bf16' or 'off' on the CPU")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=tc.amp == "fp16")
        if ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.G = DDP(self.G, device_ids=ids)
            if self.r_learnt:
                self.R = DDP(self.R, device_ids=ids)
            if self.D is not None:
                self.D = DDP(self.D, device_ids=ids)
        self.g_loss = GeneratorLoss(cfg.loss, data_range=self.data_range)
        self.d_loss = DiscriminatorLoss(cfg.loss)

        # -- progress state --------------------------------------------------------------------
        self.epoch = 0  # the epoch being (or about to be) trained, 0-based
        self.step_in_epoch = 0
        self.global_step = 0  # optimiser steps taken (skipped steps included)
        self.d_step = 0
        self.skipped_steps = 0
        self.nonfinite_in_row = 0
        self.best: dict[str, Any] = {"metric": cfg.eval.best_metric, "value": None, "epoch": None}
        self.wall_seconds = 0.0
        # the per-epoch values the run checks for loss jumps and collapses (its own alarm)
        self.history: list[dict[str, float]] = []
        self.instabilities: list[dict[str, Any]] = []
        self.checkpoints = CheckpointManager(self.run_dir, keep_every=tc.checkpoint_every)
        if resume is not None:
            self._restore(resume)
        self.logger = RunLogger(
            self.run_dir,
            tensorboard=cfg.logging.tensorboard,
            enabled=ctx.is_main,
            # a resumed run drops the records the interrupted one wrote after its checkpoint
            purge_step=self.global_step + 1 if resume is not None else None,
        )
        log.info(
            "%s: %d train pairs, %d steps/epoch x %d epochs, batch %d x %d rank(s), device %s, "
            "amp %s, D %s",
            mode_name(cfg),
            len(self.train_set),
            self.steps_per_epoch,
            tc.epochs,
            cfg.data.batch_size,
            ctx.world_size,
            self.device,
            tc.amp,
            ("conditional" if self.d_conditional else "unconditional") if self.D else "off",
        )

    # ------------------------------------------------------------------------------------------
    # set-up helpers
    # ------------------------------------------------------------------------------------------

    def _pin(self) -> bool | None:
        return None if self.cfg.data.pin_memory is not None else self.device.type == "cuda"

    def _optional_split(self, split: str) -> PairedImageDataset | None:
        try:
            return build_dataset(self.cfg, split, normalizer=self.normalizer, train=False)
        except MissingSplitError as exc:
            log.warning("no %s split (%s); continuing without it", split, exc.problems[0])
            return None

    def _eval_loader(self, dataset: PairedImageDataset | None) -> DataLoader | None:
        if dataset is None:
            return None
        indices = list(range(self.ctx.rank, len(dataset), self.ctx.world_size))
        subset = torch.utils.data.Subset(dataset, indices)
        return DataLoader(
            subset,
            batch_size=self.cfg.data.batch_size,
            shuffle=False,
            num_workers=self.cfg.data.num_workers,
            pin_memory=bool(self._pin()),
        )

    def _calibration_targets(self, count: int = 32) -> list[torch.Tensor]:
        """The first ``count`` training targets, whole and un-augmented (D's detail gain)."""
        images = []
        for index in range(min(count, len(self.train_set))):
            arrays, _, _ = self.train_set.load_unit(index)
            image = self.normalizer.unit_to_output(arrays["target"]).astype(np.float32)
            images.append(torch.from_numpy(image)[None, None].to(self.device))
        return images

    def _nets(self) -> dict[str, nn.Module]:
        nets = {"G": self.G}
        if self.r_learnt:
            nets["R"] = self.R
        if self.D is not None:
            nets["D"] = self.D
        return nets

    def _make_optimizer(self, name: str, net: nn.Module) -> torch.optim.Optimizer:
        oc = getattr(self.cfg.optim, name)
        params = [p for p in net.parameters() if p.requires_grad]
        kwargs = {"lr": oc.lr, "betas": tuple(oc.betas)}
        if self.device.type == "cuda":
            kwargs["fused"] = True
        if oc.weight_decay > 0:
            return torch.optim.AdamW(params, weight_decay=oc.weight_decay, **kwargs)
        return torch.optim.Adam(params, **kwargs)

    def _clip_limit(self, name: str) -> float | None:
        own = getattr(self.cfg.optim, name).grad_clip
        return own if own is not None else self.cfg.optim.grad_clip

    def _autocast(self):
        return autocast(self.device.type, self.amp_dtype)

    # ------------------------------------------------------------------------------------------
    # one step
    # ------------------------------------------------------------------------------------------

    def _clip(self, name: str) -> dict[str, torch.Tensor]:
        """Unscale, measure and clip one network's gradient; returns detached diagnostics."""
        opt = self.optimizers[name]
        self.scaler.unscale_(opt)
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        limit = self._clip_limit(name)
        norm = torch.nn.utils.clip_grad_norm_(params, limit if limit else float("inf"))
        norm = norm.detach()
        out = {f"grad_norm_{name}": norm}
        if limit:
            fired = norm > limit
            out[f"clip_rate_{name}"] = fired.float()
            # fraction of the gradient's length removed by clipping ("clip cut 80%")
            out[f"clip_cut_{name}"] = torch.where(fired, 1.0 - limit / norm, 0.0)
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
        d_total = self._d_step(x, y, y_hat, frame, stats) if self.D is not None else None
        g_total = self._g_step(x, y, y_hat, frame, stats)
        return self._apply_step(g_total, d_total, stats)

    def _in_target_frame(
        self, y_hat: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, stats: dict
    ) -> _TargetFrame:
        """G's output and the lung mask in the target's frame (R's field applied when R is on).

        Every position-wise loss compares images in the target's frame: with R on that is
        warp(G(x)), and the lung mask (drawn in the input's frame) is warped by the same field,
        detached so that R cannot shrink the weighted region.
        """
        if self.R is None:
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
            stats["field_systematic_px"] = self.r_centring.estimate()[:, 0].norm()
        stats["field_max_px"] = field.detach().norm(dim=1).amax()
        return _TargetFrame(warp(y_hat, field), warp(mask, field.detach()), field)

    def _d_step(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        y_hat: torch.Tensor,
        frame: _TargetFrame,
        stats: dict,
    ) -> torch.Tensor:
        """D's loss on the target (real) against G's output (fake), back-propagated into D.

        D judges G's output as it is, or (``model.D.frame: target``) warped into the target's
        frame, where a conditional D sees real and fake pairs equally misaligned.
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
        stats["loss_D"] = total.detach()
        stats.update(self._clip("D"))
        return total

    def _d_view(
        self, x: torch.Tensor, y: torch.Tensor, y_hat: torch.Tensor, frame: _TargetFrame
    ) -> tuple[list, list, list | None]:
        """The frozen D's outputs for G's loss: (target, judged image, feature-matching image).

        The GAN term judges what D was trained on: G's own output (position-free), or with
        ``model.D.frame: target`` the warped output. Feature matching is a position-wise L1
        between D's feature maps of the target and of the image in the target's frame
        (warp(G(x)) with R on): against the unwarped output it would pull G towards
        reproducing the target's misalignment.
        """
        if self.d_in_target_frame:
            # a learnt R's field is detached here: R registers, it does not learn to fool D
            judged = warp(y_hat, frame.field.detach()) if self.r_learnt else frame.pred
            images = [y, judged]
        else:
            images = [y, y_hat]
            if self.R is not None and self.cfg.loss.feat_match_weight > 0:
                images.append(frame.pred)
        d_net = unwrap_model(self.D)
        d_net.requires_grad_(False)
        try:
            cond = torch.cat([x] * len(images)) if self.d_conditional else None
            with self._autocast():
                outputs = d_net(torch.cat(images), cond)
        finally:
            d_net.requires_grad_(True)
        chunks = _split(outputs, x.shape[0])
        real_out, fake_out = chunks[0], chunks[1]
        if self.d_in_target_frame:
            return real_out, fake_out, fake_out
        return real_out, fake_out, chunks[2] if len(chunks) > 2 else None

    def _g_step(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        y_hat: torch.Tensor,
        frame: _TargetFrame,
        stats: dict,
    ) -> torch.Tensor:
        """G's (and a learnt R's) loss: reconstruction in the target's frame, D's verdict,
        feature matching and R's smoothness; back-propagated into G and R."""
        real_out = fake_out = fm_out = None
        if self.D is not None:
            real_out, fake_out, fm_out = self._d_view(x, y, y_hat, frame)
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
        for key in ("D_real", "D_fake", "total"):  # D's view is logged by the D step; loss_G
            parts.pop(key, None)
        stats.update(parts)
        stats["loss_G"] = total.detach()
        stats.update(self._clip("G"))
        if self.r_learnt:
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
            checks += [v for k, v in stats.items() if k.startswith("grad_norm_")]
        finite = bool(torch.isfinite(torch.stack([c.float() for c in checks])).all())
        if finite:
            for opt in self.optimizers.values():
                self.scaler.step(opt)
            decay = self.ema.update(unwrap_model(self.G), self.global_step)
            stats["ema_decay"] = torch.tensor(decay)
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
            for sched in self.schedulers.values():
                sched.step()
        if self.D is not None:
            self.d_step += 1
        self.global_step += 1
        return stats

    # ------------------------------------------------------------------------------------------
    # epochs
    # ------------------------------------------------------------------------------------------

    def _batches(self) -> Iterator[dict]:
        self.sampler.set_epoch(self.epoch, self.step_in_epoch)
        return iter(self.train_loader)

    def _learning_rates(self) -> dict[str, float]:
        return {f"lr_{name}": s.get_last_lr()[0] for name, s in self.schedulers.items()}

    def train_epoch(self) -> dict[str, float]:
        """Train the rest of the current epoch; returns the epoch's mean diagnostics."""
        cfg = self.cfg
        epoch_means, window = RunningMeans(), RunningMeans()
        bar = Progress(
            self.steps_per_epoch - self.step_in_epoch,
            desc=f"epoch {self.epoch + 1}/{cfg.train.epochs}",
            unit="step",
            enabled=self.ctx.is_main and cfg.logging.progress,
            terminal_only=True,
            leave=False,
        )
        window_start, window_images = time.perf_counter(), 0
        for net in self._nets().values():
            net.train()
        try:
            for batch in self._batches():
                stats = self.train_step(batch)
                epoch_means.add(stats)
                window.add(stats)
                window_images += batch["input"].shape[0] * self.ctx.world_size
                self.step_in_epoch += 1
                if self.step_in_epoch % cfg.logging.log_every != 0:
                    bar.update(1)
                else:
                    now = time.perf_counter()
                    scalars = window.means()
                    scalars.update(self._learning_rates())
                    scalars["images_per_s"] = window_images / max(now - window_start, 1e-9)
                    self.logger.log_step(self.global_step, self.epoch, scalars)
                    bar.update(1, loss_G=compact(scalars.get("loss_G", float("nan"))))
                    window.reset()
                    window_start, window_images = now, 0
                every = cfg.train.save_every_steps
                if (
                    every
                    and self.step_in_epoch % every == 0
                    and self.step_in_epoch < self.steps_per_epoch
                ):
                    self.save(is_best=False, epoch_end=False)
        finally:
            bar.close()
        return epoch_means.means()

    def validate(self) -> EvalResult | None:
        """EMA generator on the validation split (None when there is no val split)."""
        if self.val_loader is None:
            return None
        return evaluate_generator(
            self.ema.module,
            self.val_loader,
            ctx=self.ctx,
            data_range=self.data_range,
            autocast_dtype=self.amp_dtype,
            sample_count=self.cfg.eval.sample_count if self.ctx.is_main else 0,
            max_images=self.cfg.eval.max_val_images,
            discriminator=unwrap_model(self.D) if self.D is not None else None,
            d_conditional=self.d_conditional,
            gan_mode=self.cfg.loss.gan_mode,
        )

    def _is_better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        best = self.best["value"]
        if best is None:
            return True
        return value > best if self.cfg.eval.best_mode == "max" else value < best

    def fit(self) -> dict[str, Any]:
        """Train to ``train.epochs``; returns the final summary (also ``summary.json``)."""
        cfg, tc = self.cfg, self.cfg.train
        if self.ctx.is_main:
            save_config(cfg, self.layout.config)
        try:
            while self.epoch < tc.epochs:
                start = time.perf_counter()
                train_stats = self.train_epoch()
                scalars = {f"train_{k}": v for k, v in train_stats.items()}
                scalars.update(self._learning_rates())
                scalars["skipped_steps"] = float(self.skipped_steps)
                is_best = False
                last = self.epoch + 1 == tc.epochs
                if (self.epoch + 1) % tc.val_every == 0 or last:
                    result = self.validate()
                    if result is not None:
                        scalars.update({f"val_{k}": v for k, v in result.metrics.items()})
                        key = cfg.eval.best_metric
                        if key not in result.metrics:
                            raise ValueError(
                                f"eval.best_metric {key!r} is not a validation metric; "
                                f"choose one of {', '.join(sorted(result.metrics))}"
                            )
                        value = result.metrics[key]
                        if self._is_better(value):
                            is_best = True
                            self.best.update(value=value, epoch=self.epoch + 1)
                        self._log_samples(result)
                seconds = time.perf_counter() - start
                self.wall_seconds += seconds
                self.epoch += 1
                self.step_in_epoch = 0
                if self.best["value"] is not None:
                    scalars.update(best_value=self.best["value"], best_epoch=self.best["epoch"])
                scalars["epoch_seconds"] = seconds
                scalars["images_per_s"] = (
                    self.steps_per_epoch * cfg.data.batch_size * self.ctx.world_size / seconds
                )
                self.logger.log_epoch(self.epoch, scalars)
                self._check_stability(scalars)
                if self.ctx.is_main:
                    line = epoch_summary_line(
                        self.epoch,
                        tc.epochs,
                        {
                            **{
                                k[len("train_") :]: v
                                for k, v in scalars.items()
                                if k.startswith("train_")
                            },
                            **scalars,
                            "best_metric": cfg.eval.best_metric,
                        },
                        seconds=seconds,
                    )
                    print(line, flush=True)
                    log.info(line)
                self.save(is_best=is_best, epoch_end=True)
        except KeyboardInterrupt:
            log.warning("interrupted: saving %s before exiting", self.checkpoints.last_path())
            self.save(is_best=False, epoch_end=False)
            raise
        summary = self._final_summary()
        self.logger.close()
        return summary

    def _check_stability(self, scalars: dict[str, float]) -> None:
        """Record this epoch's checked values and report a loss jump or collapse it shows.

        A run that breaks (training loss doubling, validation PSNR falling by several dB) keeps
        a best checkpoint from before the break and could pass for a fair ablation arm; it says
        so itself, in the log, on the console and in ``summary.json`` (``instabilities``).
        """
        keys = [key for key, _ in INSTABILITY_KEYS]
        keys += [FALLBACK_KEYS[k] for k in keys if k in FALLBACK_KEYS]
        row = {"epoch": self.epoch, **{k: float(scalars[k]) for k in keys if k in scalars}}
        self.history.append(row)
        for jump in find_instabilities(self.history):
            if jump.epoch != self.epoch:
                continue
            self.instabilities.append(jump.to_dict())
            message = (
                f"training instability at epoch {jump.epoch}: {jump.message}; the best "
                f"checkpoint (epoch {self.best['epoch']}) may predate it - lower the "
                "learning rates or check the data"
            )
            log.warning(message)
            if self.ctx.is_main:
                print(f"warning: {message}", flush=True)

    def _log_samples(self, result: EvalResult) -> None:
        if not self.ctx.is_main or not result.samples:
            return
        s = result.samples
        lo, hi = self.cfg.data.normalization.output_range
        rgb = sample_grid(s["input"], s["output"], s["reference"], s["mask"], value_range=(lo, hi))
        self.logger.log_images(
            "val/samples",
            rgb,
            self.epoch + 1,
            save_png=self.layout.sample_grid(self.epoch + 1),
        )

    # ------------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly."""
        nets = {name: unwrap_model(net).state_dict() for name, net in self._nets().items()}
        return checkpoint_payload(
            epoch=self.epoch,
            step_in_epoch=self.step_in_epoch,
            step=self.global_step,
            d_step=self.d_step,
            skipped_steps=self.skipped_steps,
            model=nets,
            ema={"G": self.ema.state_dict()},
            optim={name: opt.state_dict() for name, opt in self.optimizers.items()},
            sched={name: s.state_dict() for name, s in self.schedulers.items()},
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
            rng=capture_rng_state(),
            config=config_to_dict(self.cfg),
            best=dict(self.best),
            normalizer=self.normalizer.state_dict(),
            intensity_profile=self.intensity_profile.to_dict(),
            wall_seconds=self.wall_seconds,
            history=list(self.history),
            instabilities=list(self.instabilities),
            mode=mode_name(self.cfg),
            r_centring=self.r_centring.state_dict() if self.r_centring is not None else None,
        )

    def save(self, *, is_best: bool, epoch_end: bool) -> None:
        """Write ``last`` (and ``best`` / every-N) checkpoints on rank 0."""
        if self.ctx.is_main:
            if epoch_end:
                self.checkpoints.save(self.state(), epoch=self.epoch, is_best=is_best)
            else:  # inside an epoch only ``last`` is refreshed
                save_checkpoint(self.checkpoints.last_path(), self.state())
        barrier(self.ctx)

    def _restore(self, state: dict) -> None:
        for name, net in self._nets().items():
            unwrap_model(net).load_state_dict(state["model"][name])
        self.ema.load_state_dict(state["ema"]["G"])
        if self.r_centring is not None and state.get("r_centring"):
            self.r_centring.load_state_dict(state["r_centring"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optim"][name])
        for name, sched in self.schedulers.items():
            sched.load_state_dict(state["sched"][name])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"]
        self.step_in_epoch = state["step_in_epoch"]
        self.global_step = state["step"]
        self.d_step = state["d_step"]
        self.skipped_steps = state["skipped_steps"]
        self.best = dict(state["best"])
        self.wall_seconds = state.get("wall_seconds", 0.0)
        self.history = list(state.get("history", []))
        self.instabilities = list(state.get("instabilities", []))
        restore_rng_state(state["rng"])
        log.info(
            "resumed at epoch %d, step %d (%d into the epoch)",
            self.epoch + 1,
            self.global_step,
            self.step_in_epoch,
        )

    # ------------------------------------------------------------------------------------------
    # the end
    # ------------------------------------------------------------------------------------------

    def _final_summary(self) -> dict[str, Any]:
        cfg = self.cfg
        summary: dict[str, Any] = {
            "mode": mode_name(cfg),
            "epochs": self.epoch,
            "steps": self.global_step,
            "skipped_steps": self.skipped_steps,
            "best": self.best,
            "wall_seconds": self.wall_seconds,
            "run_dir": str(self.run_dir),
            "pairs": {"misaligned": self.pairs_misaligned, "reason": self.pairs_reason},
            "D_conditional": self.d_conditional if self.D is not None else None,
            "instabilities": list(self.instabilities),
            "medi2i_version": __version__,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if cfg.eval.test_at_end:
            summary["test"] = self.test_best()
        if self.ctx.is_main:
            atomic_write_text(self.layout.summary, json.dumps(summary, indent=2) + "\n")
        return summary

    def test_best(self) -> dict[str, Any] | None:
        """The best (else last) EMA weights on the test split, beside the identity baseline.

        Scored by :func:`~medi2i.inference.scoring.score_split`, the path ``medi2i evaluate``
        takes, so ``test_metrics.json`` holds the same metrics (means over the test images) as
        the evaluation report. The main process scores; the others return ``None``.
        """
        test_set = self._optional_split("test") if self.ctx.is_main else None
        if test_set is None:
            return None
        best_path = self.checkpoints.best_path()
        ema_net, source, epoch = self.ema.module, "last", self.epoch
        if best_path.is_file():
            state = load_checkpoint(best_path, map_location=self.device)
            ema_net = copy.deepcopy(self.ema.module)  # same architecture, the best's weights
            ema_net.load_state_dict(state["ema"]["G"])
            epoch = state.get("epoch")
            source = f"best (epoch {epoch})"
        loaded = LoadedGenerator(
            generator=ema_net,
            config=self.cfg,
            normalizer=self.normalizer,
            checkpoint=best_path if best_path.is_file() else self.checkpoints.last_path(),
            weights="ema",
            epoch=epoch,
            intensity=self.intensity_profile,
        )
        was_training = ema_net.training
        try:
            scores = score_split(
                Predictor(loaded, device=self.device),
                test_set,
                data_range=self.data_range,
                split="test",
            )
        finally:
            ema_net.train(was_training)
        report = {
            "weights": f"EMA, {source}",
            "reference": scores.reference,
            "images": scores.images,
            "model": scores.means("model"),
            "identity": scores.means("identity"),
        }
        atomic_write_text(self.layout.test_metrics, json.dumps(report, indent=2) + "\n")
        m, b = report["model"], report["identity"]
        print(
            f"test ({scores.images} images, vs {scores.reference}, {report['weights']}): "
            f"PSNR {m['psnr']:.2f} dB (identity {b['psnr']:.2f}), "
            f"lung {m['psnr_mask']:.2f} (identity {b['psnr_mask']:.2f}); "
            f"SSIM {m['ssim']:.4f} (identity {b['ssim']:.4f}), "
            f"lung {m['ssim_mask']:.4f} (identity {b['ssim_mask']:.4f})",
            flush=True,
        )
        return report


# ----------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------


def _new_run_dir(cfg: Config, out: str | None) -> Path:
    if out is not None:
        run_dir = Path(out)
        layout = RunLayout(run_dir)
        checkpoints = layout.checkpoints
        if checkpoints.is_dir() and any(checkpoints.glob("*.pt")):
            raise ValueError(
                f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                "or choose another --out"
            )
        # A run stopped before its first checkpoint cannot be resumed, and starting again in
        # its folder would append to its logs (step 1 twice in steps.jsonl).
        leftovers = [p.name for p in layout.training_entries if p.exists()]
        if leftovers:
            raise ValueError(
                f"{run_dir} holds files of an earlier run ({', '.join(leftovers)}) but no "
                "checkpoint to resume from; delete them or choose another --out"
            )
        return run_dir
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(cfg.train.out_dir) / f"{stamp}-{mode_name(cfg)}"


def _attach_file_log(run_dir: Path) -> logging.Handler:
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(RunLayout(run_dir).train_log, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger("medi2i")
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
        for h in root.handlers:  # keep the console as quiet as the user asked
            if h.level == logging.NOTSET:
                h.setLevel(logging.WARNING)
    root.addHandler(handler)
    return handler


def resume_config(run_dir: Path, overrides: list[str]) -> tuple[Config, dict]:
    """The config and state of the run's newest readable checkpoint (``last.pt``, else the
    most recent other one, with a warning); only ``train.epochs`` may change. Partial files
    that a kill during a save left behind are removed first.

    Raises:
        ValueError: no (readable) checkpoint, or an override other than ``train.epochs``.
    """
    from medi2i.config import build_config

    manager = CheckpointManager(run_dir)
    if not manager.dir.is_dir() or not any(manager.dir.glob("*.pt")):
        raise ValueError(f"nothing to resume: {manager.dir} holds no checkpoint")
    manager.remove_partial_files()
    _, state = manager.load_latest()
    bad = [o for o in overrides if not o.startswith("train.epochs=")]
    if bad:
        raise ValueError(
            "a resumed run keeps its config (only train.epochs=N may change); got " + ", ".join(bad)
        )
    return build_config(state["config"], overrides), state


def train(
    cfg: Config | None = None,
    *,
    out: str | None = None,
    resume: str | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Run training as ``medi2i train`` does; returns the final summary.

    Args:
        cfg: the config of a new run (ignored when resuming).
        out: run directory of a new run (default: ``train.out_dir/<time>-<mode>``).
        resume: run directory to continue from its ``last`` checkpoint.
        overrides: with ``resume``, allowed: ``train.epochs=N``.
    """
    state = None
    if resume is not None:
        cfg, state = resume_config(Path(resume), list(overrides or []))
        run_dir = Path(resume)
    else:
        assert cfg is not None
        run_dir = _new_run_dir(cfg, out)
    ctx = init_distributed(cfg.train.device)
    created = resume is None and not run_dir.exists()
    rejected = False
    handler = _attach_file_log(run_dir) if ctx.is_main else None
    try:
        if ctx.is_main:
            log.info("run directory %s (medi2i %s)", run_dir, __version__)
        try:
            trainer = Trainer(cfg, run_dir, ctx, resume=state)
        except Exception:
            rejected = True  # the data or the networks were refused: nothing ran
            raise
        return trainer.fit()
    finally:
        if handler is not None:
            logging.getLogger("medi2i").removeHandler(handler)
            handler.close()
        if rejected and created and ctx.is_main:
            # the folder was made for this run and holds only its log: leave nothing behind
            shutil.rmtree(run_dir, ignore_errors=True)
        cleanup_distributed()
