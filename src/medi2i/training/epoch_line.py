"""The one-line console summary of an epoch (:func:`epoch_summary_line`).

The trainer prints the line and logs it at INFO after every epoch.

Rules: numbers go through :func:`medi2i.utils.formatting.compact` (fixed width, so the lines of
successive epochs line up); shares and clip rates are whole percent; a key that is missing is
left out of the line, never shown as a placeholder; keys are the logged names of
:mod:`medi2i.run.scalars` (plus ``best_metric``, the name of the best metric).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from medi2i.run.scalars import (
    BEST_EPOCH,
    BEST_VALUE,
    D_ACC,
    D_FAKE,
    D_REAL,
    IMAGES_PER_S,
    LOSS_G,
    NETWORKS,
    PART_NAMES,
    clip_rate_key,
    grad_norm_key,
    gshare_key,
    share_key,
    val_key,
)
from medi2i.utils.formatting import compact

__all__ = ["epoch_summary_line"]


def _pct(value: Any, *, scale: float = 1.0) -> str:
    """Whole percent (``61%``): shares and clip rates are read as rounded percentages."""
    try:
        x = float(value) * scale
    except (TypeError, ValueError):
        return str(value)
    return f"{x:.0f}%" if math.isfinite(x) else str(x)


def _duration(seconds: float) -> str:
    """``41s``, ``2m05s``, ``3h07m``: an epoch's wall time at a glance."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def epoch_summary_line(
    epoch: int, epochs: int, scalars: Mapping[str, float], *, seconds: float
) -> str:
    """Format one console line summarising an epoch; missing keys are simply left out.

    Example::

        epoch 3/10 | 41s 12.5 img/s | G 0.532 (grad recon 61% gan 14% fm 25%) | D_real 0.710
        D_fake 0.320 acc 0.830 | gradG 3.10 clipG 12% gradD 28.4 clipD 88% | val psnr 31.2
        (lung 32.0) ssim 0.941 (lung 0.950) | best psnr_mask 32.0@3

    (one line in reality). Shares are in percent: the gradient shares ``gshare_*`` ("grad") when
    they were measured, else the loss-value shares ``share_*`` ("value"); a share of exactly 0
    (a part that is off) is not shown; clip rates (``clip_rate_*``) and ``D_acc`` are fractions in
    ``[0, 1]``; clip rates are shown in percent.

    Args:
        epoch: the epoch just finished, as it should be shown.
        epochs: the total number of epochs.
        scalars: the epoch's values; reads ``loss_G``, ``gshare_<part>`` (else
            ``share_<part>``) for each part of :data:`~medi2i.run.scalars.PART_NAMES`,
            ``D_real``, ``D_fake``, ``D_acc``, ``grad_norm_{G,R,D}``, ``clip_rate_{G,R,D}``,
            ``val_psnr``, ``val_psnr_mask``, ``val_ssim``, ``val_ssim_mask``, ``best_metric``,
            ``best_value``, ``best_epoch``, ``images_per_s``.
        seconds: the epoch's wall time.

    Returns:
        The line, without a trailing newline.
    """
    s = scalars
    parts = [f"epoch {epoch}/{epochs}"]

    timing = _duration(seconds)
    if IMAGES_PER_S in s:
        timing += f" {compact(s[IMAGES_PER_S])} img/s"
    parts.append(timing)

    # What drives G is each term's gradient on G's output (gshare_*), not its share of the
    # loss value (share_*): a GAN term at chance holds a large, nearly constant value while
    # pulling little. The value shares are shown only when no gradient share was measured.
    measured = any(gshare_key(n) in s for n in PART_NAMES)
    key, label = (gshare_key, "grad ") if measured else (share_key, "value ")
    shares = [
        f"{name} {_pct(s[key(name)])}"
        for name in PART_NAMES
        if key(name) in s and _is_nonzero(s[key(name)])
    ]
    if LOSS_G in s or shares:
        g = f"G {compact(s[LOSS_G])}" if LOSS_G in s else "G"
        parts.append(f"{g} ({label}{' '.join(shares)})" if shares else g)

    d = [f"{name} {compact(s[name])}" for name in (D_REAL, D_FAKE) if name in s]
    if D_ACC in s:
        d.append(f"acc {compact(s[D_ACC])}")
    if d:
        parts.append(" ".join(d))

    grads = []
    for net in NETWORKS:
        if grad_norm_key(net) in s:
            grads.append(f"grad{net} {compact(s[grad_norm_key(net)])}")
        if clip_rate_key(net) in s:
            grads.append(f"clip{net} {_pct(s[clip_rate_key(net)], scale=100.0)}")
    if grads:
        parts.append(" ".join(grads))

    val = []
    for metric in ("psnr", "ssim"):
        whole, lung = s.get(val_key(metric)), s.get(val_key(f"{metric}_mask"))
        if whole is not None and lung is not None:
            val.append(f"{metric} {compact(whole)} (lung {compact(lung)})")
        elif whole is not None:
            val.append(f"{metric} {compact(whole)}")
        elif lung is not None:
            val.append(f"{metric} lung {compact(lung)}")
    if val:
        parts.append("val " + " ".join(val))

    if BEST_VALUE in s:
        best = f"best {s.get('best_metric', 'metric')} {compact(s[BEST_VALUE])}"
        if BEST_EPOCH in s:
            best += f"@{_int_or_num(s[BEST_EPOCH])}"
        parts.append(best)
    return " | ".join(parts)


def _is_nonzero(value: Any) -> bool:
    try:
        return float(value) != 0.0
    except (TypeError, ValueError):
        return True


def _int_or_num(value: Any) -> str:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(x)) if math.isfinite(x) and x == int(x) else compact(x)
