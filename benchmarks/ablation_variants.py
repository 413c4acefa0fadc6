"""One table of training options measured against a base arm, from bench_ablation results.

Each option is measured by running ``bench_ablation.py`` for one arm with the option set
(``--arms G+R+D --set KEY=VALUE --out DIR``), the same seeds and budget as the base results.
This script pairs every option's runs with the base arm's runs by seed and reports, per
option, the mean of each metric and the paired difference to the base with its 95% t interval
over seeds (relative, in percent, for HFEN and GMSD), the training seconds per step, and a
verdict: ``better``/``worse`` only where the lung-PSNR or lung-HFEN interval excludes zero,
else ``no difference``.

Usage::

    python benchmarks/ablation_variants.py BASE_DIR NAME=DIR [NAME=DIR ...] [--arm G+R+D]
        [--out benchmarks/results/variants]

``BASE_DIR`` and each ``DIR`` hold an ``ablation.json`` written by ``bench_ablation.py``.
Writes ``variants.json`` and ``variants.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from _ablation_analysis import ok_runs, paired_difference
from _ablation_report import diff_cell
from _common import write_report
from _stats import ci_excludes_zero, t_interval

#: Columns of the table: metric, label, higher is better.
COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("psnr_mask", "lung PSNR dB", True),
    ("hfen_mask", "lung HFEN", False),
    ("gmsd_mask", "lung GMSD", False),
    ("sharpness_mask", "lung sharpness", True),
    ("bsr_lit", "BSR (lit.)", True),
)


def _load(folder: Path, arm: str) -> tuple[dict[int, dict], dict[str, Any]]:
    path = folder / "ablation.json"
    if not path.is_file():
        raise SystemExit(f"ablation_variants: {path} not found (run bench_ablation.py first)")
    report = json.loads(path.read_text())
    runs = ok_runs(report.get("runs", [])).get(arm, {})
    if not runs:
        raise SystemExit(f"ablation_variants: {path} has no successful {arm} run")
    return runs, report


def _user_overrides(report: dict[str, Any]) -> list[str]:
    """The ``--set`` overrides a bench_ablation report was run with."""
    overrides = report.get("overrides") or {}
    return list(overrides.get("user", [])) if isinstance(overrides, dict) else []


def verdict(differences: dict[str, dict[str, Any]]) -> str:
    """``better``/``worse`` where lung PSNR or lung HFEN moves with an interval off zero.

    HFEN is judged on the interval the table shows: the per-seed relative change when it is
    there (the interval of absolute differences can lie off zero while the relative one does
    not, and a verdict must not contradict its own row).
    """
    psnr = differences["psnr_mask"]
    hfen = differences["hfen_mask"].get("relative_pct") or differences["hfen_mask"]
    signs = set()
    if ci_excludes_zero(psnr):
        signs.add("better" if psnr["mean"] > 0 else "worse")
    if ci_excludes_zero(hfen):
        signs.add("better" if hfen["mean"] < 0 else "worse")
    if len(signs) == 2:
        return "mixed"
    return signs.pop() if signs else "no difference"


def compare(base: dict[int, dict], variant: dict[int, dict]) -> dict[str, Any]:
    """Means, paired differences (variant - base) and step time of one option."""
    runs = {"base": base, "variant": variant}
    row: dict[str, Any] = {"seeds": sorted(set(base) & set(variant)), "metrics": {}, "diff": {}}
    for metric, _, _ in COLUMNS:
        row["metrics"][metric] = t_interval([r["metrics"].get(metric) for r in variant.values()])
        row["diff"][metric] = paired_difference(runs, "variant", "base", metric)
    row["seconds_per_step"] = t_interval(
        [r["train"].get("seconds_per_step") for r in variant.values()]
    )["mean"]
    row["verdict"] = verdict(row["diff"])
    return row


def markdown(report: dict[str, Any]) -> str:
    header = ["option", "seeds"]
    for _, label, _ in COLUMNS:
        header += [label, f"Δ {label.split(' dB')[0]}"]
    header += ["s/step", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in report["options"].items():
        cells = [f"{name}", str(len(row["seeds"]))]
        for metric, _, _ in COLUMNS:
            mean = row["metrics"][metric]["mean"]
            cells.append("-" if mean is None else f"{mean:.4g}")
            diff = row["diff"][metric]
            if name == report["base_name"]:
                cells.append("")
            elif metric in ("hfen_mask", "gmsd_mask"):
                cells.append(diff_cell(diff.get("relative_pct"), 1, kind="f", suffix="%"))
            else:
                cells.append(diff_cell(diff, 2 if metric == "psnr_mask" else 3, kind="f"))
        sps = row["seconds_per_step"]
        cells.append("-" if sps is None else f"{sps:.2f}")
        cells.append("" if name == report["base_name"] else row["verdict"])
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "",
        f"Arm {report['arm']}; differences are option − base paired by seed, mean [95% t "
        "interval over seeds]; HFEN and GMSD relative (%). s/step: training seconds per step "
        "(runs trained two at a time on the same CPU).",
    ]
    for name, overrides in report["overrides"].items():
        notes.append(f"- {name}: {' '.join(overrides) or '(the base config)'}")
    return "\n".join(lines + notes) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("base", type=Path, help="bench_ablation output folder of the base")
    parser.add_argument("options", nargs="+", help="NAME=DIR of each option's results")
    parser.add_argument("--arm", default="G+R+D", help="the arm compared")
    parser.add_argument("--base-name", default="base", help="the base's name in the table")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/variants"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    base_runs, base_report = _load(args.base, args.arm)
    folders = {args.base_name: args.base}
    for item in args.options:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise SystemExit(f"ablation_variants: expected NAME=DIR, got {item!r}")
        folders[name] = Path(folder)
    report: dict[str, Any] = {
        "benchmark": "ablation_variants",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/ablation_variants.py", *sys.argv[1:]]),
        "arm": args.arm,
        "base_name": args.base_name,
        "options": {},
        "overrides": {},
    }
    base_overrides = _user_overrides(base_report)
    for name, folder in folders.items():
        runs, rep = (base_runs, base_report) if name == args.base_name else _load(folder, args.arm)
        report["options"][name] = compare(base_runs, runs)
        report["overrides"][name] = [o for o in _user_overrides(rep) if o not in base_overrides]
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(args.out / "variants.json", report)
    text = markdown(report)
    (args.out / "variants.md").write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
