"""Learning-rate schedules: a pure ``lr_factor(step)`` function and its ``LambdaLR`` wrapper.

The factor multiplies each optimiser's base learning rate. ``step`` is the 0-based index of
the optimiser step the factor applies to (the trainer calls ``scheduler.step()`` once after
every optimiser step, so step ``k`` runs at ``base_lr * lr_factor(k)``)::

    warm-up   step < warmup_steps:   (step + 1) / warmup_steps       (first step not exactly 0)
    decay     afterwards, progress p = (step - warmup_steps) / (total_steps - warmup_steps):
              constant: 1
              cosine:   min_ratio + (1 - min_ratio) * (1 + cos(pi * p)) / 2
              linear:   min_ratio + (1 - min_ratio) * (1 - p)
    beyond total_steps the factor stays at its value for total_steps (min_ratio for decays).

The decay reaches ``min_ratio`` at ``step == total_steps`` (nanoGPT's convention), so the last
optimiser step (``total_steps - 1``) still runs at a small positive rate.

``skip_warmup=True`` removes the warm-up entirely (for starting from ``pretrained_G``,
where a warm-up from zero would waste ~2 epochs): the factor at step 0 is 1 and a
decay spans the whole run.

With ``schedule_unit: epoch`` the *decay* changes only at epoch boundaries (the whole epoch uses
the curve's value at the epoch's first step, ``step // steps_per_epoch * steps_per_epoch``),
while the *warm-up still ramps per step*: at epoch granularity a one-epoch warm-up would be
either no warm-up or a whole epoch at ~0 learning rate.
"""

from __future__ import annotations

import logging
import math

import torch

from medi2i.config import LossConfig, OptimConfig

logger = logging.getLogger(__name__)

__all__ = ["SCHEDULES", "build_scheduler", "lr_factor", "lung_weight_at"]

SCHEDULES = ("constant", "cosine", "linear")


def _check(step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float):
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")


def _warmup_factor(step: int, warmup_steps: int) -> float:
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


def _decay_factor(
    step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float
) -> float:
    if schedule == "constant":
        return 1.0
    span = total_steps - warmup_steps
    progress = 1.0 if span <= 0 else min(max((step - warmup_steps) / span, 0.0), 1.0)
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * (1.0 - progress)


def lr_factor(
    step: int,
    *,
    total_steps: int,
    warmup_steps: int,
    schedule: str,
    min_ratio: float = 0.0,
    skip_warmup: bool = False,
) -> float:
    """The learning-rate multiplier at optimiser step ``step`` (formulas in the module docstring).

    Args:
        step: 0-based optimiser step.
        total_steps: optimiser steps in the whole run (the decay ends here).
        warmup_steps: length of the linear warm-up in steps (0 = none).
        schedule: ``'constant'``, ``'cosine'`` or ``'linear'``.
        min_ratio: the factor the decay ends at, in ``[0, 1]``.
        skip_warmup: ignore ``warmup_steps``: full rate from step 0, decay over the whole run.

    Returns:
        The factor in ``[0, 1]``.

    Raises:
        ValueError: negative ``step``/``warmup_steps``, ``total_steps < 1``, an unknown
            ``schedule`` or ``min_ratio`` outside ``[0, 1]``.
    """
    _check(step, total_steps, warmup_steps, schedule, min_ratio)
    warmup = 0 if skip_warmup else warmup_steps
    return _warmup_factor(step, warmup) * _decay_factor(
        step, total_steps, warmup, schedule, min_ratio
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, *, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`lr_factor` for a run of ``epochs * steps_per_epoch`` steps.

    ``cfg.warmup_epochs`` (may be fractional) becomes ``round(warmup_epochs * steps_per_epoch)``
    steps. With ``cfg.schedule_unit == 'epoch'`` the decay is held constant within each epoch
    (module docstring). Call ``scheduler.step()`` once per optimiser step. The factor function
    is a closure, so the scheduler's ``state_dict`` holds only its counters: on resume the
    schedule is rebuilt from the (possibly changed) config and continues at the saved step.

    Args:
        optimizer: the optimiser whose param groups' ``lr`` are the base rates.
        cfg: the optimiser section of the config (warm-up, schedule, unit, min ratio).
        steps_per_epoch: optimiser steps per epoch (>= 1).
        epochs: epochs in the run (>= 1).

    Returns:
        The scheduler; the optimiser's rates are set to the step-0 values on construction.

    Raises:
        ValueError: ``steps_per_epoch`` or ``epochs`` below 1.
    """
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(
            f"steps_per_epoch and epochs must be >= 1, got {steps_per_epoch} and {epochs}"
        )
    total = steps_per_epoch * epochs
    warmup = 0 if cfg.skip_warmup else round(cfg.warmup_epochs * steps_per_epoch)
    schedule, min_ratio, per_epoch = cfg.schedule, cfg.min_lr_ratio, cfg.schedule_unit == "epoch"
    _check(0, total, warmup, schedule, min_ratio)
    logger.debug(
        "lr schedule: %s per %s, %d warm-up steps of %d, min ratio %g",
        schedule,
        cfg.schedule_unit,
        warmup,
        total,
        min_ratio,
    )

    def factor(step: int) -> float:
        decay_step = step // steps_per_epoch * steps_per_epoch if per_epoch else step
        return _warmup_factor(step, warmup) * _decay_factor(
            decay_step, total, warmup, schedule, min_ratio
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def lung_weight_at(cfg: LossConfig, epoch: int) -> float:
    """G's lung weight during ``epoch`` (0-based) under the lung-weight curriculum.

    Without ``lung_weight_start`` it is ``lung_weight`` throughout. With it, the weight goes
    from ``lung_weight_start`` at epoch 0 to ``lung_weight`` at epoch
    ``lung_weight_ramp_epochs`` and stays there; ``t = epoch / ramp_epochs`` (capped at 1)
    follows the ramp's shape: ``linear`` ``t``, ``cosine`` ``(1 - cos(pi * t)) / 2`` (slow at
    both ends). A pure function of the epoch, so a resumed run gets its epoch's weight back.
    """
    if cfg.lung_weight_start is None:
        return float(cfg.lung_weight)
    t = min(1.0, max(0, epoch) / cfg.lung_weight_ramp_epochs)
    if cfg.lung_weight_ramp == "cosine":
        t = (1.0 - math.cos(math.pi * t)) / 2.0
    return float(cfg.lung_weight_start + (cfg.lung_weight - cfg.lung_weight_start) * t)
