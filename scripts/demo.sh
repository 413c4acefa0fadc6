#!/usr/bin/env bash
# Set everything up and run the main job on the embedded default, on the CPU:
#   1. build the CT-derived bone-suppression benchmark (600 pairs, 256x256, misaligned targets)
#      into runs/benchmark (reused when it is already there),
#   2. check it and print the identity baseline of its test split,
#   3. train G+R+D with configs/demo.yaml (about 10 minutes on 2 cores) into runs/demo-<time>,
#      then evaluate the best EMA weights on the test split beside the identity baseline.
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
RUN=runs/demo-$(date +%Y%m%d-%H%M%S)
"$VENV/bin/medi2i" train --config configs/demo.yaml --out "$RUN" "$@"
echo "demo: run directory $RUN (test_metrics.json, samples/, tensorboard/: tensorboard --logdir $RUN)"
