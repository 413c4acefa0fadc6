"""Where a training run lives and what it starts from: its run directory (new or resumed) and
its file log.

A new run gets ``train.out_dir/<YYYYmmdd-HHMMSS>-<mode>`` unless ``--out`` names a folder; a
folder that already holds a run (or files of one) is refused, because a second run there would
mix its logs and checkpoints with the first. A resumed run continues from its newest readable
checkpoint with the config stored in it.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from medi2i.config import Config
from medi2i.run.checkpoint import CheckpointManager
from medi2i.run.layout import RunLayout

__all__ = ["attach_file_log", "mode_name", "new_run_dir", "resume_config"]


def mode_name(cfg: Config) -> str:
    """``G``, ``G+R``, ``G+D`` or ``G+R+D``."""
    return "G" + ("+R" if cfg.model.R.enabled else "") + ("+D" if cfg.model.D.enabled else "")


def new_run_dir(cfg: Config, out: str | None) -> Path:
    """The run directory of a new run (not created here).

    Raises:
        ValueError: ``out`` already holds a run, or files of one without a checkpoint.
    """
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


def attach_file_log(run_dir: Path) -> logging.Handler:
    """Log INFO and above of ``medi2i`` to the run's ``train.log`` (the console stays as
    quiet as it was set)."""
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
    cfg = build_config(state["config"], overrides)
    saved = build_config(state["config"], [])
    if cfg.train.epochs != saved.train.epochs and any(
        p.share is not None for p in cfg.train.phases or []
    ):
        raise ValueError(
            f"{run_dir}: its train.phases are given as shares of the run, and a run of "
            f"{cfg.train.epochs} instead of {saved.train.epochs} epochs would move the phases' "
            "boundaries under the epochs already trained; resume it at its length"
        )
    return cfg, state
