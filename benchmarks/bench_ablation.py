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

    python benchmarks/bench_ablation.py                 # full: 14 runs of the demo budget
    python benchmarks/bench_ablation.py --quick         # small images, few steps: a few minutes
    python benchmarks/bench_ablation.py --sweep --arms oracle G G+R
    python benchmarks/bench_ablation.py --set loss.gan_weight=2 --out benchmarks/results/abl-gan2
"""

from __future__ import annotations

import argparse
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

from _ablation_analysis import (
    ARMS,
    DIRECTIONS,
    LABELS,
    METRICS,
    analyse,
    ok_runs,
    read_run,
    sweep_table,
)
from _ablation_report import crops_figure, markdown, num_text
from _common import machine_info, write_report
from _stats import CONFIDENCE
from medi2i.utils.atomic import atomic_write_text

logger = logging.getLogger("bench_ablation")

REPO = Path(__file__).resolve().parent.parent

# Arms trained with the first seed only by default: the two arms that answer a side question.
# The oracle gets every seed: R's share of the gap is a ratio with the oracle in its
# denominator, and the oracle varies from seed to seed by as much as the gap itself.
SINGLE_SEED_ARMS = ("G+D", "oracle+D")
SWEEP_PX: tuple[float, ...] = (0, 2, 4, 8)
SWEEP_ARMS: tuple[str, ...] = ("G", "G+R")
SWEEP_OVERRIDES = ("data.train_target=aligned",)


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
            f"(train {num_text(t['wall_seconds'], 4)} s, "
            f"{num_text(t['seconds_per_step'], 3)} s/step)"
            f"  lung PSNR {rec['metrics']['psnr_mask']:.2f} dB"
            f"  lung HFEN {num_text(rec['metrics']['hfen_mask'])}",
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
