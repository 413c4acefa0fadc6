"""The ablation's numbers: arms, paired differences, R's share, floors, run records."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from _stats import ci_excludes_zero, ratio_interval, relative_pct, t_interval
from medi2i.run.scalars import D_ACC, D_FAKE, D_GAP, D_REAL, EPOCH, train_key, val_key

#: The epoch-log keys D's diagnostics read (also the keys of the report's per-epoch rows).
TRAIN_D_REAL, TRAIN_D_FAKE, TRAIN_D_ACC = (train_key(k) for k in (D_REAL, D_FAKE, D_ACC))
VAL_D_ACC, VAL_D_GAP, VAL_PSNR_MASK = val_key(D_ACC), val_key(D_GAP), val_key("psnr_mask")

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

SWEEP_MIN_LOSS_DB = 0.1  # below this, G lost nothing to misalignment and a share is noise

# Floors (see floors()).
R_GAIN_DB = 0.5
R_SHARE = 0.60
D_HFEN_REL_PCT = -5.0
D_PSNR_DB = 0.3


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


def r_share(
    arms: dict[str, dict], runs: dict[str, dict[int, dict]], metric: str = "psnr_mask"
) -> dict[str, Any]:
    """R's share of the misalignment gap in one metric: ``(G+R - G) / (oracle - G)``.

    ``value`` is computed from the arm means (every seed of each arm), so G's mean is the same
    in the numerator and the denominator; undefined (``None``) when an arm is missing or the
    oracle does not beat G (no gap to close). ``paired`` is the same ratio over the seeds all
    three arms ran, with Fieller's interval (:func:`_stats.ratio_interval`): the oracle's
    seed-to-seed spread in lung PSNR is as large as the gap itself at the demo's budget, so a
    share from one or two oracle seeds says little without it. The floor is stated in lung
    PSNR; the share in lung HFEN, which ignores the image's mean level, is its second view.
    """
    definition = f"(mean G+R - mean G) / (mean oracle - mean G), {LABELS[metric]} ({metric})"
    means = {a: arms.get(a, {}).get("metrics", {}).get(metric, {}).get("mean") for a in ARMS}
    out: dict[str, Any] = {"definition": definition, "metric": metric, "value": None}
    out["paired"] = None
    if means["G"] is None or means["G+R"] is None or means["oracle"] is None:
        out["reason"] = "needs the G, G+R and oracle arms"
        return out
    num, den = means["G+R"] - means["G"], means["oracle"] - means["G"]
    out.update(gain_G_plus_R=num, gap_oracle=den)
    seeds = sorted(set(runs["G"]) & set(runs["G+R"]) & set(runs["oracle"]))
    values = {a: [runs[a][s]["metrics"].get(metric) for s in seeds] for a in ("G", "G+R", "oracle")}
    gains = [_minus(r, g) for r, g in zip(values["G+R"], values["G"])]
    gaps = [_minus(o, g) for o, g in zip(values["oracle"], values["G"])]
    out["paired"] = {"seeds": seeds, **ratio_interval(gains, gaps)}
    if (den <= 0) if DIRECTIONS[metric] else (den >= 0):
        out["reason"] = "the oracle does not beat G: no misalignment gap to close"
        return out
    out["value"] = num / den
    return out


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


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
    paired = share.get("paired") or {}
    if value is not None and paired.get("n", 0) >= 2:
        if not paired.get("bounded"):
            checks[1]["note"] = "the point estimate only: its seed interval is unbounded"
        elif paired["ci_low"] < R_SHARE:
            checks[1]["note"] = (
                f"seed interval [{100 * paired['ci_low']:.0f}%, {100 * paired['ci_high']:.0f}%] "
                f"includes the floor"
            )
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
    share = r_share(arms, runs)
    share_hfen = r_share(arms, runs, "hfen_mask")
    return {
        "arms": arms,
        "differences": differences,
        "r_share": share,
        "r_share_hfen": share_hfen,
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
