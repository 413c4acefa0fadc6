#!/usr/bin/env bash
# Set everything up and run the test suite.    bash scripts/test.sh [pytest args]
# MEDI2I_PYTHON=3.10 runs it on Python 3.10 (cached venv outside the clone).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(bash scripts/setup.sh | tail -n 1)
set +e
# -m "": every test, the slow ones too (a plain `pytest` deselects them; see tests/conftest.py)
"$VENV/bin/python" -m pytest -m "" "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests" >&2
  exit 1
fi
exit "$status"
