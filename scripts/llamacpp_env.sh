#!/usr/bin/env bash
# Create (once) and cache the llama.cpp baseline of benchmarks/bench_quant.py: a separate venv with
# llama-cpp-python built from its PyPI sdist (compiled here, -march=native, CPU only), plus the
# unpacked sdist, whose vendor/llama.cpp holds llama.cpp's own HF -> GGUF converter
# (convert_hf_to_gguf.py) and the gguf-py package it imports.
#
#   bash scripts/llamacpp_env.sh            # prints the venv and converter paths when ready
#
# PYTHON (default python3) must be the interpreter that runs the benchmark (the project's, with
# torch and transformers): the converter's sentencepiece is installed for its version. The
# llama.cpp venv is made with it too.
#
# Location: ${LLAMA_CODEGEN_CACHE:-$HOME/.cache/llama-codegen}/llamacpp-venv, .../llamacpp-src and
# .../llamacpp-convert-deps (sentencepiece, which the converter imports even for a tokenizer.json).
# A finished venv carries a stamp file; a run that finds it does nothing, a run that finds a venv
# without it (an interrupted build) starts over. Only the benchmark uses this: no test needs it.
#
# Why a separate venv: the compiled extension is a benchmark baseline, not a project dependency,
# and building it must not touch the project's environment. The converter runs under the
# benchmark's own Python instead (it imports torch and transformers, which that one has), with
# llamacpp-convert-deps on its PYTHONPATH for the one module that Python lacks.
# Cost, measured here on 2026-11-30: 1095 s on 2 cores shared with other work (load average ~9)
# and a 160 MB venv; the final line prints the time.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="0.3.36"
CACHE="${LLAMA_CODEGEN_CACHE:-$HOME/.cache/llama-codegen}"
VENV="$CACHE/llamacpp-venv"
SRC="$CACHE/llamacpp-src"
SDIST_DIR="$SRC/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
CONVERT_DEPS="$CACHE/llamacpp-convert-deps"
STAMP="$VENV/.complete-llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION"
PYTHON="${PYTHON:-python3}"

ready() {
    echo "llama.cpp venv ready: $VENV"
    echo "converter: $SDIST_DIR/vendor/llama.cpp/convert_hf_to_gguf.py"
}

if [[ -f "$STAMP" ]] && "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null \
    && [[ -f "$SDIST_DIR/vendor/llama.cpp/convert_hf_to_gguf.py" ]] \
    && [[ -d "$CONVERT_DEPS/sentencepiece" ]]; then
    ready
    exit 0
fi

started=$SECONDS
mkdir -p "$SRC"
if [[ ! -f "$SRC/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" ]]; then
    echo "downloading the llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION sdist"
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
        -d "$SRC" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
fi
if [[ ! -f "$SDIST_DIR/vendor/llama.cpp/convert_hf_to_gguf.py" ]]; then
    tar -xzf "$SRC/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" -C "$SRC"
fi

if [[ ! -d "$CONVERT_DEPS/sentencepiece" ]]; then
    echo "installing the converter's sentencepiece into $CONVERT_DEPS"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --target "$CONVERT_DEPS" sentencepiece
fi
if [[ -f "$STAMP" ]] && "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    ready
    exit 0
fi

echo "creating $VENV with $PYTHON and compiling llama.cpp (several minutes on 2 cores)"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
# LLAVA_BUILD=OFF: the multimodal library is not benchmarked and doubles the compile time.
# GGML_NATIVE=ON: llama.cpp tuned for this CPU, as its users build it.
CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=ON -DGGML_CUDA=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
    "$SDIST_DIR" "gguf" "numpy"
"$VENV/bin/python" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)"
touch "$STAMP"
ready
echo "built in $((SECONDS - started)) s"
