"""What a training run restores beyond the checkpoint file: the RNG states, a pretrained G.

The file format itself (save, load, the run's checkpoint files) is :mod:`medi2i.run.checkpoint`.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medi2i.run.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    state_dict_problems,
    torch_load_checked,
)
from medi2i.training.distributed import unwrap_model
from medi2i.training.ema import EMA

logger = logging.getLogger(__name__)

__all__ = [
    "capture_rng_state",
    "load_pretrained_generator",
    "restore_rng_state",
    "seed_everything",
]


def seed_everything(seed: int) -> None:
    """Seed every global random generator a run uses (Python, NumPy, torch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict:
    """The state of every global random generator a run uses.

    Python's ``random``, NumPy's global generator, torch's CPU generator and, when CUDA is
    available, every CUDA device's generator. Stored as tensors, numbers, strings and lists
    only, so the checkpoint loads with ``torch.load(weights_only=True)``.

    Returns:
        ``{"python": ..., "numpy": ..., "torch": ByteTensor, "cuda": [ByteTensor, ...]}``.
    """
    version, internal, gauss_next = random.getstate()
    np_state = np.random.get_state(legacy=False)  # the dict form (MT19937)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": str(np_state["bit_generator"]),
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict) -> None:
    """Restore the generators captured by :func:`capture_rng_state`.

    CUDA states are restored when CUDA is available; if the number of devices differs, the
    common ones are restored and a warning is logged (exact reproduction is then impossible).

    Args:
        state: a dict from :func:`capture_rng_state`.

    Raises:
        ValueError: when ``state`` lacks a part or a part is malformed.
    """
    try:
        py = state["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
        npst = state["numpy"]
        np.random.set_state(
            {
                "bit_generator": npst["bit_generator"],
                "state": {
                    "key": torch.as_tensor(npst["key"]).numpy().astype(np.uint32),
                    "pos": int(npst["pos"]),
                },
                "has_gauss": int(npst["has_gauss"]),
                "gauss": float(npst["gauss"]),
            }
        )
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
        cuda_states = list(state.get("cuda") or [])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed RNG state: {type(exc).__name__}: {exc}") from exc
    if not cuda_states:
        return
    if not torch.cuda.is_available():
        logger.info("checkpoint holds CUDA RNG states but CUDA is not available; not restored")
        return
    n = torch.cuda.device_count()
    if n != len(cuda_states):
        logger.warning(
            "checkpoint holds %d CUDA RNG states, this machine has %d devices; restoring %d",
            len(cuda_states),
            n,
            min(n, len(cuda_states)),
        )


# --------------------------------------------------------------------------------------------
# pretrained generator
# --------------------------------------------------------------------------------------------


def _strip_wrapper_prefix(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Drop a ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefix shared by all keys."""
    out = dict(sd)
    for prefix in ("module.", "_orig_mod."):
        while out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def load_pretrained_generator(
    path: str | os.PathLike, generator: nn.Module, ema: EMA | None = None
) -> dict:
    """Initialise G (and its EMA) from an earlier run's checkpoint or a bare state dict.

    A medi2i checkpoint supplies ``model.G`` for the generator and, when present, ``ema.G``
    for the EMA (a G-only run's ``best.pt``/``last.pt`` is the expected source); without an
    EMA in the file the EMA is reset to the loaded generator. A bare ``state_dict`` file
    (optionally with a DDP ``module.`` prefix) loads into both. Keys and shapes are checked
    before anything is loaded, so a mismatch leaves the models untouched.

    Args:
        path: the file.
        generator: the G to load into (DDP/compile wrappers are unwrapped).
        ema: G's EMA, or None.

    Returns:
        ``{"path", "source": "checkpoint"|"state_dict", "ema": "checkpoint"|"copied_from_G"|
        None, "epoch", "step"}`` (epoch/step None for a bare state dict).

    Raises:
        CheckpointError: (a ``ValueError``) naming the file: unreadable, not a checkpoint or
            state dict, no ``model.G`` in it, or keys/shapes that do not match - every missing
            key, unexpected key and shape mismatch is listed.
    """
    path = Path(path)
    net = unwrap_model(generator)
    obj = torch_load_checked(path, "cpu", trusted=True)
    ema_sd = None
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        source = "checkpoint"
        g_sd = (obj.get("model") or {}).get("G")
        if g_sd is None:
            raise CheckpointError(f"{path}: checkpoint has no generator weights (model.G)")
        ema_sd = (obj.get("ema") or {}).get("G")
        epoch, step = obj.get("epoch"), obj.get("step")
    elif (
        isinstance(obj, Mapping)
        and obj
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        source, g_sd, epoch, step = "state_dict", obj, None, None
    else:
        raise CheckpointError(
            f"{path}: neither a medi2i checkpoint nor a generator state_dict "
            f"(found {type(obj).__name__})"
        )
    g_sd = _strip_wrapper_prefix(g_sd)
    problems = state_dict_problems(g_sd, net)
    if ema_sd is not None:
        ema_sd = _strip_wrapper_prefix(ema_sd)
        problems += [f"EMA {p}" for p in state_dict_problems(ema_sd, net)]
    if problems:
        raise CheckpointError(
            f"{path}: generator weights do not fit the configured G "
            f"({len(problems)} problems):\n" + "\n".join(f"  - {p}" for p in problems)
        )
    net.load_state_dict(g_sd, strict=True)
    ema_used = None
    if ema is not None:
        if ema_sd is not None:
            ema.load_state_dict(ema_sd)
            ema_used = "checkpoint"
        else:
            ema.copy_from(net)
            ema_used = "copied_from_G"
    info = {"path": str(path), "source": source, "ema": ema_used, "epoch": epoch, "step": step}
    logger.info(
        "pretrained G from %s (%s%s); EMA: %s",
        path,
        source,
        f", epoch {epoch}" if epoch is not None else "",
        ema_used or "none",
    )
    return info
