"""Find loss jumps and training collapses in per-epoch series.

A run can be healthy for a few epochs and then break: in a real G-only run the training G loss
went 0.100 -> 0.204 at epoch 4 while validation lung PSNR went 31.2 -> 25.6 dB and never came
back. Such a run still has a "best" checkpoint (from before the break) and can look like a fair
arm of an ablation, which it is not. :func:`find_jumps` finds these breaks in one series;
:func:`find_instabilities` applies it to the keys of an epoch log that matter.

Both functions are pure: the trainer calls :func:`find_instabilities` at the end of each epoch
on the rows logged so far (a jump is reported at the epoch where it happens, so the new ones are
those whose ``epoch`` is the current one), and ``medi2i diagnose`` calls it on the epoch log of
any run whose summary does not record the trainer's own findings.

Each threshold, and why it was chosen, is documented where it is defined.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from medi2i.run.scalars import EPOCH, LOSS_G, train_key, val_key, weighted_key
from medi2i.utils.formatting import significant

log = logging.getLogger(__name__)

__all__ = [
    "FALLBACK_KEYS",
    "INSTABILITY_KEYS",
    "LOSS_RISE_FACTOR",
    "METRIC_REL_DROP",
    "PSNR_DROP_DB",
    "WATCHED_KEYS",
    "Jump",
    "find_instabilities",
    "find_jumps",
]

LOSS_RISE_FACTOR = 1.5
"""A lower-is-better series (a training loss) jumps when it exceeds 1.5x its best so far.

An epoch's training loss is a mean over many steps, so between epochs it moves by a few percent;
a loss that is 50% above the lowest value the run has already reached is no fluctuation but
lost progress (the real case doubled: 0.100 -> 0.204). The comparison is with the running
minimum rather than the previous epoch so that a slow drift upwards is caught as well as a
step. The first epoch is never judged (nothing precedes it); it may be far above later epochs,
which only makes the running minimum larger, never causing a false alarm."""

PSNR_DROP_DB = 3.0
"""A PSNR series (dB, higher is better) collapses when it falls more than 3 dB below its best.

Epoch-to-epoch noise of validation lung PSNR on the benchmark is ~0.1-0.5 dB, so 3 dB is six
times the largest normal fluctuation; it is also the drop at which the mean squared error has
doubled (10*log10(2) = 3.01 dB), the same "twice as bad" as a loss rise between 1.5x and 2x.
Early epochs can improve by several dB at once but do not degrade by dB, so the rule applies
from the second epoch on, against the best value reached so far. The real case fell 5.6 dB."""

METRIC_REL_DROP = 0.1
"""Any other higher-is-better series collapses when it falls more than 10% below its best.

Used for metrics without a dB scale (SSIM, MS-SSIM, BSR): their epoch-to-epoch noise is well
under 1% of their value (SSIM moves in the third decimal between epochs), so a 10% fall is an
order of magnitude beyond it."""

INSTABILITY_KEYS: tuple[tuple[str, bool], ...] = (
    (train_key(weighted_key("recon")), False),
    (val_key("psnr_mask"), True),
)
"""The epoch-log keys :func:`find_instabilities` watches, with ``higher_is_better``: G's
weighted reconstruction loss and validation lung PSNR.

The reconstruction part rather than G's whole loss: with D on, the adversarial and
feature-matching parts rise legitimately as D learns to separate real from fake (an LSGAN G
term can go from 0.25 towards 1), which would read as a jump of the total. The reconstruction
must not jump in any mode.
"""

FALLBACK_KEYS: dict[str, str] = {
    train_key(weighted_key("recon")): train_key(LOSS_G),
    val_key("psnr_mask"): val_key("psnr"),
}
"""Stand-ins when a log has no value for a watched key: G's whole loss for a log without the
reconstruction part, whole-image PSNR for a run without a mask."""

WATCHED_KEYS: tuple[str, ...] = (
    *(key for key, _ in INSTABILITY_KEYS),
    *(FALLBACK_KEYS[key] for key, _ in INSTABILITY_KEYS if key in FALLBACK_KEYS),
)
"""Every epoch-log key :func:`find_instabilities` may read: the watched keys, then their
stand-ins."""


@dataclass(frozen=True)
class Jump:
    """One loss jump or metric collapse.

    Attributes:
        epoch: the epoch at which the series crossed its threshold.
        key: the series' name (e.g. ``train_loss_G``).
        before: the best value reached before ``epoch``.
        after: the value at ``epoch``.
        message: one plain sentence describing it.
    """

    epoch: int
    key: str
    before: float
    after: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the fields of the ``instabilities`` entries of summary.json."""
        return asdict(self)


def _is_db(key: str) -> bool:
    """Whether ``key`` names a series in decibels (PSNR)."""
    return "psnr" in key.lower()


def find_jumps(
    epochs: Sequence[int] | Iterable[int],
    values: Sequence[float] | Iterable[float],
    *,
    key: str,
    higher_is_better: bool,
    rise_factor: float = LOSS_RISE_FACTOR,
    drop_db: float = PSNR_DROP_DB,
    rel_drop: float = METRIC_REL_DROP,
) -> list[Jump]:
    """Epochs at which a series jumps far away from the best value it had reached.

    A lower-is-better series jumps when it exceeds ``rise_factor`` times its running minimum
    (judged only while that minimum is positive: a factor means nothing around zero). A
    higher-is-better series collapses when it falls more than ``drop_db`` below its running
    maximum if it is in decibels (its key contains ``psnr``), else more than ``rel_drop`` of the
    maximum's magnitude. A jump is reported once, at the epoch it happens; the series must come
    back within the threshold before another jump can be reported. Non-finite values are
    skipped: the logs write them as null for several reasons (not measured that epoch, an empty
    mask), and the trainer stops a run of non-finite steps by itself.

    Args:
        epochs: epoch numbers, one per value (sorted here, so any order is accepted).
        values: the series.
        key: the series' name, used in messages and to recognise decibels.
        higher_is_better: True for quality metrics (PSNR, SSIM), False for losses and errors.
        rise_factor: see :data:`LOSS_RISE_FACTOR`.
        drop_db: see :data:`PSNR_DROP_DB`.
        rel_drop: see :data:`METRIC_REL_DROP`.

    Returns:
        The jumps, in epoch order (empty for a healthy series).

    Raises:
        ValueError: ``epochs`` and ``values`` differ in length, or a threshold is not positive
            (``rise_factor`` must exceed 1).
    """
    xs, ys = list(epochs), list(values)
    if len(xs) != len(ys):
        raise ValueError(f"{key}: {len(xs)} epochs but {len(ys)} values; need one per epoch")
    if rise_factor <= 1.0:
        raise ValueError(f"rise_factor must be > 1, got {rise_factor}")
    if drop_db <= 0.0 or not 0.0 < rel_drop < 1.0:
        raise ValueError(f"need drop_db > 0 and 0 < rel_drop < 1, got {drop_db}, {rel_drop}")
    points = []
    for epoch, value in zip(xs, ys):
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            points.append((int(epoch), number))
    points.sort(key=lambda p: p[0])
    db = _is_db(key)
    jumps: list[Jump] = []
    best: float | None = None
    best_epoch = 0
    jumped = False
    for epoch, value in points:
        if best is not None:
            if higher_is_better:
                limit = best - drop_db if db else best - rel_drop * abs(best)
                bad = value < limit
            else:
                bad = best > 0 and value > rise_factor * best
            if bad and not jumped:
                shown, best_shown = significant(value, 4), significant(best, 4)
                if higher_is_better:
                    how = (
                        f"{best - value:.1f} dB below"
                        if db
                        else f"{(best - value) / best:.0%} below"
                    )
                    message = (
                        f"{key} fell to {shown} at epoch {epoch}, {how} its best so far "
                        f"({best_shown} at epoch {best_epoch})"
                    )
                else:
                    message = (
                        f"{key} rose to {shown} at epoch {epoch}, {value / best:.2g}x its "
                        f"best so far ({best_shown} at epoch {best_epoch})"
                    )
                jumps.append(Jump(epoch, key, best, value, message))
                log.debug("instability: %s", message)
            jumped = bad
        if best is None or (value > best if higher_is_better else value < best):
            best, best_epoch = value, epoch
    return jumps


def find_instabilities(
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[tuple[str, bool]] = INSTABILITY_KEYS,
) -> list[Jump]:
    """Loss jumps and metric collapses in an epoch log.

    Args:
        rows: epoch-log rows (dicts with ``epoch`` and the logged values, as in
            ``metrics/epochs.jsonl``); rows without ``epoch`` are ignored.
        keys: ``(key, higher_is_better)`` pairs to check; a key of :data:`FALLBACK_KEYS`
            falls back to its stand-in when no row has it.

    Returns:
        The jumps of every key, in epoch order (empty when no key is logged).
    """
    rows = [r for r in rows if r.get(EPOCH) is not None]
    jumps: list[Jump] = []
    for key, higher in keys:
        name = key
        if not any(_finite(r.get(name)) for r in rows) and key in FALLBACK_KEYS:
            name = FALLBACK_KEYS[key]
        series = [(r[EPOCH], r[name]) for r in rows if _finite(r.get(name))]
        if not series:
            continue
        xs, ys = zip(*series)
        jumps.extend(find_jumps(xs, ys, key=name, higher_is_better=higher))
    jumps.sort(key=lambda j: j.epoch)
    return jumps


def _finite(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
