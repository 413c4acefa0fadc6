"""Shared test helpers: synthetic chest-like image pairs and a tiny, CPU-fast network config.

Imported by the tests as ``from tinydata import ...``: pytest's default ``prepend`` import mode
puts this folder (which has no ``__init__.py``) on ``sys.path``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medi2i.config import Config, load_config
from medi2i.data.io import write_png
from medi2i.training.trainer import train

SIZE = 32

#: A tiny G (8/16 channels) and D that train in well under a second per step.
TINY_NETS = [
    "data.normalization.mode=dtype",
    "data.batch_size=2",
    "model.G.preset=small",
    "model.G.base_channels=8",
    "model.G.channel_mults=[1,2]",
    "model.G.res_blocks=1",
    "model.G.attention=false",
    "model.G.residual_output=true",
    "model.D.base_channels=8",
    "model.D.num_scales=1",
    "model.D.n_layers=2",
    "train.device=cpu",
    "logging.log_every=1",
    "logging.progress=false",
]


def synthetic_pair(
    rng: np.random.Generator, size: int = SIZE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic pair: (input = soft tissue + "bone" stripes, target = soft tissue, mask).

    Input and target are uint16, the mask (a centred rectangle) is uint8 0/255. Draws two
    uniforms from ``rng``.
    """
    yy, xx = np.mgrid[0:size, 0:size] / size
    soft = 0.3 + 0.2 * np.sin(6 * xx + rng.uniform(0, 6)) * np.cos(5 * yy)
    bone = 0.25 * (np.sin(20 * yy + rng.uniform(0, 6)) > 0.6)
    mask = (np.abs(xx - 0.5) < 0.3) & (np.abs(yy - 0.5) < 0.35)

    def to16(a: np.ndarray) -> np.ndarray:
        return np.round(np.clip(a, 0, 1) * 65535).astype(np.uint16)

    return to16(soft + bone), to16(soft), (mask * 255).astype(np.uint8)


def write_pairs(
    root: str | Path,
    counts: dict[str, int],
    rng: np.random.Generator,
    *,
    aligned: bool = False,
    target_shift: int = 0,
    size: int = SIZE,
) -> Path:
    """Write ``root/{split}/{input,target,mask}/NNN.png`` for each split, in ``counts`` order.

    Args:
        root: dataset root.
        counts: split name -> number of pairs.
        rng: source of the pairs' randomness (consumed in order).
        aligned: also write the true (unshifted) target to ``root/{split}/aligned``.
        target_shift: roll the written target by this many pixels along x, a misregistered
            "measured" target (0: the target is the truth).
        size: image side in pixels.

    Returns:
        ``root`` as a Path.
    """
    root = Path(root)
    for split, n in counts.items():
        for i in range(n):
            x, y, m = synthetic_pair(rng, size)
            name = f"{i:03d}.png"
            write_png(root / split / "input" / name, x)
            write_png(root / split / "target" / name, np.roll(y, target_shift, axis=1))
            write_png(root / split / "mask" / name, m)
            if aligned:
                write_png(root / split / "aligned" / name, y)
    return root


def tiny_config(root: str | Path, *overrides: str) -> Config:
    """The config for ``root`` with :data:`TINY_NETS`, then ``overrides`` (the last wins)."""
    return load_config(None, [f"data.root={root}", *TINY_NETS, *overrides])


#: The four training modes as config overrides, by name (G+R+D with a lazy R1 penalty).
MODES: dict[str, tuple[str, ...]] = {
    "G": ("model.R.enabled=false", "model.D.enabled=false"),
    "G+R": ("model.R.enabled=true", "model.D.enabled=false"),
    "G+D": ("model.R.enabled=false", "model.D.enabled=true"),
    "G+R+D": (
        "model.R.enabled=true",
        "model.D.enabled=true",
        "loss.r1_weight=1",
        "loss.r1_interval=2",
    ),
}


def tiny_run_config(root: str | Path, *overrides: str) -> Config:
    """The trainer tests' run: :func:`tiny_config`, 2 epochs x 3 steps, EMA decay 0.9, two
    sample images, then ``overrides``."""
    return tiny_config(
        root,
        "train.epochs=2",
        "train.steps_per_epoch=3",
        "train.ema_decay=0.9",
        "eval.sample_count=2",
        *overrides,
    )


def train_tiny_g_only(root: str | Path, out: str | Path, *overrides: str) -> Path:
    """Train a G-only tiny run (1 epoch x 2 steps, no tensorboard/samples/test) into ``out``."""
    cfg = tiny_config(
        root,
        "model.R.enabled=false",
        "model.D.enabled=false",
        "train.epochs=1",
        "train.steps_per_epoch=2",
        "logging.tensorboard=false",
        "eval.sample_count=0",
        "eval.test_at_end=false",
        *overrides,
    )
    train(cfg, out=str(out))
    return Path(out)
