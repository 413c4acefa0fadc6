"""The pure parts of the ablation benchmark: plan, statistics, floors, report (no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from conftest import load_benchmark


@pytest.fixture(scope="module")
def ab():
    return load_benchmark("bench_ablation")


@pytest.fixture(scope="module")
def st():
    return load_benchmark("_stats")


@pytest.fixture(scope="module")
def an():
    return load_benchmark("_ablation_analysis")


@pytest.fixture(scope="module")
def rep():
    return load_benchmark("_ablation_report")


def record(ab, arm, seed, psnr, hfen, *, d=None, names=("a", "b", "c")):
    """A successful run record with the fields the statistics read."""
    metrics = dict.fromkeys(ab.METRICS, 0.5)
    metrics.update(psnr_mask=psnr, hfen_mask=hfen, gmsd_mask=0.1)
    n = len(names)
    return {
        "arm": arm,
        "seed": seed,
        "group": "ablation",
        "status": "ok",
        "metrics": metrics,
        "image_ci": {m: [metrics[m] - 0.1, metrics[m] + 0.1] for m in ab.METRICS},
        "train": {"wall_seconds": 10.0, "seconds_per_step": 0.1, "steps": 100, "best_epoch": 4},
        "d": d,
        "per_image": {
            "names": list(names),
            "psnr_mask": [psnr + k * 0.1 for k in range(n)],
            "hfen_mask": [hfen * (1 + 0.01 * k) for k in range(n)],
        },
    }


def test_t_interval_matches_scipy(st):
    values = [30.1, 30.9, 31.4, 29.8]
    got = st.t_interval(values)
    lo, hi = sps.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sps.sem(values))
    assert got["n"] == 4
    assert got["mean"] == pytest.approx(np.mean(values))
    assert got["ci_low"] == pytest.approx(lo)
    assert got["ci_high"] == pytest.approx(hi)
    one = st.t_interval([3.0, None, float("nan")])
    assert one == {"n": 1, "mean": 3.0, "std": None, "ci_low": None, "ci_high": None}
    assert st.t_interval([])["mean"] is None


def test_ratio_interval_is_fieller(st):
    # Fieller's interval is where the paired t-test of a - r b stops rejecting zero: at each
    # end scipy's one-sample t-test gives exactly the 5% level, inside it more, outside less.
    gains = [0.82, 0.57, 0.60, 0.95, 0.41]
    gaps = [1.19, 1.94, 1.02, 1.55, 1.31]
    got = st.ratio_interval(gains, gaps)
    assert got["n"] == 5 and got["bounded"] is True
    assert got["value"] == pytest.approx(np.mean(gains) / np.mean(gaps))
    a, b = np.asarray(gains), np.asarray(gaps)
    for end in (got["ci_low"], got["ci_high"]):
        assert sps.ttest_1samp(a - end * b, 0.0).pvalue == pytest.approx(0.05, abs=1e-9)
    assert sps.ttest_1samp(a - got["value"] * b, 0.0).pvalue == pytest.approx(1.0)
    for outside in (got["ci_low"] - 0.01, got["ci_high"] + 0.01):
        assert sps.ttest_1samp(a - outside * b, 0.0).pvalue < 0.05
    # skewed: the ratio's interval is not symmetric about the estimate
    assert got["ci_high"] - got["value"] != pytest.approx(got["value"] - got["ci_low"], rel=0.01)
    # a denominator that does not differ from zero cannot bound the ratio
    loose = st.ratio_interval([0.5, 0.4, 0.6, 0.5], [1.0, -0.9, 0.6, -0.5])
    assert loose["bounded"] is False and loose["ci_low"] is None and loose["value"] is not None
    # incomplete pairs are left out; one pair gives the ratio without an interval
    one = st.ratio_interval([0.5, None, float("nan")], [2.0, 1.0, 1.0])
    assert one == {"n": 1, "value": 0.25, "ci_low": None, "ci_high": None, "bounded": False}
    assert st.ratio_interval([], [])["value"] is None


def test_plan_arms_seeds_and_override_order(ab):
    plan = ab.build_plan(
        arms=list(ab.ARMS),
        seeds=[0, 1, 2],
        single_seed_arms=["oracle", "G+D", "oracle+D"],
        all_seeds=False,
        bench_dir="runs/b",
        quick=True,
        user_overrides=["loss.gan_weight=2"],
        sweep=False,
    )
    names = [s.name for s in plan]
    assert names == [
        "oracle-s0",
        "G-s0",
        "G-s1",
        "G-s2",
        "G+R-s0",
        "G+R-s1",
        "G+R-s2",
        "G+D-s0",
        "G+R+D-s0",
        "G+R+D-s1",
        "G+R+D-s2",
        "oracle+D-s0",
    ]
    oracle = plan[0].overrides
    assert oracle[-1] == "seed=0"
    assert "data.train_target=aligned" in oracle
    assert oracle.index("loss.gan_weight=2") < oracle.index("model.R.enabled=false")
    # every arm gets the same budget: the shared part is identical
    shared = [o for o in oracle if o not in ab.ARMS["oracle"] and not o.startswith("seed=")]
    for spec in plan:
        assert [o for o in spec.overrides if o in shared] == shared
    assert "data.root=runs/b" in shared and "train.epochs=4" in shared
    assert plan[-2].overrides[-1] == "seed=2"  # G+R+D-s2 (the single-seed oracle+D is last)
    every = ab.build_plan(
        arms=["G+D"],
        seeds=[3, 4],
        single_seed_arms=["G+D"],
        all_seeds=True,
        bench_dir="b",
        quick=False,
        user_overrides=[],
        sweep=True,
    )
    assert [s.name for s in every[:2]] == ["G+D-s3", "G+D-s4"]
    sweep = [s for s in every if s.group == "sweep"]
    assert [(s.px, s.arm) for s in sweep] == [
        (p, a) for p in (0.0, 2.0, 4.0, 8.0) for a in ("G", "G+R")
    ]
    assert "data.misalign.max_px=8" in sweep[-1].overrides
    assert "data.train_target=aligned" in sweep[-1].overrides
    assert not any(o.startswith("train.epochs") for o in every[0].overrides)  # not quick
    with pytest.raises(ValueError, match="unknown arm"):
        ab.build_plan(
            arms=["G+X"], seeds=[0], single_seed_arms=[], all_seeds=False, bench_dir="b",
            quick=False, user_overrides=[], sweep=False,
        )  # fmt: skip
    with pytest.raises(ValueError, match="KEY=VALUE"):
        ab.build_plan(
            arms=["G"], seeds=[0], single_seed_arms=[], all_seeds=False, bench_dir="b",
            quick=False, user_overrides=["oops"], sweep=False,
        )  # fmt: skip
    assert ab.arm_conflicts(["model.D.enabled=true", "loss.gan_weight=2"], ["G"]) == [
        "model.D.enabled"
    ]


def synthetic_records(ab, *, seeds=(0, 1, 2)):
    d = {"D_real": 0.8, "D_fake": 0.2, "D_gap_abs": 0.6, "D_acc": 0.7}
    recs = [record(ab, "oracle", 0, 34.0, 0.30)]
    for s in seeds:
        recs += [
            record(ab, "G", s, 30.0 + 0.1 * s, 0.50),
            record(ab, "G+R", s, 32.5 + 0.12 * s, 0.45),
            record(ab, "G+R+D", s, 33.0 + 0.1 * s, 0.40 + 0.001 * s, d=d),
        ]
    recs.append(record(ab, "G+D", 0, 30.2, 0.48, d=d))
    recs.append({"arm": "G", "seed": 9, "group": "ablation", "status": "failed", "error": "x"})
    return recs


def test_paired_differences(ab, an, st):
    runs = ab.ok_runs(synthetic_records(ab))
    assert sorted(runs["G"]) == [0, 1, 2]  # the failed run is left out
    diff = an.paired_difference(runs, "G+R", "G", "psnr_mask")
    per_seed = [2.5 + 0.02 * s for s in range(3)]
    assert diff["seeds"] == [0, 1, 2]
    assert diff["per_seed"] == pytest.approx(per_seed)
    expected = st.t_interval(per_seed)
    assert diff["ci_low"] == pytest.approx(expected["ci_low"])
    hfen = an.paired_difference(runs, "G+R+D", "G+R", "hfen_mask")
    rel = [100 * (0.40 + 0.001 * s - 0.45) / 0.45 for s in range(3)]
    assert hfen["relative_pct"]["mean"] == pytest.approx(np.mean(rel))
    assert "relative_pct" not in diff
    oracle = an.paired_difference(runs, "oracle", "G", "psnr_mask")
    assert oracle["seeds"] == [0] and oracle["mean"] == pytest.approx(4.0)
    assert oracle["ci_low"] is None
    boot = an.image_paired_bootstrap(runs, "G+R", "G", "psnr_mask", resamples=200)
    assert boot["n_images"] == 3 and boot["seeds"] == 3
    assert boot["mean"] == pytest.approx(np.mean(per_seed))
    assert boot["ci_low"] <= boot["mean"] <= boot["ci_high"]
    assert an.image_paired_bootstrap(runs, "G+R", "missing", "psnr_mask") is None
    assert st.relative_pct(1.0, 0.0) is None


def test_floors_and_share(ab):
    result = ab.analyse(synthetic_records(ab), resamples=200)
    arms, floors = result["arms"], result["floors"]
    assert arms["oracle"]["metrics"]["psnr_mask"]["ci_low"] is None
    assert arms["oracle"]["metrics"]["psnr_mask"]["image_ci"] == pytest.approx([33.9, 34.1])
    assert arms["G"]["metrics"]["psnr_mask"]["image_ci"] is None
    share = result["r_share"]
    g, gr = np.mean([30.0, 30.1, 30.2]), np.mean([32.5, 32.62, 32.74])
    assert share["value"] == pytest.approx((gr - g) / (34.0 - g))
    # one oracle seed: the paired share is that seed's ratio, with no interval
    assert share["paired"]["seeds"] == [0] and share["paired"]["bounded"] is False
    assert share["paired"]["value"] == pytest.approx((32.5 - 30.0) / (34.0 - 30.0))
    assert floors["R_works"]["pass"] is True
    gain = floors["R_works"]["checks"][0]
    assert gain["margin"] == pytest.approx(gr - g - 0.5)
    # G+R+D - G+R: HFEN about -11% and PSNR about +0.47 dB, both with tight seed CIs
    assert floors["D_works"]["pass"] is True
    assert all(c["pass"] for c in floors["D_works"]["checks"])
    assert floors["D_informative"]["D_gap_abs"] == pytest.approx(0.6)
    assert floors["D_informative"]["pass"] is None
    best = floors["demo_best"]
    assert best["pass"] is True
    assert best["checks"][0]["best_other_arm"] == "G+R"
    assert best["checks"][1]["margin"] == pytest.approx(0.45 - 0.401)
    assert set(result["differences"]) == {
        "G+R - G",
        "G+R+D - G+R",
        "G+R+D - G",
        "G+D - G",
        "oracle - G",
    }


def test_share_paired_over_the_seeds_every_arm_ran(ab, st, rep):
    recs = synthetic_records(ab)
    recs += [record(ab, "oracle", 1, 33.1, 0.3), record(ab, "oracle", 2, 34.6, 0.3)]
    recs.append(record(ab, "oracle", 7, 40.0, 0.3))  # no G or G+R at seed 7: not paired
    paired = ab.analyse(recs, resamples=50)["r_share"]["paired"]
    assert paired["seeds"] == [0, 1, 2]
    gains = [2.5 + 0.02 * s for s in range(3)]
    gaps = [o - (30.0 + 0.1 * s) for s, o in enumerate((34.0, 33.1, 34.6))]
    expected = st.ratio_interval(gains, gaps)
    for key in ("value", "ci_low", "ci_high"):
        assert paired[key] == pytest.approx(expected[key], rel=1e-12)
    assert paired["bounded"] and paired["ci_low"] < paired["value"] < paired["ci_high"]
    note = ab.analyse(recs, resamples=50)["floors"]["R_works"]["checks"][1]["note"]
    assert note.startswith("seed interval [") and note.endswith("includes the floor")
    text = rep.share_interval_text(paired)
    assert text.startswith("Paired by seed (0, 1, 2): ") and "Fieller interval [" in text
    # lower is better in HFEN: the ratio of two negative differences (G 0.50, G+R 0.45,
    # oracle 0.30 on every seed but 7)
    hfen = ab.analyse(recs, resamples=50)["r_share_hfen"]
    assert hfen["metric"] == "hfen_mask" and hfen["paired"]["value"] == pytest.approx(0.25)
    worse = [r for r in recs if r.get("arm") != "oracle"]
    worse.append(record(ab, "oracle", 0, 34.0, 0.6))  # the oracle's HFEN above G's: no gap
    assert "no misalignment gap" in ab.analyse(worse, resamples=50)["r_share_hfen"]["reason"]


def test_floors_fail_and_missing(ab):
    recs = synthetic_records(ab, seeds=(0,))  # one seed: no seed CI, so D cannot pass
    for rec in recs:
        if rec.get("arm") == "G+R" and rec["status"] == "ok":
            rec["metrics"]["psnr_mask"] = 30.2  # R gains only 0.2 dB
    result = ab.analyse(recs, resamples=100)
    floors = result["floors"]
    assert floors["R_works"]["pass"] is False
    assert floors["R_works"]["checks"][0]["margin"] == pytest.approx(-0.3)
    assert floors["D_works"]["pass"] is False
    assert "2 shared seeds" in floors["D_works"]["checks"][1]["note"]
    no_oracle = ab.analyse([r for r in recs if r.get("arm") != "oracle"], resamples=100)
    assert no_oracle["r_share"]["value"] is None
    checks = no_oracle["floors"]["R_works"]["checks"]
    assert [c["pass"] for c in checks] == [False, None]
    assert no_oracle["floors"]["R_works"]["pass"] is False  # one failed check decides
    only_g = [r for r in recs if r.get("arm") in ("G", "G+R+D")]
    assert ab.analyse(only_g, resamples=100)["floors"]["R_works"]["pass"] is None
    flat = [r for r in recs if r.get("arm") != "oracle"]
    flat.append(record(ab, "oracle", 0, 29.0, 0.5))  # oracle below G: no gap
    assert "no misalignment gap" in ab.analyse(flat, resamples=100)["r_share"]["reason"]


def test_d_diagnostics_and_sweep(ab, an):
    epochs = [
        {"epoch": e, "train_D_real": 0.5 + 0.1 * e, "train_D_fake": 0.4, "train_D_acc": 0.6,
         "val_psnr_mask": 30 + e}
        for e in range(1, 5)
    ]  # fmt: skip
    per_epoch, last = an.d_diagnostics(epochs)
    assert len(per_epoch) == 4 and last["epochs"] == [3, 4]
    assert last["D_gap_abs"] == pytest.approx(np.mean([0.4, 0.5]))
    assert an.d_diagnostics([{"epoch": 1, "val_psnr_mask": 30.0}])[1] is None
    sweep = [
        {"group": "sweep", "arm": a, "px": p, "status": "ok", "metrics": {"psnr_mask": v}}
        for p, a, v in [(0, "G", 34.0), (0, "G+R", 33.9), (4, "G", 30.0), (4, "G+R", 32.0)]
    ]
    sweep.append({"group": "sweep", "arm": "G+R", "px": 8, "status": "failed", "metrics": {}})
    rows = ab.sweep_table(sweep, {"metrics": {"psnr_mask": {"mean": 34.1}}})
    assert [r["max_px"] for r in rows] == [0.0, 4.0, 8.0]
    assert rows[1]["gap_G+R_minus_G"] == pytest.approx(2.0)
    assert rows[2]["G+R"] is None and rows[2]["gap_G+R_minus_G"] is None
    assert all(r["oracle"] == 34.1 for r in rows)
    # R's share of what G lost to the misalignment, against the sweep's own 0-px G
    assert rows[1]["G_loss_to_ceiling"] == pytest.approx(4.0)
    assert rows[1]["r_share"] == pytest.approx(0.5)
    assert rows[0]["r_share"] is None  # G lost nothing at 0 px: no share of noise
    no_zero = [r for r in sweep if r["px"] != 0]
    assert ab.sweep_table(no_zero, {"metrics": {"psnr_mask": {"mean": 34.0}}})[0][
        "r_share"
    ] == pytest.approx(0.5)  # the oracle is the ceiling when the sweep has no 0-px G


def test_crop_window_and_markdown(ab, rep):
    mask = np.zeros((128, 128), dtype=np.uint8)
    mask[30:90, 80:110] = 1  # lung in the image's right half
    mask[30:90, 10:40] = 1
    top, left = rep.crop_window(mask, 32)
    assert (top, left) == (29, 79)  # centred on rows 30-59 (the upper half), cols 80-109
    assert rep.crop_window(np.zeros((64, 64)), 32) == (16, 16)
    assert rep.crop_window(mask, 128) == (0, 0)
    recs = synthetic_records(ab)
    for rec in recs:
        rec.setdefault("run_dir", f"x/{rec['arm']}-s{rec['seed']}")
        rec.setdefault("epochs", [])
    report = {
        "date": "now",
        "base_config": "configs/demo.yaml",
        "bench_dir": "runs/benchmark",
        "quick": True,
        "overrides": {"user": []},
        **ab.analyse(recs, resamples=100),
        "sweep": None,
        "runs": recs,
        "wall_seconds": 60.0,
    }
    text = ab.markdown(ab._json_safe(report))
    assert "| G+R+D |" in text and "PASS" in text and "Failed runs" in text
    assert "†" in text  # single-seed arms show the image bootstrap CI
    assert not math.isnan(ab._json_safe({"x": float("nan")})["x"] or 0.0)


def test_a_run_made_with_settings_the_base_config_no_longer_gives_is_stale(ab, tmp_path):
    """Reuse rests on what a run trained with, not only on the command line that made it."""
    import json

    from medi2i.config import load_config, save_config

    base = tmp_path / "base.yaml"
    base.write_text("model:\n  R: {enabled: true}\n  D: {enabled: false}\n", encoding="utf-8")
    runs = {}
    for arm, overrides in {"G": ["model.R.enabled=false"], "G+R": []}.items():
        run = tmp_path / arm
        (run / "test_eval").mkdir(parents=True)
        (run / "test_eval" / "summary.json").write_text("{}", encoding="utf-8")
        signature = {"config": str(base), "overrides": overrides}
        (run / "bench_run.json").write_text(json.dumps(signature), encoding="utf-8")
        save_config(load_config(str(base), overrides), run / "config.yaml")
        runs[arm] = (run, signature)
    assert all(ab.run_state(run, sig) == "reuse" for run, sig in runs.values())
    # the base config changes R's kind: the G+R run no longer is what its arm trains, the G
    # run (R off) still is
    base.write_text(
        "model:\n  R: {enabled: true, kind: fit}\n  D: {enabled: false}\n", encoding="utf-8"
    )
    assert ab.run_state(*runs["G"]) == "reuse"
    assert ab.run_state(*runs["G+R"]) == "stale"
    assert ab.config_drift(runs["G+R"][0], str(base), []) == ["model.R.kind"]
