"""benchmarks/gpu_check.py: its dry run on the CPU end to end, and its verdicts and arguments.

The dry run (``--device cpu --dry-run``) trains, predicts and launches torchrun at tiny sizes in
a subprocess; every part the CPU can run must pass, and fp16 with the R1 check it feeds must be
skipped as needing CUDA. The pure parts (R1 verdict, loss checks, exit status, arguments) are
tested on the imported module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_benchmark

REPO = Path(__file__).resolve().parent.parent

SCRIPT = REPO / "benchmarks" / "gpu_check.py"

PARTS = (
    "data",
    "training_fp32",
    "training_bf16",
    "training_fp16",
    "r1_fp16",
    "predict",
    "predict_bf16",
    "predict_fp16",
    "ddp_1",
    "ddp_2",
)
CPU_PARTS = (
    "data",
    "training_fp32",
    "training_bf16",
    "predict",
    "predict_bf16",
    "ddp_1",
    "ddp_2",
)
TRAIN_KEYS = (
    "steps",
    "step_s_median",
    "images_per_s",
    "images_per_s_logged",
    "peak_memory_gib",
    "losses_finite",
    "skipped_steps",
    "r1",
)


@pytest.fixture(scope="module")
def gc_module():
    return load_benchmark("gpu_check")


@pytest.mark.slow
def test_dry_run_on_cpu_passes_every_cpu_part(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--dry-run", "--out", str(out)]
    cmd += ["--work", str(tmp_path / "work")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())

    assert {"machine", "gpu", "settings", "parts", "exit_status"} <= report.keys()
    assert report["exit_status"] == 0
    assert report["settings"]["dry_run"] is True
    assert report["gpu"]["torch"] and report["gpu"]["name"] is None  # no card on the CPU
    assert tuple(report["parts"]) == PARTS
    for name in CPU_PARTS:
        assert report["parts"][name]["status"] == "pass", (name, report["parts"][name])
    for name in ("training_fp16", "r1_fp16"):
        assert report["parts"][name]["status"] == "skipped"
        assert "needs CUDA" in report["parts"][name]["reason"]

    for name in ("training_fp32", "training_bf16"):
        part = report["parts"][name]
        assert set(TRAIN_KEYS) <= part.keys()
        assert part["steps"] == report["settings"]["steps"] == 2
        assert part["images_per_s"] > 0 and part["losses_finite"] is True
        assert part["peak_memory_gib"] is None  # a CUDA measure
        r1 = part["r1"]  # R1 is due at the first D step
        assert r1["count"] >= 1 and r1["finite"] == r1["count"] and r1["median"] > 0
    for name, precision in (("predict", "fp32"), ("predict_bf16", "bf16")):
        predict = report["parts"][name]
        assert predict["precision"] == precision
        assert predict["images_per_s"] > 0 and predict["startup_s"] >= 0
        assert predict["large_tiled"] is True and predict["large_s"] > 0
    assert "fp16 needs a GPU" in report["parts"]["predict_fp16"]["reason"]
    assert report["parts"]["ddp_1"]["process_group"] is None
    assert report["parts"]["ddp_2"]["process_group"] == "gloo"
    for name in ("ddp_1", "ddp_2"):
        assert report["parts"][name]["images_per_s_logged"] > 0
    assert "| training_fp32 | pass |" in done.stdout  # the Markdown table


def r1_rows(values: list[float | None]) -> list[dict]:
    """steps.jsonl rows with these R1 penalties (None: non-finite, as the log writes it)."""
    return [{"step": k + 1, "r1": v} for k, v in enumerate(values)]


def test_r1_summary_counts_finite_and_zero_values(gc_module):
    rows = [*r1_rows([2.0, None, 0.0, 4.0]), {"step": 9, "loss_G": 1.0}]
    got = gc_module.r1_summary(rows)
    assert got["count"] == 4 and got["finite"] == 3 and got["zeros"] == 1
    assert got["first"] == 2.0 and got["median"] == 2.0 and got["steps"] == [1, 2, 3, 4]


def test_r1_verdict(gc_module):
    summary, verdict = gc_module.r1_summary, gc_module.r1_verdict
    ref = summary(r1_rows([1.0, 2.0, 3.0]))
    assert verdict(ref, summary(r1_rows([1.1, 2.1, 2.9])))[0] == "pass"
    status, reason = verdict(ref, summary(r1_rows([1.0, None])))
    assert status == "fail" and "not finite" in reason
    status, reason = verdict(ref, summary(r1_rows([0.0, 1.0])))
    assert status == "fail" and "are 0" in reason
    status, reason = verdict(ref, summary(r1_rows([1e-5, 1e-6])))
    assert status == "fail" and "flushed" in reason
    assert verdict(ref, summary(r1_rows([])))[0] == "fail"
    assert verdict(None, summary(r1_rows([1.0])))[0] == "pass"  # finite and nonzero on its own
    assert verdict(None, summary(r1_rows([0.0])))[0] == "fail"
    # a reference that is itself zero cannot show a flush
    assert verdict(summary(r1_rows([0.0])), summary(r1_rows([1e-9])))[0] == "pass"
    assert verdict(summary(r1_rows([0.0])), summary(r1_rows([0.0])))[0] == "pass"


def test_r1_part_follows_the_fp16_run(gc_module):
    skipped = gc_module.skipped("skipped: needs CUDA")
    assert gc_module.r1_part({"training_fp16": skipped}, 1.0)["status"] == "skipped"
    assert gc_module.r1_part({}, 0.0)["status"] == "skipped"
    fp32 = {"status": "pass", "r1": gc_module.r1_summary(r1_rows([2.0]))}
    crashed = {"status": "fail", "reason": "TrainingError: x", "r1": gc_module.r1_summary([])}
    part = gc_module.r1_part({"training_fp32": fp32, "training_fp16": crashed}, 1.0)
    assert part["status"] == "fail" and "TrainingError" in part["reason"]
    fp16 = {"status": "pass", "r1": gc_module.r1_summary(r1_rows([2.2]))}
    part = gc_module.r1_part({"training_fp32": fp32, "training_fp16": fp16}, 1.0)
    assert part["status"] == "pass"
    assert part["first_step_relative_difference"] == pytest.approx(0.1)


def test_nonfinite_losses_and_throughput(gc_module):
    rows = [
        {"step": 1, "loss_G": 1.0, "loss_D": None, "images_per_s": 10.0, "grad_norm_G": None},
        {"step": 2, "loss_G": 1.0, "w_recon": float("inf"), "images_per_s": 30.0},
        {"step": 3, "loss_G": 0.5, "images_per_s": 20.0},
    ]
    # a non-finite gradient norm is the fp16 scaler's business, not a loss
    assert gc_module.nonfinite_losses(rows) == ["step 1: loss_D", "step 2: w_recon"]
    assert gc_module.logged_throughput(rows, 1) == 25.0
    assert gc_module.logged_throughput(rows, 5) == 20.0  # fewer rows than the warm-up: all


def test_exit_status_counts_failures_only(gc_module):
    ok, skip = {"status": "pass"}, {"status": "skipped", "reason": "x"}
    assert gc_module.exit_status({"a": ok, "b": skip}) == 0
    assert gc_module.exit_status({"a": ok, "b": {"status": "fail", "reason": "y"}}) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["--steps", "0"],
        ["--warmup", "-1"],
        ["--time-limit", "0"],
        ["--r1-weight", "-1"],
        ["--amp", "fp8"],
        ["--config", "no/such.yaml"],
        ["--device", "tpu"],
    ],
)
def test_bad_arguments_exit_2(gc_module, argv):
    with pytest.raises(SystemExit) as info:
        gc_module.parse_args(["--device", "cpu", *argv])
    assert info.value.code == 2


def test_a_bad_override_exits_2_before_running(gc_module, capsys):
    with pytest.raises(SystemExit) as info:
        gc_module.parse_args(["--device", "cpu", "--dry-run", "--set", "model.G.no_such_key=1"])
    assert info.value.code == 2
    assert "no_such_key" in capsys.readouterr().err
