"""Single-process and multi-process (DDP) execution context.

``torchrun --nproc_per_node=N -m medi2i train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`init_distributed` then joins the process group (NCCL on CUDA, gloo on
CPU) and pins each rank to its GPU. Without those variables everything runs in one process and
the helpers below are no-ops, so the trainer has a single code path.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process runs and which part of the work it does."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes checkpoints (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> the local CUDA device when available, else CPU; other names as given.

    Raises:
        ValueError: CUDA requested but not available.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"train.device is {name!r} but CUDA is not available here")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def init_distributed(device_name: str) -> DistContext:
    """Join the process group when launched by torchrun; otherwise a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(device=resolve_device(device_name))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    log.info("rank %d/%d on %s (backend %s)", rank, world_size, device, backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def cleanup_distributed() -> None:
    """Leave the process group (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a tensor over ranks in place (no-op in one process); returns it."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in one process)."""
    if ctx.distributed:
        dist.barrier()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The network inside a training wrapper (DDP, DataParallel, ``torch.compile``).

    A wrapper is recognised by type (DDP, DataParallel), by ``torch.compile``'s ``_orig_mod``,
    or - for other wrappers - by a ``.module`` attribute that holds *all* of the wrapper's
    state (every state-dict key starts with ``module.``), so a network that merely has a
    sub-module called ``module`` is not mistaken for a wrapper.

    Args:
        model: the model, possibly wrapped (several levels are unwrapped).

    Returns:
        The innermost network.
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
            continue
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if isinstance(inner, nn.Module):
            model = inner
            continue
        inner = getattr(model, "module", None)
        if isinstance(inner, nn.Module) and (
            not isinstance(model, nn.Module)
            or all(key.startswith("module.") for key in model.state_dict())
        ):
            model = inner
            continue
        return model
