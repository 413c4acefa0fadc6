#!/usr/bin/env bash
# Set everything up and run the main job on the embedded default: build the CT-derived
# bone-suppression benchmark (600 pairs, 256x256, misaligned targets) on the CPU, check it and
# print the identity baseline of its test split.   bash scripts/demo.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(bash scripts/setup.sh | tail -n 1)
OUT=${1:-runs/benchmark}
if [ -f "$OUT/benchmark.json" ]; then
  echo "demo: $OUT already holds a benchmark; reusing it (delete it to rebuild)"
else
  "$VENV/bin/medi2i" data drr --out "$OUT"
fi
"$VENV/bin/medi2i" data check "$OUT" --split test --json "$OUT/check_test.json"
echo "demo: open $OUT/preview.png to see input | target | aligned | lung mask"
