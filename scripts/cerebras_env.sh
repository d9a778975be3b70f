#!/usr/bin/env bash
# Create (once) and cache the separate environment that the Cerebras tests run in:
# cerebras-pytorch==2.10.0, which pins torch==2.4.0 and numpy==1.25.0, so it cannot share the
# project's main environment (torch 2.13).
#
#   bash scripts/cerebras_env.sh        # prints the venv path when it is ready
#
# Location: ${LLAMA_CODEGEN_CACHE:-$HOME/.cache/llama-codegen}/cerebras-venv. A finished venv
# carries a stamp file; a run that finds it does nothing, a run that finds a venv without it
# (an interrupted install) starts over. Interpreter: $PYTHON, else python3 (3.8 - 3.11).
set -euo pipefail

CEREBRAS_PYTORCH_VERSION="2.10.0"
CACHE="${LLAMA_CODEGEN_CACHE:-$HOME/.cache/llama-codegen}"
VENV="$CACHE/cerebras-venv"
STAMP="$VENV/.complete-cerebras-pytorch-$CEREBRAS_PYTORCH_VERSION"
PYTHON="${PYTHON:-python3}"
# torch 2.4.0 links the other CUDA wheels at import, so only these three can go (measured).
DROPPABLE=(triton nvidia-cusolver-cu12 nvidia-cuda-nvrtc-cu12)

if [[ -f "$STAMP" ]] && "$VENV/bin/python" -c "import cerebras.pytorch" 2>/dev/null; then
    echo "cerebras venv ready: $VENV"
    exit 0
fi

command -v "$PYTHON" >/dev/null || { echo "error: $PYTHON not found (set PYTHON)" >&2; exit 1; }
started=$SECONDS
echo "creating $VENV (cerebras-pytorch==$CEREBRAS_PYTORCH_VERSION; 2-3 minutes, ~5 GB)"
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
