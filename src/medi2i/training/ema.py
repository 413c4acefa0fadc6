"""Exponential moving average (EMA) of a network's weights.

The EMA network is a separate copy of the model. After every optimiser step the trainer calls
:meth:`EMA.update`, which moves each parameter of the copy towards the online one::

    ema = decay_eff * ema + (1 - decay_eff) * online

and copies the buffers (e.g. normalisation statistics, spectral-norm vectors) unchanged from the
online model. Validation, sample grids, best-checkpoint selection and inference use
:attr:`EMA.module` directly, so the online weights are never swapped out and cannot be left in a
wrong state.

EMA warm-up (``warmup_steps > 0``): early in training the online weights change fast and the
initial weights are random, so a long average would drag the EMA towards garbage. During the
warm-up the *averaging horizon* ``1 / (1 - decay_eff)`` (roughly the number of recent steps the
EMA remembers) grows linearly from 1 step at step 0 (``decay_eff = 0``: a plain copy) to
``1 / (1 - decay)`` at ``step = warmup_steps``; in closed form::

    decay_eff(step) = decay * step / (decay * step + (1 - decay) * warmup_steps)

For ``decay = 0.999, warmup_steps = 1000`` this gives 0 at step 0, 0.5 at step 1, 0.99 at
step ~99, 0.998 at step ~500 and 0.999 from step 1000 on. A ramp linear in ``decay_eff`` itself
would keep the horizon below 10 steps for 90% of the warm-up and then jump, so the horizon is the
quantity ramped. ``decay = 0`` makes the EMA equal to the online weights at every step.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from medi2i.training.distributed import unwrap_model

logger = logging.getLogger(__name__)

__all__ = ["EMA", "resolve_warmup_steps"]


def resolve_warmup_steps(decay: float, warmup_steps: int | None, *, pretrained: bool) -> int:
    """The EMA warm-up a run uses (``train.ema_warmup_steps`` resolved).

    The warm-up exists to forget a *random* initialisation. Without it an EMA of decay ``d``
    still holds ``d**t`` of the initial weights after ``t`` steps: 30% after 1,200 steps at
    ``d = 0.999``, i.e. validation and the best checkpoint would use a blend of a trained and a
    random network. Any warm-up makes the first update a plain copy (``decay_eff(0) = 0``), so
    none of the initialisation survives. Rules:

    * a generator started from ``pretrained_G`` is not random and its EMA is already averaged:
      no warm-up (0), so the loaded EMA is continued at the full decay instead of being
      overwritten by the online weights at the first step;
    * ``None`` (the default): ``round(1 / (1 - decay))`` steps, the EMA's own horizon;
    * otherwise the value given (0 = full decay from the first update, an explicit choice).

    Args:
        decay: the EMA decay in ``[0, 1)``.
        warmup_steps: the configured warm-up, or None for the default.
        pretrained: whether G (and its EMA) were loaded from ``pretrained_G``.

    Returns:
        The warm-up length in optimiser steps.
    """
    if pretrained:
        return 0
    if warmup_steps is None:
        return round(1.0 / (1.0 - decay)) if decay > 0 else 0
    return int(warmup_steps)


class EMA:
    """EMA of a model's parameters (averaged) and buffers (copied), kept in a module copy.

    Hand-rolled instead of ``torch.optim.swa_utils.AveragedModel`` + ``get_ema_multi_avg_fn``
    because AveragedModel (a) *copies* the online weights at its first update instead of
    averaging, (b) has a fixed decay baked into ``multi_avg_fn``, so no EMA warm-up, (c) pairs
    parameters with ``zip(strict=False)``, silently skipping a mismatch, and (d) stores its state
    with a ``module.`` prefix plus ``n_averaged``, so the EMA state could not be loaded straight
    into a plain generator. The averaging itself uses the same fused kernel as
    ``get_ema_multi_avg_fn`` (``torch._foreach_lerp_``).

    The EMA copy lives on the device the model is on when the EMA is created: build it after
    moving the model to its device.

    Args:
        model: the online network (may be DDP-wrapped; the inner network is copied).
        decay: the EMA decay in ``[0, 1)``; 0 = the EMA always equals the online weights.
        warmup_steps: optimiser steps over which the averaging horizon ramps up (module
            docstring); 0 = full ``decay`` from the first update.

    Raises:
        ValueError: ``decay`` outside ``[0, 1)`` or negative ``warmup_steps``.
    """

    def __init__(self, model: nn.Module, decay: float, warmup_steps: int = 0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if warmup_steps < 0:
            raise ValueError(f"EMA warmup_steps must be >= 0, got {warmup_steps}")
        self.decay = float(decay)
        self.warmup_steps = int(warmup_steps)
        self._module = copy.deepcopy(unwrap_model(model))
        for p in self._module.parameters():
            p.requires_grad_(False)
            p.grad = None
        self._params = list(self._module.parameters())
        self._buffers = list(self._module.buffers())

    @property
    def module(self) -> nn.Module:
        """The EMA network, used directly for validation and inference.

        Putting it in eval mode (and ``torch.no_grad``) is the caller's job; the online model is
        never touched.
        """
        return self._module

    def current_decay(self, step: int) -> float:
        """The effective decay used by the update at optimiser step ``step``.

        Args:
            step: 0-based count of EMA updates done before this one (= optimiser steps done).

        Returns:
            ``decay`` after the warm-up; during it the horizon ramp of the module docstring.

        Raises:
            ValueError: negative ``step``.
        """
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if self.warmup_steps == 0 or step >= self.warmup_steps or self.decay == 0.0:
            return self.decay
        d = self.decay
        return d * step / (d * step + (1.0 - d) * self.warmup_steps)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> float:
        """Move the EMA towards ``model``'s current weights and copy its buffers.

        Args:
            model: the online network (DDP/compile wrappers are unwrapped).
            step: 0-based count of updates done so far (see :meth:`current_decay`).

        Returns:
            The decay used.

        Raises:
            ValueError: when ``model`` does not have the EMA's parameter/buffer layout.
        """
        decay = self.current_decay(step)
        self._blend(model, decay)
        return decay

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        """Reset the EMA to ``model``'s weights and buffers (e.g. after loading ``pretrained_G``).

        Args:
            model: the network to copy (DDP/compile wrappers are unwrapped).

        Raises:
            ValueError: when ``model`` does not have the EMA's parameter/buffer layout.
        """
        self._blend(model, 0.0)

    def _blend(self, model: nn.Module, decay: float) -> None:
        """``ema = decay * ema + (1 - decay) * online`` for parameters; buffers copied."""
        net = unwrap_model(model)
        params = [p.detach() for p in net.parameters()]
        buffers = list(net.buffers())
        self._check_layout(params, buffers)
        if decay == 0.0:
            torch._foreach_copy_(self._params, params)
        else:
            # ema + (1 - decay) * (online - ema) == decay * ema + (1 - decay) * online
            torch._foreach_lerp_(self._params, params, 1.0 - decay)
        for mine, theirs in zip(self._buffers, buffers):
            mine.copy_(theirs)

    def state_dict(self) -> dict:
        """The EMA network's ``state_dict``: the same keys as the online model's.

        So ``G.load_state_dict(checkpoint["ema"]["G"])`` gives the EMA generator for inference.
        The decay and warm-up come from the config and the step from the checkpoint, so they are
        not stored here.

        Returns:
            The EMA network's state dict (tensors share storage with the EMA; save or clone).
        """
        return self._module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Load an EMA state saved by :meth:`state_dict` (strict: keys and shapes must match).

        Args:
            state: a state dict with the EMA network's keys.

        Raises:
            RuntimeError: from :meth:`torch.nn.Module.load_state_dict`, listing every missing or
                unexpected key and shape mismatch.
        """
        self._module.load_state_dict(state, strict=True)

    def _check_layout(self, params: list[torch.Tensor], buffers: list[torch.Tensor]) -> None:
        if len(params) != len(self._params) or len(buffers) != len(self._buffers):
            raise ValueError(
                f"model does not match the EMA copy: {len(params)} parameters / "
                f"{len(buffers)} buffers vs {len(self._params)} / {len(self._buffers)}"
            )
        for i, (mine, theirs) in enumerate(zip(self._params, params)):
            if mine.shape != theirs.shape:
                raise ValueError(
                    f"model does not match the EMA copy: parameter #{i} has shape "
                    f"{tuple(theirs.shape)}, the EMA's has {tuple(mine.shape)}"
                )
