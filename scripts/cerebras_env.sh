#!/usr/bin/env bash
# Create (once) and cache the separate environment that the Cerebras tests run in:
# cerebras-pytorch==2.10.0, which pins torch==2.4.0 and numpy==1.25.0, so it cannot share the
# project's main environment (torch 2.13).
#
#   bash scripts/cerebras_env.sh            # prints the venv path when it is ready
#   bash scripts/cerebras_env.sh --python   # prints the Python 3.11 it would use, changes nothing
#
# Location: ${LLAMA_CODEGEN_CACHE:-$HOME/.cache/llama-codegen}/cerebras-venv. A finished venv
# carries a stamp file; a run that finds it does nothing, a run that finds a venv without it
# (an interrupted install) starts over.
#
# Interpreter: cerebras-pytorch 2.10.0 has wheels for CPython 3.11 only (cp311 on PyPI, checked
# 2026-11-29), so a Python 3.11 is found by itself: $PYTHON if set, else `python3.11` on PATH,
# else `python3` when it is 3.11 (e.g. a pyenv shim). Without one it stops with one line.
# Cost, measured here on 2026-11-29 (du, and the venv's file times): about 2 minutes and 5.0 GB.
set -euo pipefail

CEREBRAS_PYTORCH_VERSION="2.10.0"
CACHE="${LLAMA_CODEGEN_CACHE:-$HOME/.cache/llama-codegen}"
VENV="$CACHE/cerebras-venv"
STAMP="$VENV/.complete-cerebras-pytorch-$CEREBRAS_PYTORCH_VERSION"
# torch 2.4.0 links the other CUDA wheels at import, so only these three can go (measured).
DROPPABLE=(triton nvidia-cusolver-cu12 nvidia-cuda-nvrtc-cu12)

is_python311() {
    "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' >/dev/null 2>&1
}

find_python311() {
    local candidate
    if [[ -n "${PYTHON:-}" ]]; then
        is_python311 "$PYTHON" && { echo "$PYTHON"; return; }
        echo "error: PYTHON=$PYTHON is not a working Python 3.11; cerebras-pytorch==$CEREBRAS_PYTORCH_VERSION has wheels for 3.11 only: set PYTHON=/path/to/python3.11" >&2
        return 2
    fi
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null && is_python311 "$candidate"; then
            echo "$candidate"
            return
        fi
    done
    echo "error: no Python 3.11 found (python3.11, python3); cerebras-pytorch==$CEREBRAS_PYTORCH_VERSION has wheels for 3.11 only: install one (e.g. pyenv install 3.11) and rerun with PYTHON=/path/to/python3.11" >&2
    return 2
}

if [[ "${1:-}" == "--python" ]]; then
    find_python311 || exit 2
    exit 0
fi

if [[ -f "$STAMP" ]] && "$VENV/bin/python" -c "import cerebras.pytorch" 2>/dev/null; then
    echo "cerebras venv ready: $VENV"
    exit 0
fi

PYTHON="$(find_python311)" || exit 2
started=$SECONDS
echo "creating $VENV with $PYTHON (cerebras-pytorch==$CEREBRAS_PYTORCH_VERSION; about 2 minutes, ~5 GB)"
rm -rf "$VENV"
mkdir -p "$CACHE"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
echo "installing cerebras-pytorch==$CEREBRAS_PYTORCH_VERSION"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "cerebras-pytorch==$CEREBRAS_PYTORCH_VERSION" safetensors
echo "removing CUDA wheels nothing loads: ${DROPPABLE[*]}"
"$VENV/bin/python" -m pip uninstall --quiet --yes "${DROPPABLE[@]}"
echo "checking the install"
"$VENV/bin/python" -c "import cerebras.pytorch, torch; assert torch.__version__.startswith('2.4.0'), torch.__version__"
touch "$STAMP"
echo "cerebras venv ready: $VENV ($((SECONDS - started)) s)"
