"""The training loop: G-only, G+R, G+D and G+R+D, with EMA validation and exact resume.

The :class:`Trainer` builds the run's data and networks (:mod:`~medi2i.training.setup`), runs
the epochs - each a sequence of :meth:`~medi2i.training.step.TrainStep.train_step` calls (the
step, its losses and frames are told in :mod:`medi2i.training.step`) - validates, checkpoints,
and tests the best weights at the end. :func:`train` is the entry point of ``medi2i train``.

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
import shutil
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medi2i.config import Config, config_to_dict, save_config
from medi2i.inference.loading import LoadedGenerator
from medi2i.inference.predictor import Predictor
from medi2i.inference.scoring import score_split
from medi2i.run.checkpoint import (
    CheckpointManager,
    checkpoint_payload,
    load_checkpoint,
    save_checkpoint,
)
from medi2i.run.layout import RunLayout
from medi2i.run.scalars import (
    BEST_EPOCH,
    BEST_VALUE,
    EPOCH,
    EPOCH_SECONDS,
    IMAGES_PER_S,
    LOSS_G,
    LUNG_WEIGHT,
    PHASE,
    SKIPPED_STEPS,
    lr_key,
    train_key,
    train_name,
    val_key,
)
from medi2i.run.stability import WATCHED_KEYS, find_instabilities
from medi2i.training.distributed import (
    DistContext,
    barrier,
    cleanup_distributed,
    init_distributed,
    unwrap_model,
)
from medi2i.training.epoch_line import epoch_summary_line
from medi2i.training.launch import attach_file_log, mode_name, new_run_dir, resume_config
from medi2i.training.phases import phase_announcement, phase_at
from medi2i.training.run_logger import RunLogger
from medi2i.training.running_means import RunningMeans
from medi2i.training.samples import sample_grid
from medi2i.training.schedules import lung_weight_at
from medi2i.training.setup import (
    build_networks,
    build_training_data,
    optional_split,
    trainable_networks,
)
from medi2i.training.state import capture_rng_state, restore_rng_state, seed_everything
from medi2i.training.step import TrainingError, TrainStep
from medi2i.training.validation import EvalResult, evaluate_generator
from medi2i.utils.atomic import atomic_write_text
from medi2i.utils.formatting import compact
from medi2i.utils.progress import Progress
from medi2i.utils.version import __version__

log = logging.getLogger(__name__)

__all__ = ["Trainer", "TrainingError", "train"]  # TrainingError: raised by the step


class Trainer(TrainStep):
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
        seed_everything(cfg.seed)
        if tc.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        data = build_training_data(cfg, ctx, resume)
        self.normalizer = data.normalizer
        self.data_range = data.data_range
        self.train_set = data.train_set
        self.intensity_profile = data.intensity_profile
        self.steps_per_epoch = data.steps_per_epoch
        self.sampler = data.sampler
        self.train_loader = data.train_loader
        self.val_set = data.val_set
        self.val_loader = data.val_loader
        self.pairs_misaligned = data.pairs_misaligned
        self.pairs_reason = data.pairs_reason

        nets = build_networks(cfg, ctx, data, resume)
        self.G, self.R, self.D = nets.G, nets.R, nets.D
        self.r_learnt = nets.r_learnt
        self.r_centring = nets.r_centring
        self.d_conditional = nets.d_conditional
        self.d_in_target_frame = nets.d_in_target_frame
        self.memory_format = nets.memory_format
        self.ema = nets.ema
        self.optimizers = nets.optimizers
        self.schedulers = nets.schedulers
        self.amp_dtype = nets.amp_dtype
        self.scaler = nets.scaler
        self.g_loss = nets.g_loss
        self.d_loss = nets.d_loss
        self.phases = nets.phases

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
        self.phase = phase_at(self.phases, self.epoch)
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
            ("conditional" if self.d_conditional else "unconditional")
            if self.D is not None
            else "off",
        )

    # ------------------------------------------------------------------------------------------
    # set-up helpers
    # ------------------------------------------------------------------------------------------

    def _nets(self) -> dict[str, nn.Module]:
        return trainable_networks(self.G, self.R if self.r_learnt else None, self.D)

    # ------------------------------------------------------------------------------------------
    # epochs
    # ------------------------------------------------------------------------------------------

    def _batches(self) -> Iterator[dict]:
        self.sampler.set_epoch(self.epoch, self.step_in_epoch)
        return iter(self.train_loader)

    def _learning_rates(self) -> dict[str, float]:
        return {lr_key(name): self.schedulers[name].get_last_lr()[0] for name in self._stepping()}

    def _enter_phase(self) -> None:
        """Set the phase of the epoch about to train; announce a phase as it begins."""
        self.phase = phase_at(self.phases, self.epoch)
        message = phase_announcement(self.phases, self.epoch, self.cfg.train.epochs)
        if message and not self.step_in_epoch:  # a resumed epoch was announced already
            log.info(message)
            if self.ctx.is_main:
                print(message, flush=True)

    def train_epoch(self) -> dict[str, float]:
        """Train the rest of the current epoch; returns the epoch's mean diagnostics."""
        cfg = self.cfg
        self._enter_phase()
        self.g_loss.lung_weight = lung_weight_at(cfg.loss, self.epoch)
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
                    scalars[IMAGES_PER_S] = window_images / max(now - window_start, 1e-9)
                    self.logger.log_step(self.global_step, self.epoch, scalars)
                    bar.update(1, loss_G=compact(scalars.get(LOSS_G, float("nan"))))
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
            # D's verdict on validation images means something once D trains
            discriminator=unwrap_model(self.D) if self.d_on else None,
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
                scalars = {train_key(k): v for k, v in train_stats.items()}
                scalars.update(self._learning_rates())
                scalars[SKIPPED_STEPS] = float(self.skipped_steps)
                scalars[LUNG_WEIGHT] = self.g_loss.lung_weight
                scalars[PHASE] = self.phase.number
                is_best = False
                last = self.epoch + 1 == tc.epochs
                if (self.epoch + 1) % tc.val_every == 0 or last:
                    result = self.validate()
                    if result is not None:
                        scalars.update({val_key(k): v for k, v in result.metrics.items()})
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
                    scalars[BEST_VALUE] = self.best["value"]
                    scalars[BEST_EPOCH] = self.best["epoch"]
                scalars[EPOCH_SECONDS] = seconds
                scalars[IMAGES_PER_S] = (
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
                                name: v
                                for k, v in scalars.items()
                                if (name := train_name(k)) is not None
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
        row = {EPOCH: self.epoch, **{k: float(scalars[k]) for k in WATCHED_KEYS if k in scalars}}
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
        test_set = optional_split(self.cfg, "test", self.normalizer) if self.ctx.is_main else None
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
        run_dir = new_run_dir(cfg, out)
    ctx = init_distributed(cfg.train.device)
    created = resume is None and not run_dir.exists()
    rejected = False
    handler = attach_file_log(run_dir) if ctx.is_main else None
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
