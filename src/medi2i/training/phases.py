"""Training phases: which networks train in which epochs of one run (``train.phases``).

A run without ``train.phases`` has one phase: every enabled network from the first step. With
``[{networks: [G, R], epochs: 6}, {networks: [G, R, D]}]``, D joins a G+R run at epoch 7
(1-based). The rules of a joining network:

* it takes no part before it joins: a step without R compares G's output with the target
  directly, a step without D has no adversarial or feature-matching term and does not update D;
* its optimiser starts cleanly (Adam's moments are created by its first step) and its
  learning-rate schedule - warm-up included - counts from its first step and spans the epochs
  from its join to the end (:func:`active_epochs`);
* its weights are built, and checkpointed, from the start, so the random-number stream and the
  run's layout are those of the same run without phases.

A network the model turns off (``model.R.enabled: false``) may be listed: it does not train,
and phases left with the same networks merge, so one phase list serves a run and its
ablations (the demo with D off is G+R throughout).

Phases are a pure function of the epoch, so ``--resume`` lands in the phase its epoch belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass

from medi2i.config import Config

__all__ = ["Phase", "active_epochs", "phase_announcement", "phase_at", "plan_phases"]


@dataclass(frozen=True)
class Phase:
    """One phase: its 1-based number, its epochs ``[start, end)`` (0-based) and networks."""

    number: int
    start: int
    end: int
    networks: tuple[str, ...]

    def __contains__(self, network: str) -> bool:
        return network in self.networks

    def joining(self, previous: Phase | None) -> tuple[str, ...]:
        """The networks that start training in this phase."""
        before = previous.networks if previous is not None else ()
        return tuple(n for n in self.networks if n not in before)

    def describe(self, total: int, epochs: int) -> str:
        """e.g. ``phase 2/2 (epochs 7-8): G+R+D``."""
        return (
            f"phase {self.number}/{total} (epochs {self.start + 1}-{min(self.end, epochs)}): "
            + "+".join(self.networks)
        )


def plan_phases(cfg: Config) -> tuple[Phase, ...]:
    """The run's phases in order; one phase of every enabled network without ``train.phases``.

    Networks the model turns off are left out, and consecutive phases then left with the same
    networks are one phase. The last phase ends at ``train.epochs``; the config has checked
    that it gets at least one epoch and that it lists every enabled network.
    """
    epochs = cfg.train.epochs
    if not cfg.train.phases:
        nets = ("G", *(n for n in ("R", "D") if getattr(cfg.model, n).enabled))
        return (Phase(1, 0, epochs, nets),)
    enabled = {"G", *(n for n in ("R", "D") if getattr(cfg.model, n).enabled)}
    spans: list[tuple[int, int, tuple[str, ...]]] = []
    starts = cfg.train.phase_starts()
    for phase, start, end in zip(cfg.train.phases, starts, [*starts[1:], epochs]):
        if end <= start:  # a phase given as a share that this run is too short for
            continue
        nets = tuple(n for n in phase.networks if n in enabled)
        if spans and spans[-1][2] == nets:  # nothing joins: the same phase goes on
            spans[-1] = (spans[-1][0], end, nets)
        else:
            spans.append((start, end, nets))
    return tuple(Phase(k, a, b, nets) for k, (a, b, nets) in enumerate(spans, start=1))


def phase_at(phases: tuple[Phase, ...], epoch: int) -> Phase:
    """The phase that trains ``epoch`` (0-based); epochs past the plan belong to the last."""
    for phase in phases:
        if phase.start <= epoch < phase.end:
            return phase
    return phases[-1]


def active_epochs(phases: tuple[Phase, ...], network: str, epochs: int) -> int:
    """Epochs of ``network``'s training: from the phase it joins in to ``epochs``; 0 when it
    joins in no phase (a run too short for the phases given as shares)."""
    for phase in phases:
        if network in phase:
            return epochs - phase.start
    return 0


def phase_announcement(phases: tuple[Phase, ...], epoch: int, epochs: int) -> str | None:
    """``phase 2/2 (epochs 7-8): G+R+D (D joining)`` when a phase begins at ``epoch`` (0-based)
    of a run of several phases, else None."""
    phase = phase_at(phases, epoch)
    if len(phases) == 1 or epoch != phase.start:
        return None
    message = phase.describe(len(phases), epochs)
    if phase.number > 1:
        message += f" ({'+'.join(phase.joining(phases[phase.number - 2]))} joining)"
    return message
