#!/usr/bin/env bash
# The peer servers benchmarks/serve.py's "peers" section compares torchport with, each in its own
# virtualenv beside .venv (their dependencies clash with torchport's and with each other's):
#   .venv-pytriton  Triton Inference Server as PyTriton bundles it (tritonserver + Python backend)
#   .venv-kserve    KServe's Python ModelServer
#   .venv-mlserver  Seldon's MLServer
# Each gets the ONNX Runtime version torchport's .venv has, so every server runs the same runtime.
# Usage: bash scripts/bench_peers.sh [pytriton kserve mlserver]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TORCHPORT_VENV:-.venv}
PYTHON=${PYTHON:-$("$VENV/bin/python" -c 'import sys; print(sys._base_executable)')}
ORT=$("$VENV/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)')
declare -A PACKAGE=([pytriton]="nvidia-pytriton==0.7.0" [kserve]="kserve==0.21.0" [mlserver]="mlserver==1.7.1")
for peer in "${@:-pytriton kserve mlserver}"; do
  for p in $peer; do
    echo "==> .venv-$p: ${PACKAGE[$p]} onnxruntime==$ORT"
    "$PYTHON" -m venv ".venv-$p"
    ".venv-$p/bin/pip" install -q "${PACKAGE[$p]}" "onnxruntime==$ORT"
  done
done
