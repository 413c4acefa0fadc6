"""Ablation of the demo: do the registration R and the discriminator D earn their place?

Six arms, each a set of config overrides on top of the base config (``configs/demo.yaml``,
which is G+R+D), all trained with the same budget (epochs, steps per epoch, batch size, crop):

* ``oracle`` - G alone trained on the *aligned* targets (the ceiling misalignment costs),
* ``G`` - G alone on the misaligned targets,
* ``G+R`` - G with the base config's registration R (the demo's: fitted per pair), no D,
* ``G+D`` - G with D, no R,
* ``G+R+D`` - the demo as it is,
* ``oracle+D`` - G with D on the aligned targets: what D adds when nothing is misaligned.

Every run trains in its own ``medi2i train`` subprocess (a crash in one arm is recorded, not
fatal), then its best EMA checkpoint is evaluated in-process on the TEST split against the
aligned truth. The report gives per-arm means with 95% t-intervals over seeds, paired
differences by seed (and a per-image paired bootstrap as a secondary view), R's share of the
misalignment gap, pass/fail floors with margins, D's diagnostics, and a figure with the same
lung crop from every arm. ``--sweep`` adds a misalignment sweep (G and G+R trained on the
aligned targets warped by the dataset's own misalignment simulator, ``max_px`` 0, 2, 4, 8).

Outputs in ``--out``: ``runs/ARM-sS/`` (each run, with ``bench.log`` and ``test_eval/``),
``ablation.json``, ``ablation.md`` and ``crops.png``. A run whose ``test_eval/summary.json``
exists (with the same overrides, and settings that still match what the base config gives its
arm) is reused, so an interrupted benchmark continues; ``--fresh`` retrains everything. Exit
status 0 when every run finished (failing floors are a result), 1 when some run failed, 2 for
bad arguments.

Usage::

    python benchmarks/bench_ablation.py                 # full: 12 runs of the demo budget
    python benchmarks/bench_ablation.py --quick         # small images, few steps: a few minutes
    python benchmarks/bench_ablation.py --sweep --arms oracle G G+R
    python benchmarks/bench_ablation.py --set loss.gan_weight=2 --out benchmarks/results/abl-gan2
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import logging
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from _common import machine_info, write_report
from medi2i.run.scalars import D_ACC, D_FAKE, D_GAP, D_REAL, EPOCH, train_key, val_key
from medi2i.utils.atomic import atomic_write_text

logger = logging.getLogger("bench_ablation")

#: The epoch-log keys D's diagnostics read (also the keys of the report's per-epoch rows).
TRAIN_D_REAL, TRAIN_D_FAKE, TRAIN_D_ACC = (train_key(k) for k in (D_REAL, D_FAKE, D_ACC))
VAL_D_ACC, VAL_D_GAP, VAL_PSNR_MASK = val_key(D_ACC), val_key(D_GAP), val_key("psnr_mask")

REPO = Path(__file__).resolve().parent.parent

ARMS: dict[str, tuple[str, ...]] = {
    "oracle": ("model.R.enabled=false", "model.D.enabled=false", "data.train_target=aligned"),
    "G": ("model.R.enabled=false", "model.D.enabled=false"),
    "G+R": ("model.D.enabled=false",),
    "G+D": ("model.R.enabled=false",),
    "G+R+D": (),
    "oracle+D": ("model.R.enabled=false", "data.train_target=aligned"),
}
"""Overrides that make each arm from the base config (G+R+D). ``oracle+D`` is D's own test
without misalignment (aligned targets, D conditioned on the input as in pix2pix): what D adds
to G when nothing is misaligned, beside ``oracle``."""

PAIRS: tuple[tuple[str, str], ...] = (
    ("G+R", "G"),
    ("G+R+D", "G+R"),
    ("G+R+D", "G"),
    ("G+D", "G"),
    ("oracle", "G"),
    ("oracle+D", "oracle"),
)
"""Paired differences ``a - b`` reported (over the seeds both arms have)."""

METRICS: tuple[str, ...] = (
    "psnr_mask",
    "ssim_mask",
    "hfen_mask",
    "gmsd_mask",
    "sharpness_mask",
    "bsr_lit",
    "bsr",
    "psnr",
    "ssim",
)
"""Per-run means over the test images (``_mask``: inside the lung mask)."""

LABELS = {
    "psnr_mask": "lung PSNR",
    "ssim_mask": "lung SSIM",
    "hfen_mask": "lung HFEN",
    "gmsd_mask": "lung GMSD",
    "sharpness_mask": "lung sharp.",
    "bsr_lit": "BSR lit",
    "bsr": "BSR",
    "psnr": "PSNR",
    "ssim": "SSIM",
}
# Direction of each metric: True higher is better, False lower is better, None best near 1.
DIRECTIONS: dict[str, bool | None] = {
    "psnr_mask": True,
    "ssim_mask": True,
    "hfen_mask": False,
    "gmsd_mask": False,
    "sharpness_mask": None,
    "bsr_lit": True,
    "bsr": True,
    "psnr": True,
    "ssim": True,
}
PER_IMAGE: tuple[str, ...] = ("psnr_mask", "hfen_mask")
"""Per-image values kept from ``metrics.csv`` for the paired bootstrap."""
RELATIVE: tuple[str, ...] = ("hfen_mask", "gmsd_mask")
"""Lower-is-better metrics whose differences are also given in % of the second arm."""

SINGLE_SEED_ARMS = ("oracle", "G+D", "oracle+D")
SWEEP_PX: tuple[float, ...] = (0, 2, 4, 8)
SWEEP_ARMS: tuple[str, ...] = ("G", "G+R")
SWEEP_OVERRIDES = ("data.train_target=aligned",)
SWEEP_MIN_LOSS_DB = 0.1  # below this, G lost nothing to misalignment and a share is noise

# Every run: no test evaluation inside training (done here, the same way for every arm), no
# progress bars or TensorBoard (they only cost time in a subprocess writing to a log file).
COMMON_OVERRIDES = ("eval.test_at_end=false", "logging.progress=false", "logging.tensorboard=false")
# --quick: a quarter of the demo's pixels per crop and 60 steps instead of 400, so that the
# whole ablation runs in a few minutes; the EMA warm-up shrinks with the step count.
QUICK_OVERRIDES = (
    "data.crop_size=64",
    "train.epochs=4",
    "train.steps_per_epoch=15",
    "train.ema_warmup_steps=20",
    "eval.max_val_images=8",
)
QUICK_SEEDS = (0, 1)
# The benchmarks built when missing: the demo's (`medi2i data drr` defaults, as
# scripts/demo.sh builds it) and a smaller one for --quick (128 px, 240 pairs: 24 test images).
BENCH_FULL = ("runs/benchmark", ())
BENCH_QUICK = ("runs/benchmark-quick", ("--size", "128", "--count", "240"))

# Floors (see floors()).
R_GAIN_DB = 0.5
R_SHARE = 0.60
D_HFEN_REL_PCT = -5.0
D_PSNR_DB = 0.3
CONFIDENCE = 0.95


# --------------------------------------------------------------------------------------------
# plan
# --------------------------------------------------------------------------------------------


@dataclass
class RunSpec:
    """One training run: an arm at a seed, with every override passed to ``medi2i train``."""

    arm: str
    seed: int
    group: str  # "ablation" or "sweep"
    name: str  # folder under OUT/runs
    overrides: list[str] = field(default_factory=list)
    px: float | None = None  # sweep: misalignment applied to the aligned targets


def override_key(override: str) -> str:
    """The key of a ``KEY=VALUE`` override.

    Raises:
        ValueError: not of the form ``KEY=VALUE``.
    """
    key, sep, _ = override.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {override!r} is not of the form KEY=VALUE")
    return key.strip()


def arm_seeds(
    arms: list[str], seeds: list[int], single_seed_arms: list[str], all_seeds: bool
) -> dict[str, list[int]]:
    """The seeds of each arm: all of them, or only the first for ``single_seed_arms``."""
    return {
        arm: list(seeds) if all_seeds or arm not in single_seed_arms else list(seeds[:1])
        for arm in arms
    }


def build_plan(
    *,
    arms: list[str],
    seeds: list[int],
    single_seed_arms: list[str],
    all_seeds: bool,
    bench_dir: str,
    quick: bool,
    user_overrides: list[str],
    sweep: bool,
) -> list[RunSpec]:
    """Every run of the benchmark, in the order they are trained.

    Override order (a later one wins): the common ones, ``data.root``, the quick ones, the
    caller's ``--set``, the arm's, the sweep's, the seed - so an arm stays what its name says
    and every arm gets the same budget.

    Raises:
        ValueError: an unknown arm, no seeds, or a malformed override.
    """
    unknown = [a for a in [*arms, *single_seed_arms] if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; choose from {list(ARMS)}")
    if not seeds:
        raise ValueError("at least one seed is needed")
    for override in user_overrides:
        override_key(override)
    shared = [*COMMON_OVERRIDES, f"data.root={bench_dir}"]
    if quick:
        shared += QUICK_OVERRIDES
    shared += user_overrides
    plan = []
    for arm, arm_seed_list in arm_seeds(arms, seeds, single_seed_arms, all_seeds).items():
        for seed in arm_seed_list:
            overrides = [*shared, *ARMS[arm], f"seed={seed}"]
            plan.append(RunSpec(arm, seed, "ablation", f"{arm}-s{seed}", overrides))
    if sweep:
        seed = seeds[0]
        for px in SWEEP_PX:
            for arm in SWEEP_ARMS:
                extra = [*SWEEP_OVERRIDES, f"data.misalign.max_px={px:g}"]
                overrides = [*shared, *ARMS[arm], *extra, f"seed={seed}"]
                name = f"sweep-px{px:g}-{arm}-s{seed}"
                plan.append(RunSpec(arm, seed, "sweep", name, overrides, px=float(px)))
    return plan


def arm_conflicts(user_overrides: list[str], arms: list[str]) -> list[str]:
    """``--set`` keys that an arm also sets (the arm's value wins for that arm)."""
    arm_keys = {override_key(o) for arm in arms for o in ARMS[arm]}
    arm_keys |= {"seed", "data.root", *(override_key(o) for o in COMMON_OVERRIDES)}
    return sorted({override_key(o) for o in user_overrides} & arm_keys)


# --------------------------------------------------------------------------------------------
# statistics (pure)
# --------------------------------------------------------------------------------------------


def _finite(values) -> np.ndarray:
    data = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return data[np.isfinite(data)]


def t_interval(values, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean and two-sided t confidence interval over the finite values.

    Returns:
        ``n``, ``mean``, ``std`` (ddof 1), ``ci_low``, ``ci_high``; the interval and std are
        ``None`` below two values, everything but ``n`` is ``None`` with none.
    """
    data = _finite(values)
    n = int(data.size)
    out: dict[str, Any] = {"n": n, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    if n == 0:
        return out
    mean = float(data.mean())
    out["mean"] = mean
    if n >= 2:
        std = float(data.std(ddof=1))
        half = float(sps.t.ppf(0.5 + confidence / 2.0, n - 1)) * std / math.sqrt(n)
        out.update(std=std, ci_low=mean - half, ci_high=mean + half)
    return out


def ci_excludes_zero(stat: dict[str, Any]) -> bool:
    """Whether a :func:`t_interval` result has an interval that lies on one side of zero."""
    lo, hi = stat.get("ci_low"), stat.get("ci_high")
    return lo is not None and hi is not None and (lo > 0 or hi < 0)


def ok_runs(records: list[dict], group: str = "ablation") -> dict[str, dict[int, dict]]:
    """Successful runs of a group as ``{arm: {seed: record}}``."""
    out: dict[str, dict[int, dict]] = {}
    for rec in records:
        if rec.get("group") == group and rec.get("status") == "ok":
            out.setdefault(rec["arm"], {})[int(rec["seed"])] = rec
    return out


def arm_summary(runs: dict[int, dict]) -> dict[str, Any]:
    """Per-arm statistics over its seeds: every metric, training cost and D's diagnostics.

    With a single seed the seed interval is ``None`` and ``image_ci`` holds that run's
    bootstrap interval over the test images instead.
    """
    seeds = sorted(runs)
    metrics = {}
    for name in METRICS:
        stat = t_interval([runs[s]["metrics"].get(name) for s in seeds])
        stat["image_ci"] = None
        if len(seeds) == 1:
            stat["image_ci"] = runs[seeds[0]].get("image_ci", {}).get(name)
        metrics[name] = stat
    train = {
        key: t_interval([runs[s]["train"].get(key) for s in seeds])["mean"]
        for key in ("wall_seconds", "seconds_per_step", "steps", "best_epoch")
    }
    d_keys = (D_REAL, D_FAKE, "D_gap_abs", D_ACC, VAL_D_ACC, VAL_D_GAP)
    d = {key: t_interval([(runs[s].get("d") or {}).get(key) for s in seeds]) for key in d_keys}
    return {"seeds": seeds, "metrics": metrics, "train": train, "d_last_half": d}


def relative_pct(a: float | None, b: float | None) -> float | None:
    """``100 * (a - b) / b`` (None when undefined)."""
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or b == 0:
        return None
    return 100.0 * (a - b) / b


def paired_difference(
    runs: dict[str, dict[int, dict]], a: str, b: str, metric: str
) -> dict[str, Any]:
    """``a - b`` of one metric, paired by seed over the seeds both arms ran.

    Returns:
        :func:`t_interval` of the per-seed differences plus ``seeds`` and ``per_seed``; for
        the metrics in :data:`RELATIVE` also ``relative_pct``, the t-interval of the per-seed
        relative change ``100 (a - b) / b``.
    """
    shared = sorted(set(runs.get(a, {})) & set(runs.get(b, {})))
    diffs, rels, used = [], [], []
    for seed in shared:
        va, vb = runs[a][seed]["metrics"].get(metric), runs[b][seed]["metrics"].get(metric)
        if va is None or vb is None or not (math.isfinite(va) and math.isfinite(vb)):
            continue
        used.append(seed)
        diffs.append(va - vb)
        rels.append(relative_pct(va, vb))
    out = t_interval(diffs)
    out["seeds"] = used
    out["per_seed"] = diffs
    if metric in RELATIVE:
        out["relative_pct"] = t_interval(rels)
    return out


def image_paired_bootstrap(
    runs: dict[str, dict[int, dict]],
    a: str,
    b: str,
    metric: str,
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any] | None:
    """Per-image paired bootstrap of ``a - b``, pooled over the seeds both arms ran.

    For every test image the difference is averaged over the shared seeds, then the images
    are resampled. Images are matched by name; an image missing or not finite in any of the
    shared runs is left out.

    Returns:
        ``n_images``, ``seeds``, ``mean``, ``ci_low``, ``ci_high``; ``None`` without a shared
        seed or per-image values.
    """
    from medi2i.evaluation.evaluate import bootstrap_ci

    shared = sorted(set(runs.get(a, {})) & set(runs.get(b, {})))
    per_seed = []
    for s in shared:
        pa, pb = runs[a][s].get("per_image") or {}, runs[b][s].get("per_image") or {}
        if metric not in pa or metric not in pb:
            continue
        va = dict(zip(pa["names"], pa[metric]))
        vb = dict(zip(pb["names"], pb[metric]))
        per_seed.append({n: va[n] - vb[n] for n in va.keys() & vb.keys()})
    if not per_seed:
        return None
    names = sorted(set.intersection(*(set(d) for d in per_seed)))
    diffs = []
    for name in names:
        values = [d[name] for d in per_seed]
        if all(v is not None and math.isfinite(v) for v in values):
            diffs.append(float(np.mean(values)))
    if not diffs:
        return None
    low, high = bootstrap_ci(
        np.asarray(diffs), resamples=resamples, rng=np.random.default_rng(seed)
    )
    return {
        "n_images": len(diffs),
        "seeds": len(per_seed),
        "mean": float(np.mean(diffs)),
        "ci_low": low,
        "ci_high": high,
    }


def r_share(arms: dict[str, dict]) -> dict[str, Any]:
    """R's share of the misalignment gap in lung PSNR: ``(G+R - G) / (oracle - G)``.

    Computed from the arm means (every seed of each arm), so G's mean is the same in the
    numerator and the denominator. Undefined (``None``) when an arm is missing or the oracle
    does not beat G (no gap to close).
    """
    definition = "(mean G+R - mean G) / (mean oracle - mean G), lung PSNR (psnr_mask)"
    means = {a: arms.get(a, {}).get("metrics", {}).get("psnr_mask", {}).get("mean") for a in ARMS}
    out: dict[str, Any] = {"definition": definition, "value": None}
    if means["G"] is None or means["G+R"] is None or means["oracle"] is None:
        out["reason"] = "needs the G, G+R and oracle arms"
        return out
    num, den = means["G+R"] - means["G"], means["oracle"] - means["G"]
    out.update(gain_G_plus_R_dB=num, gap_oracle_dB=den)
    if den <= 0:
        out["reason"] = "the oracle does not beat G: no misalignment gap to close"
        return out
    out["value"] = num / den
    return out


def _check(
    name: str, value: float | None, threshold: float | None, margin: float | None, ok
) -> dict:
    return {
        "name": name,
        "value": value,
        "threshold": threshold,
        "margin": margin,
        "pass": None if value is None else bool(ok),
    }


def _all_pass(checks: list[dict]) -> bool | None:
    """False if any check fails, else None if any could not be made, else True."""
    if any(c["pass"] is False for c in checks):
        return False
    if any(c["pass"] is None for c in checks):
        return None
    return True


def floors(
    arms: dict[str, dict], differences: dict[str, dict], share: dict[str, Any]
) -> dict[str, Any]:
    """Pass/fail floors with margins (positive margin = passes by that much).

    * ``R_works``: G+R - G >= 0.5 dB lung PSNR and R's share of the gap >= 60%.
    * ``D_works``: G+R+D vs G+R: lung HFEN lower by >= 5% and lung PSNR >= +0.3 dB, each with
      a seed interval that excludes zero (so it needs >= 2 shared seeds).
    * ``D_informative``: |D_real - D_fake| and D_acc of G+R+D over the last half of training,
      reported without a floor.
    * ``demo_best``: G+R+D has the best mean lung PSNR and lung HFEN of the non-oracle arms.

    ``pass`` is ``None`` where an arm needed is missing.
    """
    out: dict[str, Any] = {}

    r_diff = differences.get("G+R - G", {}).get("metrics", {}).get("psnr_mask", {})
    gain = r_diff.get("mean")
    value = share.get("value")
    checks = [
        _check(
            "G+R - G lung PSNR (dB)",
            gain,
            R_GAIN_DB,
            None if gain is None else gain - R_GAIN_DB,
            gain is not None and gain >= R_GAIN_DB,
        ),
        _check(
            "R's share of the oracle gap",
            value,
            R_SHARE,
            None if value is None else value - R_SHARE,
            value is not None and value >= R_SHARE,
        ),
    ]
    out["R_works"] = {"pass": _all_pass(checks), "checks": checks}

    d_metrics = differences.get("G+R+D - G+R", {}).get("metrics", {})
    hfen = d_metrics.get("hfen_mask", {}).get("relative_pct", {})
    psnr = d_metrics.get("psnr_mask", {})
    rel, dpsnr = hfen.get("mean"), psnr.get("mean")
    checks = [
        _check(
            "G+R+D vs G+R lung HFEN change (%)",
            rel,
            D_HFEN_REL_PCT,
            None if rel is None else D_HFEN_REL_PCT - rel,
            rel is not None and rel <= D_HFEN_REL_PCT,
        ),
        _check(
            "G+R+D - G+R lung HFEN seed CI excludes zero",
            rel,
            0.0,
            None if hfen.get("ci_high") is None else -hfen["ci_high"],
            ci_excludes_zero(hfen) and (hfen.get("ci_high") or 0.0) < 0,
        ),
        _check(
            "G+R+D - G+R lung PSNR (dB)",
            dpsnr,
            D_PSNR_DB,
            None if dpsnr is None else dpsnr - D_PSNR_DB,
            dpsnr is not None and dpsnr >= D_PSNR_DB,
        ),
        _check(
            "G+R+D - G+R lung PSNR seed CI excludes zero",
            dpsnr,
            0.0,
            psnr.get("ci_low"),
            ci_excludes_zero(psnr) and (psnr.get("ci_low") or 0.0) > 0,
        ),
    ]
    if rel is not None and hfen.get("ci_low") is None:
        checks[1]["note"] = "needs >= 2 shared seeds for a seed interval"
    if dpsnr is not None and psnr.get("ci_low") is None:
        checks[3]["note"] = "needs >= 2 shared seeds for a seed interval"
    out["D_works"] = {"pass": _all_pass(checks), "checks": checks}

    d = arms.get("G+R+D", {}).get("d_last_half", {})
    out["D_informative"] = {
        "pass": None,
        "note": "reported without a floor: D_gap_abs near 0 and D_acc near 0.5 mean D cannot "
        "tell real from fake (its gradient carries little information)",
        **{
            key: d.get(key, {}).get("mean")
            for key in ("D_gap_abs", D_REAL, D_FAKE, D_ACC, VAL_D_ACC, VAL_D_GAP)
        },
    }

    others = [a for a in arms if a not in ("oracle", "G+R+D")]
    checks = []
    for metric, higher in (("psnr_mask", True), ("hfen_mask", False)):
        demo = arms.get("G+R+D", {}).get("metrics", {}).get(metric, {}).get("mean")
        rivals = {
            a: arms[a]["metrics"][metric]["mean"]
            for a in others
            if arms[a]["metrics"][metric]["mean"] is not None
        }
        if demo is None or not rivals:
            checks.append(_check(f"G+R+D best {LABELS[metric]}", None, None, None, False))
            continue
        best_arm = max(rivals, key=rivals.get) if higher else min(rivals, key=rivals.get)
        margin = demo - rivals[best_arm] if higher else rivals[best_arm] - demo
        check = _check(f"G+R+D best {LABELS[metric]}", demo, rivals[best_arm], margin, margin > 0)
        check["best_other_arm"] = best_arm
        checks.append(check)
    out["demo_best"] = {"pass": _all_pass(checks), "checks": checks}
    return out


def analyse(records: list[dict], *, resamples: int = 1000) -> dict[str, Any]:
    """Per-arm statistics, paired differences, R's share and floors from the run records."""
    runs = ok_runs(records)
    arms = {arm: arm_summary(runs[arm]) for arm in ARMS if arm in runs}
    differences = {}
    for a, b in PAIRS:
        if a not in runs or b not in runs:
            continue
        key = f"{a} - {b}"
        differences[key] = {
            "a": a,
            "b": b,
            "seeds": sorted(set(runs[a]) & set(runs[b])),
            "metrics": {m: paired_difference(runs, a, b, m) for m in METRICS},
            "per_image_bootstrap": {
                m: image_paired_bootstrap(runs, a, b, m, resamples=resamples) for m in PER_IMAGE
            },
        }
    share = r_share(arms)
    return {
        "arms": arms,
        "differences": differences,
        "r_share": share,
        "floors": floors(arms, differences, share),
    }


def sweep_table(records: list[dict], oracle: dict | None) -> list[dict[str, Any]]:
    """One row per misalignment: lung PSNR of G and G+R, their gap, and R's share of G's loss.

    G's loss at a misalignment is ``G(0 px) - G(px)``: the sweep's own 0-px G (same seed, same
    simulator, aligned targets) is the ceiling, the ablation's oracle only when the sweep has
    no 0-px G. R's share is ``(G+R - G) / (ceiling - G)``, left out where the loss is under
    0.1 dB (a ratio of noise).
    """
    cells: dict[float, dict[str, float | None]] = {}
    for rec in records:
        if rec.get("group") != "sweep":
            continue
        value = rec["metrics"].get("psnr_mask") if rec.get("status") == "ok" else None
        cells.setdefault(float(rec["px"]), {})[rec["arm"]] = value
    oracle_psnr = None
    if oracle is not None:
        oracle_psnr = oracle["metrics"]["psnr_mask"]["mean"]
    ceiling = cells.get(0.0, {}).get("G")
    if ceiling is None:
        ceiling = oracle_psnr
    rows = []
    for px in sorted(cells):
        g, gr = cells[px].get("G"), cells[px].get("G+R")
        gain = None if g is None or gr is None else gr - g
        loss = None if ceiling is None or g is None else ceiling - g
        share = None if gain is None or loss is None or loss < SWEEP_MIN_LOSS_DB else gain / loss
        rows.append(
            {
                "max_px": px,
                "G": g,
                "G+R": gr,
                "gap_G+R_minus_G": gain,
                "G_loss_to_ceiling": loss,
                "r_share": share,
                "oracle": oracle_psnr,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# reading a run's files
# --------------------------------------------------------------------------------------------


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def d_diagnostics(epochs: list[dict]) -> tuple[list[dict], dict[str, float | None] | None]:
    """Per-epoch D statistics and validation lung PSNR, and D's means over the last half.

    Returns:
        ``(per_epoch, last_half)``; ``last_half`` is ``None`` when D was off (no
        ``train_D_real`` logged). ``D_gap_abs`` is the mean over those epochs of
        ``|train_D_real - train_D_fake|``.
    """
    keys = (TRAIN_D_REAL, TRAIN_D_FAKE, TRAIN_D_ACC, VAL_D_ACC, VAL_D_GAP, VAL_PSNR_MASK)
    per_epoch = [
        {EPOCH: row.get(EPOCH), **{key: _float(row.get(key)) for key in keys}} for row in epochs
    ]
    tail = per_epoch[len(per_epoch) // 2 :]
    if not any(r[TRAIN_D_REAL] is not None for r in tail):
        return per_epoch, None
    gaps = [
        abs(r[TRAIN_D_REAL] - r[TRAIN_D_FAKE])
        for r in tail
        if r[TRAIN_D_REAL] is not None and r[TRAIN_D_FAKE] is not None
    ]

    def mean(key: str) -> float | None:
        return t_interval([r[key] for r in tail])["mean"]

    return per_epoch, {
        "epochs": [r[EPOCH] for r in tail],
        D_REAL: mean(TRAIN_D_REAL),
        D_FAKE: mean(TRAIN_D_FAKE),
        "D_gap_abs": float(np.mean(gaps)) if gaps else None,
        D_ACC: mean(TRAIN_D_ACC),
        # on held-out validation images: D separating what it never trained on
        VAL_D_ACC: mean(VAL_D_ACC),
        VAL_D_GAP: mean(VAL_D_GAP),
    }


def read_run(run_dir: Path) -> dict[str, Any]:
    """The record of a trained and evaluated run, from the files in its folder.

    Raises:
        FileNotFoundError: the training summary or the test evaluation is missing.
    """
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    evaluation = json.loads((run_dir / "test_eval" / "summary.json").read_text(encoding="utf-8"))
    model = evaluation["methods"]["model"]
    identity = evaluation["methods"].get("identity", {})
    metrics = {m: _float((model.get(m) or {}).get("mean")) for m in METRICS}
    image_ci = {}
    for m in METRICS:
        s = model.get(m) or {}
        lo, hi = _float(s.get("ci_low")), _float(s.get("ci_high"))
        image_ci[m] = None if lo is None or hi is None else [lo, hi]
    names: list[str] = []
    per_image: dict[str, list[float | None]] = {m: [] for m in PER_IMAGE}
    with (run_dir / "test_eval" / "metrics.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row.get("method") != "model":
                continue
            names.append(row["name"])
            for m in PER_IMAGE:
                per_image[m].append(_float(row.get(m)))
    epochs = []
    epochs_path = run_dir / "metrics" / "epochs.jsonl"
    if epochs_path.is_file():
        for line in epochs_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                epochs.append(json.loads(line))
    per_epoch, d_last_half = d_diagnostics(epochs)
    steps = summary.get("steps") or 0
    wall = _float(summary.get("wall_seconds"))
    return {
        "metrics": metrics,
        "image_ci": image_ci,
        "identity": {m: _float((identity.get(m) or {}).get("mean")) for m in METRICS},
        "reference": evaluation.get("reference"),
        "test_images": evaluation.get("images"),
        "eval_seconds": _float((evaluation.get("seconds") or {}).get("total")),
        "train": {
            "wall_seconds": wall,
            "steps": steps,
            "seconds_per_step": wall / steps if wall is not None and steps else None,
            "epochs": summary.get("epochs"),
            "best_epoch": (summary.get("best") or {}).get("epoch"),
            "best_val": _float((summary.get("best") or {}).get("value")),
            "mode": summary.get("mode"),
        },
        "d": d_last_half,
        "epochs": per_epoch,
        "per_image": {"names": names, **per_image},
    }


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------


def ensure_benchmark(bench_dir: Path, drr_args: tuple[str, ...]) -> dict[str, Any]:
    """Build the benchmark with ``medi2i data drr`` unless a complete one is there.

    A folder without ``benchmark.json`` that already has a ``train`` split is taken as a
    dataset the caller supplies and used as it is (never built into).

    Returns:
        The benchmark's ``benchmark.json`` (empty for another dataset).

    Raises:
        RuntimeError: the build failed.
    """
    meta_path = bench_dir / "benchmark.json"

    def complete() -> bool:
        try:
            return json.loads(meta_path.read_text(encoding="utf-8")).get("status") == "complete"
        except (OSError, ValueError):
            return False

    if not meta_path.exists() and (bench_dir / "train").is_dir():
        logger.info("%s: no benchmark.json, used as a dataset as it is", bench_dir)
        return {}
    if not complete():
        cmd = [
            sys.executable,
            "-m",
            "medi2i",
            "data",
            "drr",
            "--out",
            str(bench_dir),
            "--no-progress",
            "--overwrite",
            *drr_args,
        ]
        print(f"building the benchmark: {shlex.join(cmd)}", flush=True)
        start = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not complete():
            tail = (result.stdout + result.stderr)[-3000:]
            raise RuntimeError(f"building the benchmark in {bench_dir} failed:\n{tail}")
        print(f"benchmark built in {time.perf_counter() - start:.0f} s", flush=True)
    return json.loads(meta_path.read_text(encoding="utf-8"))


def _run_signature(spec: RunSpec, base_config: str) -> dict[str, Any]:
    return {"config": base_config, "overrides": spec.overrides}


def train_command(spec: RunSpec, base_config: str, run_dir: Path, resume: bool) -> list[str]:
    """The ``medi2i train`` command line of a run (``--resume`` continues an interrupted one)."""
    cmd = [sys.executable, "-m", "medi2i", "train", "-v"]
    if resume:
        return [*cmd, "--resume", str(run_dir)]
    return [*cmd, "--config", base_config, "--out", str(run_dir), *spec.overrides]


_OFF_NETWORK_KEYS = {
    "R": ("model.R.", "optim.R.", "loss.smooth_"),
    "D": ("model.D.", "optim.D.", "loss.gan_", "loss.feat_match_", "loss.r1_"),
}
"""Settings that cannot affect a run in which that network is off."""


def effective_settings(cfg: Any) -> dict[str, Any]:
    """A config's settings that shape a run, flattened to dotted keys.

    The settings of a network that is off (``model.R.enabled: false`` and so on) are dropped:
    changing R's kind in the base config does not change what a G-only run trains.
    """
    from medi2i.config import Config, config_to_dict

    if not isinstance(cfg, Config):
        cfg = Config.model_validate(cfg)  # fills settings added since the run was made

    def flat(d: dict, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in d.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[prefix + key] = value
        return out

    settings = flat(config_to_dict(cfg))
    for net, prefixes in _OFF_NETWORK_KEYS.items():
        if not settings.get(f"model.{net}.enabled"):
            settings = {
                k: v
                for k, v in settings.items()
                if k == f"model.{net}.enabled" or not k.startswith(prefixes)
            }
    return settings


def config_drift(run_dir: Path, base_config: str, overrides: list[str]) -> list[str]:
    """Settings where the run's saved ``config.yaml`` differs from what its arm would use now."""
    import yaml

    from medi2i.config import load_config

    saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    before = effective_settings(saved)
    now = effective_settings(load_config(base_config, overrides))
    return sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))


def run_state(run_dir: Path, signature: dict[str, Any]) -> str:
    """What a run folder needs: ``reuse``, ``evaluate``, ``resume``, ``train`` or ``stale``.

    ``stale``: it was made with other overrides, by something else, or with settings that the
    base config no longer gives its arm (the config file changed since): it must be rebuilt.
    """
    if not run_dir.exists():
        return "train"
    try:
        saved = json.loads((run_dir / "bench_run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "stale"
    if {k: saved.get(k) for k in signature} != signature:
        return "stale"
    if (run_dir / "config.yaml").is_file():
        try:
            drift = config_drift(run_dir, signature["config"], signature["overrides"])
        except Exception as exc:  # an unreadable or invalid saved config cannot be trusted
            logger.info("%s: saved config unreadable (%s): stale", run_dir.name, exc)
            return "stale"
        if drift:
            logger.info("%s: settings changed since it ran (%s): stale", run_dir.name, drift)
            return "stale"
    if (run_dir / "test_eval" / "summary.json").is_file():
        return "reuse"
    if (run_dir / "summary.json").is_file() and (run_dir / "checkpoints" / "best.pt").is_file():
        return "evaluate"
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return "resume"
    return "stale"


def evaluate_run(run_dir: Path, bench_dir: Path, *, resamples: int, device: str) -> None:
    """Evaluate the run's best EMA weights on the test split (writes ``test_eval/``)."""
    from medi2i.evaluation.evaluate import evaluate_split
    from medi2i.inference import load_generator

    loaded = load_generator(run_dir / "checkpoints" / "best.pt", weights="ema", device=device)
    evaluate_split(
        loaded,
        out_dir=run_dir / "test_eval",
        split="test",
        data_root=bench_dir,
        bootstrap=resamples,
        seed=0,
        worst_k=3,
        progress=False,
    )


def execute(
    spec: RunSpec,
    *,
    out_runs: Path,
    base_config: str,
    bench_dir: Path,
    fresh: bool,
    resamples: int,
    device: str,
    timeout: float | None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train (in a subprocess) and evaluate one run, or reuse it; never raises for the run.

    ``threads`` sets the subprocess's ``OMP_NUM_THREADS`` (None: inherited).
    """
    run_dir = out_runs / spec.name
    record: dict[str, Any] = {
        "arm": spec.arm,
        "seed": spec.seed,
        "group": spec.group,
        "px": spec.px,
        "run_dir": str(run_dir),
        "overrides": spec.overrides,
        "status": "failed",
        "error": None,
    }
    signature = _run_signature(spec, base_config)
    state = "train" if fresh else run_state(run_dir, signature)
    if run_dir.exists() and (fresh or state == "stale"):
        # only this benchmark's own run folders (under OUT/runs) are ever removed
        logger.info("%s: removing %s (%s)", spec.name, run_dir, "fresh" if fresh else state)
        shutil.rmtree(run_dir)
        state = "train"
    record["action"] = state
    start = time.perf_counter()
    try:
        if state in ("train", "resume"):
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "bench_run.json", json.dumps(signature, indent=2) + "\n")
            cmd = train_command(spec, base_config, run_dir, resume=state == "resume")
            logger.info("%s: %s", spec.name, shlex.join(cmd))
            log_path = run_dir / "bench.log"
            with log_path.open("a", encoding="utf-8") as log_fh:
                log_fh.write(f"$ {shlex.join(cmd)}\n")
                log_fh.flush()
                try:
                    env = dict(os.environ)
                    if threads is not None:
                        env["OMP_NUM_THREADS"] = str(threads)
                    rc = subprocess.run(
                        cmd, stdout=log_fh, stderr=subprocess.STDOUT, timeout=timeout, env=env
                    ).returncode
                except subprocess.TimeoutExpired:
                    raise RuntimeError(f"training exceeded --run-timeout {timeout:g} s") from None
            if rc != 0:
                tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
                raise RuntimeError(
                    f"medi2i train exited with {rc}; {log_path}: " + " | ".join(tail)
                )
        if state != "reuse":
            evaluate_run(run_dir, bench_dir, resamples=resamples, device=device)
        record.update(read_run(run_dir))
        record["status"] = "ok"
        if record.get("reference") != "aligned_target":
            logger.warning(
                "%s: evaluated against %r, not the aligned target", spec.name, record["reference"]
            )
    except Exception as exc:  # a failed run is a result to report, the others go on
        record["error"] = f"{type(exc).__name__}: {exc}"
        logger.debug("%s failed", spec.name, exc_info=True)
    record["bench_seconds"] = time.perf_counter() - start
    if hasattr(os, "getloadavg"):  # other processes on the CPU inflate s/step: flag it
        record["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    return record


# --------------------------------------------------------------------------------------------
# figure
# --------------------------------------------------------------------------------------------


def crop_window(mask: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of a ``size`` square in the upper part of the lung in the image's right half.

    The image's right half shows the patient's left lung (radiographic display convention).
    Its lower part lies over the heart and the diaphragm, so the window is centred on the
    centroid of the lung pixels above that half's mid-height: the upper and hilar zone, where
    vessels are dense. Falls back to the whole mask, then to the image centre; the window is
    clamped inside the image.
    """
    h, w = mask.shape
    lung = mask > 0
    right = np.zeros_like(lung)
    right[:, w // 2 :] = lung[:, w // 2 :]
    for region in (right, lung):
        if region.any():
            rows = np.nonzero(region)[0]
            upper = region.copy()
            upper[int(rows.mean()) + 1 :] = False  # keeps at least the top row of the region
            rows, cols = np.nonzero(upper)
            cy, cx = float(rows.mean()), float(cols.mean())
            break
    else:
        cy, cx = h / 2.0, w / 2.0
    top = math.floor(min(max(cy - size / 2.0, 0), h - size) + 0.5)
    left = math.floor(min(max(cx - size / 2.0, 0), w - size) + 0.5)
    return top, left


def crops_figure(
    path: Path,
    arm_records: dict[str, dict],
    bench_dir: Path,
    *,
    image_index: int,
    device: str,
) -> dict[str, Any]:
    """Save the same lung crop of one test image for every arm's first-seed EMA output.

    Row 1: input, aligned truth, each arm's output (one grey window for all); row 2: each
    arm's |output - truth| on one colour scale. Titles give that image's lung PSNR / HFEN.

    Returns:
        What was shown: image name, window, error scale.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medi2i.data.builders import build_dataset
    from medi2i.inference import Predictor, load_generator
    from medi2i.metrics import reference_key

    outputs: dict[str, np.ndarray] = {}
    item = normalizer = None
    for arm, rec in arm_records.items():
        loaded = load_generator(
            Path(rec["run_dir"]) / "checkpoints" / "best.pt", weights="ema", device=device
        )
        if item is None:
            cfg = loaded.config.model_copy(deep=True)
            cfg.data.root, cfg.data.manifest = str(bench_dir), None
            dataset = build_dataset(cfg, "test", normalizer=loaded.normalizer, train=False)
            if not 0 <= image_index < len(dataset):
                raise ValueError(f"--crop-image {image_index} outside 0..{len(dataset) - 1}")
            item, normalizer = dataset[image_index], loaded.normalizer
        pred = Predictor(loaded, device=device).predict_normalised(item["input"][None]).cpu()
        outputs[arm] = normalizer.output_to_unit(pred[0, 0].double().numpy())

    def unit(key: str) -> np.ndarray:
        return normalizer.output_to_unit(item[key][0].double().numpy())

    reference = reference_key(item)
    x, truth, mask = unit("input"), unit(reference), item["mask"][0].numpy()
    h, w = truth.shape
    size = max(16, min(64, min(h, w) // 4))
    top, left = crop_window(mask, size)

    def crop(a: np.ndarray) -> np.ndarray:
        return a[top : top + size, left : left + size]

    shown = [crop(x), crop(truth)] + [crop(o) for o in outputs.values()]
    lo = float(min(np.percentile(c, 1) for c in shown[:2]))
    hi = float(max(np.percentile(c, 99) for c in shown[:2]))
    errors = {arm: np.abs(crop(o) - crop(truth)) for arm, o in outputs.items()}
    scale = float(np.percentile(np.concatenate([e.ravel() for e in errors.values()]), 99.5))
    scale = scale or 1e-6

    name = item["name"]
    cols = 2 + len(outputs)
    fig, axes = plt.subplots(2, cols, figsize=(2.3 * cols, 5.6), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    axes[0, 0].imshow(shown[0], cmap="gray", vmin=lo, vmax=hi)
    axes[0, 0].set_title("input", fontsize=9)
    axes[0, 1].imshow(shown[1], cmap="gray", vmin=lo, vmax=hi)
    axes[0, 1].set_title(f"truth ({reference})", fontsize=9)
    image = None
    for k, (arm, out) in enumerate(outputs.items(), start=2):
        per = arm_records[arm].get("per_image") or {}
        title = arm
        if name in per.get("names", []):
            i = per["names"].index(name)
            psnr, hfen = per["psnr_mask"][i], per["hfen_mask"][i]
            if psnr is not None and hfen is not None:
                title += f"\nlung {psnr:.2f} dB, HFEN {hfen:.3g}"
        axes[0, k].imshow(crop(out), cmap="gray", vmin=lo, vmax=hi)
        axes[0, k].set_title(title, fontsize=9)
        image = axes[1, k].imshow(errors[arm], cmap="magma", vmin=0.0, vmax=scale)
        axes[1, k].set_title(f"|{arm} - truth|", fontsize=9)
    axes[1, 0].text(
        0.0,
        0.5,
        f"test image {name}\ncrop {size}x{size} at\nrow {top}, col {left}\n"
        f"(upper lung, image right half)\nEMA, first seed",
        fontsize=8,
        va="center",
        transform=axes[1, 0].transAxes,
    )
    if image is not None:
        fig.colorbar(image, ax=axes[1, 1], fraction=0.9, label="|error| (0-1 display units)")
    fig.suptitle("same lung crop, every arm (grey window shared; error scale shared)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {
        "path": str(path),
        "image": name,
        "image_index": image_index,
        "window": {"top": top, "left": left, "size": size},
        "error_scale": scale,
        "arms": list(outputs),
    }


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def _arm_cell(stat: dict[str, Any]) -> str:
    if stat.get("mean") is None:
        return "n/a"
    if stat.get("ci_low") is not None:
        return f"{_num(stat['mean'])} ± {_num(stat['ci_high'] - stat['mean'], 2)}"
    if stat.get("image_ci"):
        lo, hi = stat["image_ci"]
        return f"{_num(stat['mean'])} [{_num(lo)}, {_num(hi)}]†"
    return _num(stat["mean"])


def diff_cell(
    stat: dict[str, Any] | None, digits: int = 3, *, kind: str = "g", suffix: str = ""
) -> str:
    """A signed difference with its interval, ``+0.61 [+0.09, +1.13]`` (format ``kind``)."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    text = f"{stat['mean']:+.{digits}{kind}}{suffix}"
    if stat.get("ci_low") is not None:
        text += f" [{stat['ci_low']:+.{digits}{kind}}, {stat['ci_high']:+.{digits}{kind}}]"
    return text


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables (arms, paired differences, floors, D, sweep)."""
    lines = [f"# Ablation: do R and D earn their place? ({report['date']})", ""]
    lines.append(
        f"Base `{report['base_config']}`, benchmark `{report['bench_dir']}`, "
        f"{'quick' if report['quick'] else 'full'} budget; test split vs the aligned truth, "
        f"best EMA weights. Extra overrides: `{' '.join(report['overrides']['user']) or 'none'}`."
    )
    if report["quick"]:
        lines += [
            "",
            "Quick budget: the runs are far from converged; this checks the machinery, "
            "its differences are not conclusions.",
        ]
    lines += ["", "## Arms (mean ± 95% t half-width over seeds)", ""]
    head = ["arm", "seeds", *(LABELS[m] for m in METRICS), "s/step", "best ep"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    any_single = False
    for arm, s in report["arms"].items():
        cells = [_arm_cell(s["metrics"][m]) for m in METRICS]
        any_single |= any(c.endswith("†") for c in cells)
        t = s["train"]
        lines.append(
            "| "
            + " | ".join(
                [
                    arm,
                    ",".join(map(str, s["seeds"])),
                    *cells,
                    _num(t["seconds_per_step"], 3),
                    _num(t["best_epoch"], 3),
                ]
            )
            + " |"
        )
    if any_single:
        lines.append("")
        lines.append("† one seed: 95% bootstrap CI over the test images, not over seeds.")
    lines.append("")
    lines.append("Better: higher PSNR/SSIM/BSR, lower HFEN/GMSD, sharpness ratio near 1.")

    lines += ["", "## Paired differences a - b by seed (mean [95% t-CI])", ""]
    head = [
        "a - b",
        "seeds",
        "lung PSNR dB",
        "lung HFEN %",
        "lung GMSD %",
        "lung SSIM",
        "PSNR dB",
        "img-boot lung PSNR",
        "img-boot lung HFEN",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, d in report["differences"].items():
        m = d["metrics"]
        boot = d["per_image_bootstrap"]

        def bcell(b: dict | None) -> str:
            if not b:
                return "n/a"
            return f"{b['mean']:+.3g} [{b['ci_low']:+.3g}, {b['ci_high']:+.3g}] n={b['n_images']}"

        lines.append(
            "| "
            + " | ".join(
                [
                    key,
                    ",".join(map(str, d["seeds"])),
                    diff_cell(m["psnr_mask"]),
                    diff_cell(m["hfen_mask"].get("relative_pct"), 2),
                    diff_cell(m["gmsd_mask"].get("relative_pct"), 2),
                    diff_cell(m["ssim_mask"], 2),
                    diff_cell(m["psnr"]),
                    bcell(boot.get("psnr_mask")),
                    bcell(boot.get("hfen_mask")),
                ]
            )
            + " |"
        )
    lines.append("")
    lines.append(
        "HFEN/GMSD columns: relative change 100·(a − b)/b per seed (negative = a better). "
        "img-boot: per-image paired bootstrap over the test images, pooled over shared seeds."
    )

    share = report["r_share"]
    lines += ["", "## Floors", ""]
    if share.get("value") is not None:
        lines.append(
            f"R's share of the misalignment gap: {100 * share['value']:.0f}% "
            f"(G+R − G {share['gain_G_plus_R_dB']:+.2f} dB of oracle − G "
            f"{share['gap_oracle_dB']:+.2f} dB)."
        )
    else:
        lines.append(f"R's share of the misalignment gap: n/a ({share.get('reason')}).")
    lines.append("")
    verdict = {True: "PASS", False: "FAIL", None: "n/a"}
    for name, floor in report["floors"].items():
        if name == "D_informative":
            lines.append(
                f"- **D_informative** (no floor): abs(D_real − D_fake) "
                f"{_num(floor['D_gap_abs'])}, D_real {_num(floor[D_REAL])}, "
                f"D_fake {_num(floor[D_FAKE])}, D_acc {_num(floor[D_ACC])}; on validation "
                f"images D_acc {_num(floor.get(VAL_D_ACC))}, D_real − D_fake "
                f"{_num(floor.get(VAL_D_GAP))} (G+R+D, last half of training)"
            )
            continue
        lines.append(f"- **{name}**: {verdict[floor['pass']]}")
        for c in floor["checks"]:
            note = f" ({c['note']})" if c.get("note") else ""
            other = f" (best other: {c['best_other_arm']})" if c.get("best_other_arm") else ""
            lines.append(
                f"  - {c['name']}: {_num(c['value'])} vs {_num(c['threshold'])}, margin "
                f"{_num(c['margin'], 3)} → {verdict[c['pass']]}{other}{note}"
            )

    lines += ["", "## D's diagnostics per arm (last half of training, mean over seeds)", ""]
    head = [
        "arm",
        "D_real",
        "D_fake",
        "abs(D_real − D_fake)",
        "D_acc",
        "val D_acc",
        "val lung PSNR by epoch",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, s in report["arms"].items():
        d = s["d_last_half"]
        first = next(
            (r for r in report["runs"] if r["arm"] == arm and r["group"] == "ablation"), None
        )
        curve = ""
        if first and first.get("epochs"):
            curve = " ".join(_num(e[VAL_PSNR_MASK], 4) for e in first["epochs"])
            curve += f" (seed {first['seed']})"
        lines.append(
            f"| {arm} | {_num(d[D_REAL]['mean'])} | {_num(d[D_FAKE]['mean'])} | "
            f"{_num(d['D_gap_abs']['mean'])} | {_num(d[D_ACC]['mean'])} | "
            f"{_num(d.get(VAL_D_ACC, {}).get('mean'))} | {curve} |"
        )

    if report.get("sweep"):
        lines += ["", "## Misalignment sweep (lung PSNR dB, one seed)", ""]
        head = ["max_px", "G", "G+R", "G+R − G", "G's loss to 0 px", "R's share", "oracle"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in report["sweep"]:
            gap, loss, share = row["gap_G+R_minus_G"], row["G_loss_to_ceiling"], row["r_share"]
            lines.append(
                f"| {row['max_px']:g} | {_num(row['G'])} | {_num(row['G+R'])} | "
                f"{'n/a' if gap is None else f'{gap:+.3g}'} | "
                f"{'n/a' if loss is None else f'{loss:.3g}'} | "
                f"{'n/a' if share is None else f'{100 * share:.0f}%'} | {_num(row['oracle'])} |"
            )

    failed = [r for r in report["runs"] if r["status"] != "ok"]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {Path(r['run_dir']).name}: {r['error']}" for r in failed]
    lines += ["", f"Total wall time {report['wall_seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def git_info() -> dict[str, Any]:
    """The commit of the working tree and whether it has uncommitted changes."""
    info: dict[str, Any] = {"commit": None, "dirty": None}
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
        info["dirty"] = bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", default="configs/demo.yaml", help="base config (G+R+D)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override for every arm (repeatable)",
    )
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=None, help="seeds (default 0 1 2; quick: 0 1)"
    )
    parser.add_argument(
        "--single-seed-arms",
        nargs="*",
        default=list(SINGLE_SEED_ARMS),
        help="arms trained with the first seed only",
    )
    parser.add_argument("--all-seeds", action="store_true", help="every arm gets every seed")
    parser.add_argument(
        "--out", type=Path, default=None, help="default benchmarks/results/ablation[-quick]"
    )
    parser.add_argument(
        "--bench-dir",
        type=Path,
        default=None,
        help="benchmark folder, built when missing (default runs/benchmark[-quick])",
    )
    parser.add_argument("--quick", action="store_true", help="small images, few steps")
    parser.add_argument(
        "--sweep", action="store_true", help="add the misalignment sweep (G, G+R; max_px 0-8)"
    )
    parser.add_argument("--fresh", action="store_true", help="retrain every run")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples")
    parser.add_argument("--crop-image", type=int, default=0, help="test image of crops.png")
    parser.add_argument("--device", default="cpu", help="device for evaluation and the figure")
    parser.add_argument(
        "--run-timeout", type=float, default=0.0, help="seconds per training run, 0 = none"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="runs trained at once, each with cpu_count/jobs threads: the small networks use "
        "one core each far better than two cores together (on 2 cores, two 1-thread runs "
        "train at about twice the throughput of one 2-thread run)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    return parser.parse_args(argv)


def _print_run(rec: dict[str, Any], name: str, index: int, total: int) -> None:
    """One progress line per finished run."""
    head = f"[{index}/{total}] {name:22s}"
    if rec["status"] == "ok":
        t = rec["train"]
        print(
            f"{head} {rec['action']:8s} {rec['bench_seconds']:6.0f} s "
            f"(train {_num(t['wall_seconds'], 4)} s, {_num(t['seconds_per_step'], 3)} s/step)"
            f"  lung PSNR {rec['metrics']['psnr_mask']:.2f} dB"
            f"  lung HFEN {_num(rec['metrics']['hfen_mask'])}",
            flush=True,
        )
    else:
        print(f"{head} FAILED after {rec['bench_seconds']:.0f} s: {rec['error']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the ablation; returns the exit status (0 all runs ok, 1 some failed, 2 bad input)."""
    args = parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO
    if args.verbose >= 2:
        level = logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from medi2i import __version__
    from medi2i.utils.log import setup_logging

    setup_logging(args.verbose)

    seeds = args.seeds if args.seeds is not None else list(QUICK_SEEDS if args.quick else (0, 1, 2))
    bench_default, drr_args = BENCH_QUICK if args.quick else BENCH_FULL
    bench_dir = args.bench_dir or Path(bench_default)
    out = args.out or Path("benchmarks/results/ablation" + ("-quick" if args.quick else ""))
    config_path = Path(args.config)
    if not config_path.is_file():
        print(f"bench_ablation: error: config {config_path} not found", file=sys.stderr)
        return 2
    if args.bootstrap < 1:
        print("bench_ablation: error: --bootstrap must be >= 1", file=sys.stderr)
        return 2
    try:
        plan = build_plan(
            arms=args.arms,
            seeds=seeds,
            single_seed_arms=args.single_seed_arms,
            all_seeds=args.all_seeds,
            bench_dir=str(bench_dir),
            quick=args.quick,
            user_overrides=args.overrides,
            sweep=args.sweep,
        )
    except ValueError as exc:
        print(f"bench_ablation: error: {exc}", file=sys.stderr)
        return 2
    # every distinct override set is validated here, so a typo in --set is one clear error
    # instead of a failure in every run
    from medi2i.config import ConfigError, load_config

    for spec in {tuple(s.overrides[:-1]): s for s in plan}.values():
        try:
            load_config(config_path, spec.overrides)
        except ConfigError as exc:
            print(f"bench_ablation: error: run {spec.name}: {exc}", file=sys.stderr)
            return 2
    for key in arm_conflicts(args.overrides, args.arms):
        logger.warning("--set %s is also set by an arm or the benchmark: theirs wins", key)

    start = time.perf_counter()
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    machine = machine_info()
    try:
        bench_meta = ensure_benchmark(bench_dir, drr_args)
    except RuntimeError as exc:
        print(f"bench_ablation: error: {exc}", file=sys.stderr)
        return 1

    jobs = max(1, args.jobs)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    if jobs > 1:
        import torch

        torch.set_num_threads(threads)  # in-process evaluations run side by side as well
        each = f"{threads} thread(s) each"
    else:  # one run at a time inherits the environment's thread setting
        each = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset: all cores')}"
    print(f"{len(plan)} runs -> {out}/runs ({jobs} at a time, {each})", flush=True)

    def run_one(spec: RunSpec) -> dict[str, Any]:
        return execute(
            spec,
            out_runs=out / "runs",
            base_config=str(config_path),
            bench_dir=bench_dir,
            fresh=args.fresh,
            resamples=args.bootstrap,
            device=args.device,
            timeout=args.run_timeout or None,
            threads=threads if jobs > 1 else None,
        )

    records_by_index: dict[int, dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_one, spec): i for i, spec in enumerate(plan)}
        for done, future in enumerate(as_completed(futures), start=1):
            i = futures[future]
            records_by_index[i] = future.result()
            _print_run(records_by_index[i], plan[i].name, done, len(plan))
    records = [records_by_index[i] for i in range(len(plan))]

    analysis = analyse(records, resamples=max(args.bootstrap, 1000))
    sweep = None
    if args.sweep:
        sweep = sweep_table(records, analysis["arms"].get("oracle"))

    figure = None
    runs = ok_runs(records)
    first_seed = {arm: runs[arm][min(runs[arm])] for arm in ARMS if arm in runs}
    if first_seed:
        try:
            figure = crops_figure(
                out / "crops.png",
                first_seed,
                bench_dir,
                image_index=args.crop_image,
                device=args.device,
            )
        except Exception as exc:  # the numbers stand without the figure
            logger.warning("crops.png not written: %s: %s", type(exc).__name__, exc)
            figure = {"error": f"{type(exc).__name__}: {exc}"}

    report = {
        "benchmark": "ablation: do R and D earn their place",
        "command": [sys.executable, *sys.argv] if argv is None else ["bench_ablation.py", *argv],
        "cwd": os.getcwd(),
        "date": date,
        "medi2i_version": __version__,
        "git": git_info(),
        "machine": machine,
        "base_config": str(config_path),
        "base_config_text": config_path.read_text(encoding="utf-8"),
        "bench_dir": str(bench_dir),
        "bench_settings": bench_meta.get("settings"),
        "bench_counts": bench_meta.get("counts"),
        "quick": args.quick,
        "seeds": seeds,
        "single_seed_arms": [] if args.all_seeds else args.single_seed_arms,
        "overrides": {
            "common": list(COMMON_OVERRIDES),
            "quick": list(QUICK_OVERRIDES) if args.quick else [],
            "user": args.overrides,
            "arms": {a: list(ARMS[a]) for a in args.arms},
            "sweep": [*SWEEP_OVERRIDES, "data.misalign.max_px=P"] if args.sweep else [],
            "sweep_px": list(SWEEP_PX) if args.sweep else [],
        },
        "metrics": {m: {"label": LABELS[m], "higher_is_better": DIRECTIONS[m]} for m in METRICS},
        "confidence": CONFIDENCE,
        "bootstrap_resamples": {
            "per_run_image_ci": args.bootstrap,
            "paired": max(args.bootstrap, 1000),
        },
        **analysis,
        "sweep": sweep,
        "figure": figure,
        "runs": records,
        "failed": [Path(r["run_dir"]).name for r in records if r["status"] != "ok"],
        "wall_seconds": time.perf_counter() - start,
    }
    report = _json_safe(report)
    write_report(out / "ablation.json", report)
    text = markdown(report)
    atomic_write_text(out / "ablation.md", text)
    print()
    print(text)
    print(f"-> {out / 'ablation.json'}, {out / 'ablation.md'}, {out / 'crops.png'}")
    return 1 if report["failed"] else 0


def _json_safe(value: Any) -> Any:
    """Non-finite floats become ``null`` and numpy scalars Python numbers (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


if __name__ == "__main__":
    sys.exit(main())
