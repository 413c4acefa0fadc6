"""Print the demo's test-split results side by side: each run's best EMA weights and the
identity baseline (the input taken as the prediction), from each run's test_metrics.json.

Usage: python scripts/demo_summary.py LABEL=RUN_DIR [LABEL=RUN_DIR ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = (
    ("psnr_mask", "lung PSNR (dB)", "{:.2f}"),
    ("ssim_mask", "lung SSIM", "{:.4f}"),
    ("hfen_mask", "lung HFEN (lower is better)", "{:.3f}"),
    ("gmsd_mask", "lung GMSD (lower is better)", "{:.4f}"),
    ("psnr", "PSNR (dB)", "{:.2f}"),
)


def main(argv: list[str]) -> int:
    if not argv or any("=" not in a for a in argv):
        print(__doc__, file=sys.stderr)
        return 2
    columns, identity = [], None
    for arg in argv:
        label, run = arg.split("=", 1)
        path = Path(run) / "test_metrics.json"
        if not path.is_file():
            print(f"demo_summary: {path} not found (did the run finish?)", file=sys.stderr)
            return 1
        report = json.loads(path.read_text())
        columns.append((label, report["model"]))
        identity = identity or report.get("identity")
    if identity:
        columns.append(("identity", identity))
    width = max(len(name) for _, name, _ in ROWS) + 2
    print("test split, best EMA weights, against the aligned truth:")
    print(" " * width + "".join(f"{label:>12s}" for label, _ in columns))
    for key, name, fmt in ROWS:
        cells = "".join(
            f"{fmt.format(values[key]) if values.get(key) is not None else '-':>12s}"
            for _, values in columns
        )
        print(f"{name:<{width}s}{cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
