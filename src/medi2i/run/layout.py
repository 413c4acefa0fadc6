"""The run directory: where every file of a training run lives, for writers and readers alike.

One object names every path, so the trainer, its logger and checkpoints (writers) and
``load_run``, ``diagnose``, ``plots``, ``evaluate`` and the inference loader (readers) cannot
disagree about a file name::

    RUN_DIR/
      config.yaml                 the resolved config (written first)
      train.log                   INFO and above
      metrics/steps.jsonl         one line per logged step (trimmed on resume)
      metrics/epochs.jsonl        one line per epoch (rewritten atomically)
      metrics/epochs.csv          the same, for spreadsheets
      tensorboard/                event files, when TensorBoard is on
      checkpoints/last.pt         every epoch; best.pt when validation improves;
      checkpoints/epoch_XXXX.pt   every ``train.checkpoint_every`` epochs
      samples/epoch_XXXX.png      validation sample grids
      summary.json                the run's final summary
      test_metrics.json           the end-of-run test of the best weights
      eval_<split>/               ``medi2i evaluate``'s default output
      diagnose/val/               ``medi2i diagnose``'s per-image validation cache

:func:`resolve_checkpoint` picks the checkpoint a reader of a run uses: ``best.pt``, else
``last.pt``. The module imports nothing heavy (pathlib only), so any layer may use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["RUN_MARKERS", "RunLayout", "resolve_checkpoint"]

RUN_MARKERS = ("config.yaml", "summary.json", "metrics/epochs.jsonl")
"""A folder holding any of these (relative paths) is a run."""


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory (nothing is created or checked here).

    Args:
        root: the run directory.
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # -- what a training run writes -----------------------------------------------------------

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def train_log(self) -> Path:
        return self.root / "train.log"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def steps(self) -> Path:
        return self.metrics / "steps.jsonl"

    @property
    def epochs(self) -> Path:
        return self.metrics / "epochs.jsonl"

    @property
    def epochs_csv(self) -> Path:
        return self.metrics / "epochs.csv"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"

    def epoch_checkpoint(self, epoch: int) -> Path:
        """``checkpoints/epoch_XXXX.pt`` (zero-padded to 4 digits)."""
        return self.checkpoints / f"epoch_{epoch:04d}.pt"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    def sample_grid(self, epoch: int) -> Path:
        """``samples/epoch_XXXX.png`` (1-based epoch, zero-padded to 4 digits)."""
        return self.samples / f"epoch_{epoch:04d}.png"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def test_metrics(self) -> Path:
        return self.root / "test_metrics.json"

    # -- what the tools write beside it -------------------------------------------------------

    def evaluation(self, split: str) -> Path:
        """``eval_<split>/``: ``medi2i evaluate``'s default output folder."""
        return self.root / f"eval_{split}"

    @property
    def diagnose_val(self) -> Path:
        """``diagnose/val/``: ``medi2i diagnose``'s per-image validation cache."""
        return self.root / "diagnose" / "val"

    # -- what makes a folder a run ------------------------------------------------------------

    @property
    def training_entries(self) -> tuple[Path, ...]:
        """What a training run creates: a folder holding any of them is not a fresh one."""
        return (
            self.checkpoints,
            self.config,
            self.metrics,
            self.samples,
            self.summary,
            self.train_log,
        )

    def is_run(self) -> bool:
        """Whether the folder holds any of :data:`RUN_MARKERS`."""
        return any((self.root / marker).is_file() for marker in RUN_MARKERS)


def resolve_checkpoint(run_or_checkpoint: str | Path, which: str = "best") -> Path:
    """A checkpoint file from a run directory (``best``, falling back to ``last``) or a file.

    Raises:
        FileNotFoundError: neither exists.
    """
    path = Path(run_or_checkpoint)
    if path.is_file():
        return path
    layout = RunLayout(path)
    candidates = (
        [layout.best_checkpoint, layout.last_checkpoint]
        if which == "best"
        else [layout.last_checkpoint]
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{path}: no checkpoint found (looked for {', '.join(str(c) for c in candidates)})"
    )
