"""The names of the scalars a training run logs, for the code that writes them and the code that
reads them.

A run logs two files (their paths come from :class:`~medi2i.run.layout.RunLayout`):

* ``metrics/steps.jsonl``, one row every ``logging.log_every`` steps
  (:meth:`LoggedScalars.step_row`): :data:`STEP`, :data:`EPOCH`, :data:`TIME`, the means of the
  step scalars over those steps, the learning rates (:func:`lr_key`) and :data:`IMAGES_PER_S`.
* ``metrics/epochs.jsonl`` (and ``epochs.csv``), one row per epoch
  (:meth:`LoggedScalars.epoch_row`): :data:`EPOCH`, :data:`TIME`, the epoch's mean of every step
  scalar as ``train_<name>`` (:func:`train_key`), the learning rates at the epoch's end as they
  are (:func:`epoch_key` maps a step-log name to its epoch-log key), :data:`SKIPPED_STEPS`; on
  validated epochs ``val_<metric>`` (:func:`val_key`) for the validation metrics and D's
  statistics on validation images, and :data:`BEST_VALUE` / :data:`BEST_EPOCH` once an epoch
  was best; then :data:`EPOCH_SECONDS` and :data:`IMAGES_PER_S`.

The step scalars, what they mean and who writes them (``<part>`` is each name of
:data:`PART_NAMES`, ``<net>`` each of :data:`NETWORKS` that trains, ``<k>`` each scale of D)::

    <part>                 G's unweighted loss term              losses.composite (GeneratorLoss)
    w_<part>               the term times its weight             losses.composite
    share_<part>           its share of G's loss value, %        losses.composite (loss_shares)
    gnorm_<part>           norm of its gradient on G's output    losses.composite (gradient_shares)
    gshare_<part>          its share of those norms, %           losses.composite; every
                                                                 logging.gshare_every steps
    recon_l1, recon_dssim  the reconstruction's L1 and 1 - SSIM  losses.composite
    loss_G                 G's total loss                        training.step
    d_real_loss,           D's GAN term on real / fake images    losses.adversarial
      d_fake_loss
    D_real, D_fake         D's mean raw output on real / fake    losses.adversarial
                           (mean over scales)                    (discriminator_stats)
    D_real_s<k>, ...       the same per scale (also D_acc_s<k>)  losses.adversarial
    D_acc                  D's accuracy at the mode's threshold  losses.adversarial
    D_acc_real, D_acc_fake its two halves                        losses.adversarial
    d_gan                  D's GAN term                          losses.composite
    r1, w_r1               R1 penalty, raw and as added to D's   losses.composite; on R1 steps
                           loss (lazy factor included)
    loss_D                 D's total loss                        training.step
    grad_norm_<net>        gradient norm before clipping         training.step
    clip_rate_<net>        1 when clipping fired, else 0         training.step; with a limit
    clip_cut_<net>         fraction of the norm clipping removed training.step; with a limit
    field_max_px           largest displacement of R's field     training.step; R on
    field_systematic_px    the fields' running systematic shift  training.step; model.R.center
    ema_decay              the EMA's decay this step             training.step

``images_per_s``, ``lr_<net>`` (``training.trainer``) complete a step-log row. Validation
(``training.validation``) adds ``val_<metric>`` for each metric, whole-image and ``_mask``, and
with D ``val_D_real``, ``val_D_fake``, ``val_D_acc`` and ``val_D_gap`` (:data:`VAL_D_STATS`,
``D_gap = D_real - D_fake``) on the validation images; ``training.run_logger.RunLogger`` adds
the row keys.

Rules: every logged name is spelt here once; writers build their keys and readers look them up
with these names and builders, never with literals, so that the two cannot drift apart.
:class:`LoggedScalars` declares which keys a run of a given setup writes (the tests train one
of each mode and compare). The module is pure Python (no torch) and imports nothing from the
package, so every layer may use it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "BEST_EPOCH",
    "BEST_VALUE",
    "D_ACC",
    "D_ACC_FAKE",
    "D_ACC_REAL",
    "D_FAKE",
    "D_FAKE_LOSS",
    "D_GAN",
    "D_GAP",
    "D_REAL",
    "D_REAL_LOSS",
    "EMA_DECAY",
    "EPOCH",
    "EPOCH_SECONDS",
    "FIELD_MAX_PX",
    "FIELD_SYSTEMATIC_PX",
    "GRADIENT_SHARES",
    "IMAGES_PER_S",
    "LOSS_D",
    "LOSS_G",
    "LUNG_WEIGHT",
    "NETWORKS",
    "PART_NAMES",
    "PHASE",
    "R1",
    "R1_SCALARS",
    "RECON_DSSIM",
    "RECON_L1",
    "SKIPPED_STEPS",
    "STEP",
    "TIME",
    "TRAIN_PREFIX",
    "VAL_D_STATS",
    "VAL_PREFIX",
    "W_R1",
    "LoggedScalars",
    "clip_cut_key",
    "clip_rate_key",
    "epoch_key",
    "gnorm_key",
    "grad_norm_key",
    "gshare_key",
    "lr_key",
    "scale_indices",
    "scale_key",
    "share_key",
    "train_key",
    "train_name",
    "val_key",
    "val_name",
    "weighted_key",
]

# -- the keys of a row ------------------------------------------------------------------------

STEP = "step"
"""Step-log rows: the optimiser steps taken when the row was logged (RunLogger)."""
EPOCH = "epoch"
"""Both logs: the epoch (0-based in step rows, the finished epoch, 1-based, in epoch rows)."""
TIME = "time"
"""Both logs: Unix wall-clock time of the row, in seconds (RunLogger)."""

# -- the epoch log's prefixes -----------------------------------------------------------------

TRAIN_PREFIX = "train_"
"""Epoch-log key of a step scalar's mean over the epoch: ``train_<name>`` (trainer)."""
VAL_PREFIX = "val_"
"""Epoch-log key of a validation metric: ``val_<metric>`` (trainer, from validation)."""


def train_key(name: str) -> str:
    """``train_<name>``: the epoch log's mean of step scalar ``name``."""
    return TRAIN_PREFIX + name


def val_key(name: str) -> str:
    """``val_<name>``: the epoch log's validation value of metric ``name``."""
    return VAL_PREFIX + name


def train_name(key: str) -> str | None:
    """The step scalar a ``train_`` key is the mean of, None for any other key."""
    return key[len(TRAIN_PREFIX) :] if key.startswith(TRAIN_PREFIX) else None


def val_name(key: str) -> str | None:
    """The validation metric a ``val_`` key holds, None for any other key."""
    return key[len(VAL_PREFIX) :] if key.startswith(VAL_PREFIX) else None


# -- epoch-level keys (the trainer) -----------------------------------------------------------

SKIPPED_STEPS = "skipped_steps"
"""Steps skipped for a non-finite loss or gradient since the run began."""
BEST_VALUE = "best_value"
"""The best ``eval.best_metric`` value so far (from the first validated epoch on)."""
BEST_EPOCH = "best_epoch"
"""The epoch (1-based) that reached :data:`BEST_VALUE`."""
EPOCH_SECONDS = "epoch_seconds"
"""Wall time of the epoch, validation included."""
LUNG_WEIGHT = "lung_weight"
"""G's reconstruction lung weight during the epoch (changes under ``loss.lung_weight_start``)."""
PHASE = "phase"
"""The training phase of the epoch, 1-based (``train.phases``; 1 throughout without phases):
a change marks the epoch a network joined."""
IMAGES_PER_S = "images_per_s"
"""Training images per second: over the logged window in a step row, over the epoch in an
epoch row."""

# -- G's loss (losses.composite, training.step) -----------------------------------------------

PART_NAMES: tuple[str, ...] = ("recon", "gan", "fm", "smooth", "perceptual")
"""G's loss parts, in the order of ``w_<part>`` / ``share_<part>``; each unweighted term is
logged under the part's own name."""
LOSS_G = "loss_G"
"""G's total loss, the sum of the ``w_<part>``."""
RECON_L1 = "recon_l1"
"""The reconstruction's (lung-weighted) L1 term, unweighted."""
RECON_DSSIM = "recon_dssim"
"""The reconstruction's (lung-weighted) 1 - SSIM term, unweighted."""


def weighted_key(part: str) -> str:
    """``w_<part>``: a loss term times its weight, as added to its network's total."""
    return f"w_{part}"


def share_key(part: str) -> str:
    """``share_<part>``: a part's share of G's loss value, in percent."""
    return f"share_{part}"


def gnorm_key(part: str) -> str:
    """``gnorm_<part>``: the norm of a weighted part's gradient on G's output image."""
    return f"gnorm_{part}"


def gshare_key(part: str) -> str:
    """``gshare_<part>``: a part's share of the summed gradient norms, in percent."""
    return f"gshare_{part}"


GRADIENT_SHARES: tuple[str, ...] = (
    *(gnorm_key(p) for p in PART_NAMES),
    *(gshare_key(p) for p in PART_NAMES),
)
"""The scalars measured every ``logging.gshare_every`` steps only (none when it is 0)."""

# -- D (losses.adversarial, losses.composite, training.step, training.validation) -------------

LOSS_D = "loss_D"
"""D's total loss: :data:`D_GAN` plus R1 on R1 steps."""
D_GAN = "d_gan"
"""D's GAN term."""
D_REAL_LOSS = "d_real_loss"
"""D's GAN term on real images (mean over scales)."""
D_FAKE_LOSS = "d_fake_loss"
"""D's GAN term on G's output (mean over scales)."""
R1 = "r1"
"""The R1 penalty, unweighted (R1 steps only)."""
W_R1 = weighted_key(R1)
"""The R1 penalty as added to D's loss, lazy factor included (R1 steps only)."""
R1_SCALARS: tuple[str, ...] = (R1, W_R1)
"""The scalars of the steps where R1 is due only."""
D_REAL = "D_real"
"""D's mean raw output on real images (mean over scales)."""
D_FAKE = "D_fake"
"""D's mean raw output on G's output (mean over scales)."""
D_ACC = "D_acc"
"""D's accuracy: the mean of :data:`D_ACC_REAL` and :data:`D_ACC_FAKE`."""
D_ACC_REAL = "D_acc_real"
"""Fraction of real logits above the GAN mode's decision threshold."""
D_ACC_FAKE = "D_acc_fake"
"""Fraction of fake logits below the GAN mode's decision threshold."""
D_GAP = "D_gap"
"""``D_real - D_fake`` on validation images (validation only)."""
VAL_D_STATS: tuple[str, ...] = (D_REAL, D_FAKE, D_ACC, D_GAP)
"""D's statistics on validation images, logged as ``val_<name>`` in runs with D."""


def scale_key(stat: str, scale: int | str) -> str:
    """``<stat>_s<scale>``: a D statistic (:data:`D_REAL`, :data:`D_FAKE`, :data:`D_ACC`) on one
    scale of D, finest first."""
    return f"{stat}_s{scale}"


def scale_indices(keys: Iterable[str], stat: str) -> list[int]:
    """The scales ``k`` for which ``keys`` hold ``<stat>_s<k>``, in increasing order.

    Args:
        keys: logged names, e.g. the keys of every epoch row.
        stat: the per-scale name to look for, e.g. ``train_key(D_REAL)``.
    """
    head = scale_key(stat, "")
    return sorted(
        {int(k[len(head) :]) for k in keys if k.startswith(head) and k[len(head) :].isdigit()}
    )


# -- per network (training.step, training.trainer) --------------------------------------------

NETWORKS: tuple[str, ...] = ("G", "R", "D")
"""The networks that can have an optimiser (R only when learnt), in logging order."""


def grad_norm_key(net: str) -> str:
    """``grad_norm_<net>``: a network's gradient norm before clipping."""
    return f"grad_norm_{net}"


def clip_rate_key(net: str) -> str:
    """``clip_rate_<net>``: 1 on a step where clipping fired, else 0 (its mean: the rate)."""
    return f"clip_rate_{net}"


def clip_cut_key(net: str) -> str:
    """``clip_cut_<net>``: the fraction of the gradient's norm clipping removed (0 when it did
    not fire)."""
    return f"clip_cut_{net}"


def lr_key(net: str) -> str:
    """``lr_<net>``: a network's learning rate (not prefixed in the epoch log)."""
    return f"lr_{net}"


_LEARNING_RATES = frozenset(lr_key(net) for net in NETWORKS)


def epoch_key(name: str) -> str:
    """The epoch-log key of a step-log scalar: a learning rate as it is (its value at the
    epoch's end), any other step scalar as its epoch mean ``train_<name>``."""
    return name if name in _LEARNING_RATES else train_key(name)


# -- R and the EMA (training.step) ------------------------------------------------------------

FIELD_MAX_PX = "field_max_px"
"""The largest displacement of R's field over the batch, in pixels (R on)."""
FIELD_SYSTEMATIC_PX = "field_systematic_px"
"""The length of the fields' running mean translation, in pixels (``model.R.center``)."""
EMA_DECAY = "ema_decay"
"""The EMA's decay at this step (its warm-up included)."""


# -- what a run of a given setup writes -------------------------------------------------------


@dataclass(frozen=True)
class LoggedScalars:
    """The keys a run writes, from its setup.

    Keys measured on some steps only are left out: :data:`GRADIENT_SHARES` (every
    ``logging.gshare_every`` steps) and :data:`R1_SCALARS` (on R1 steps); so are the validation
    metrics ``val_<metric>``, whose names the metrics own.

    Args:
        r: R is on (``model.R.enabled``).
        r_learnt: R is a network with an optimiser (``model.R.kind: net``), not fitted.
        d: D is on (``model.D.enabled``).
        d_scales: D's scales (``model.D.num_scales``).
        clipped: every network has a gradient-norm limit (``optim.grad_clip``, the default).
        centred: R's fields are centred (``model.R.center``).
    """

    r: bool = False
    r_learnt: bool = True
    d: bool = False
    d_scales: int = 1
    clipped: bool = True
    centred: bool = False

    @property
    def networks(self) -> tuple[str, ...]:
        """The networks with an optimiser, in :data:`NETWORKS` order."""
        trained = {"G": True, "R": self.r and self.r_learnt, "D": self.d}
        return tuple(net for net in NETWORKS if trained[net])

    def _network(self, net: str) -> tuple[str, ...]:
        clip = (clip_rate_key(net), clip_cut_key(net)) if self.clipped else ()
        return (grad_norm_key(net), *clip)

    def step_scalars(self) -> tuple[str, ...]:
        """The scalars every training step returns, in the order they are logged."""
        keys: list[str] = []
        if self.r:
            keys += [FIELD_SYSTEMATIC_PX] if self.centred else []
            keys.append(FIELD_MAX_PX)
        if self.d:
            scales = range(self.d_scales)
            keys += [D_REAL_LOSS, D_FAKE_LOSS]
            keys += [*(scale_key(D_REAL, k) for k in scales), D_REAL]
            keys += [*(scale_key(D_FAKE, k) for k in scales), D_FAKE]
            keys += [scale_key(D_ACC, k) for k in scales]
            keys += [D_ACC_REAL, D_ACC_FAKE, D_ACC, D_GAN, LOSS_D, *self._network("D")]
        keys += [weighted_key(p) for p in PART_NAMES]
        keys += [share_key(p) for p in PART_NAMES]
        keys += [*PART_NAMES, RECON_L1, RECON_DSSIM, LOSS_G, *self._network("G")]
        if self.r and self.r_learnt:
            keys += self._network("R")
        keys.append(EMA_DECAY)
        return tuple(keys)

    def step_row(self) -> tuple[str, ...]:
        """The keys of every row of ``metrics/steps.jsonl``."""
        rates = tuple(lr_key(net) for net in self.networks)
        return (STEP, EPOCH, TIME, *self.step_scalars(), *rates, IMAGES_PER_S)

    def epoch_row(self, *, validated: bool = True) -> tuple[str, ...]:
        """The keys of every row of ``metrics/epochs.jsonl``, but ``val_<metric>``.

        Args:
            validated: the epoch was validated (with a validation split) and reached a finite
                best value: its row has D's validation statistics and the best epoch.
        """
        keys = [EPOCH, TIME, *(train_key(k) for k in self.step_scalars())]
        keys += [lr_key(net) for net in self.networks]
        keys += [SKIPPED_STEPS, LUNG_WEIGHT, PHASE]
        if validated:
            keys += [val_key(k) for k in VAL_D_STATS] if self.d else []
            keys += [BEST_VALUE, BEST_EPOCH]
        keys += [EPOCH_SECONDS, IMAGES_PER_S]
        return tuple(keys)
