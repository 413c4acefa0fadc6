#!/usr/bin/env bash
# Set everything up and run the main job on the embedded default, on the CPU:
#   1. build the CT-derived bone-suppression benchmark (600 pairs, 256x256, misaligned targets)
#      into runs/benchmark (reused when it is already there),
#   2. check it and print the identity baseline of its test split,
#   3. train G+R+D with configs/demo.yaml into runs/demo-<time> and, beside it, the G-only
#      baseline (same seed and budget) into runs/demo-<time>-G-only, then print both test-split
#      results (best EMA weights) beside the identity baseline.
# Usage: bash scripts/demo.sh [key=value config overrides ...]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(bash scripts/setup.sh | tail -n 1)
BENCH=runs/benchmark
if [ -f "$BENCH/benchmark.json" ] && ! grep -q '"incomplete"' "$BENCH/benchmark.json"; then
  echo "demo: reusing the benchmark in $BENCH (delete it to rebuild)"
else
  "$VENV/bin/medi2i" data drr --out "$BENCH" --overwrite
fi
"$VENV/bin/medi2i" data check "$BENCH" --split test --json "$BENCH/check_test.json"
echo "demo: the benchmark preview is $BENCH/preview.png (input | target | aligned | lung mask)"
STAMP=$(date +%Y%m%d-%H%M%S)
RUN=runs/demo-$STAMP
BASE=runs/demo-$STAMP-G-only
# The G-only baseline (same seed and budget, R and D off) trains beside the demo: on 2 cores two
# one-thread runs finish in about the time of one two-thread run.
echo "demo: training G+R+D into $RUN and, beside it, the G-only baseline into $BASE"
OMP_NUM_THREADS=1 "$VENV/bin/medi2i" train --config configs/demo.yaml --out "$BASE" \
  model.R.enabled=false model.D.enabled=false logging.progress=false "$@" > "$BASE.log" 2>&1 &
BASE_PID=$!
trap 'kill "$BASE_PID" 2>/dev/null || true' EXIT   # never leave it running if the demo stops
OMP_NUM_THREADS=1 "$VENV/bin/medi2i" train --config configs/demo.yaml --out "$RUN" "$@"
if ! wait "$BASE_PID"; then
  echo "demo: the G-only baseline failed; see $BASE.log" >&2
  exit 1
fi
"$VENV/bin/python" scripts/demo_summary.py "G+R+D=$RUN" "G-only=$BASE"
echo "demo: run directories $RUN and $BASE (test_metrics.json, samples/, tensorboard/: tensorboard --logdir runs)"
