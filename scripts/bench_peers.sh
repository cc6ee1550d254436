#!/usr/bin/env bash
# The peer servers benchmarks/serve.py's "peers" section compares torchport with, each in its own
# virtualenv beside .venv (their dependencies clash with torchport's and with each other's):
#   .venv-pytriton  Triton Inference Server as PyTriton bundles it (tritonserver + Python backend)
#   .venv-kserve    KServe's Python ModelServer
#   .venv-mlserver  Seldon's MLServer
#   .venv-optimum   Hugging Face Optimum's ONNX Runtime models (benchmarks/seq2seq.py's ORTModelForSpeechSeq2Seq /
#                   ORTModelForSeq2SeqLM rows): optimum-onnx 0.1 needs transformers < 4.58, so it gets its own
#                   transformers beside the torch 2.13 CPU wheel torchport uses (constraints.txt pins it)
# Each gets the ONNX Runtime version torchport's .venv has, so every server runs the same runtime.
# Usage: bash scripts/bench_peers.sh [pytriton kserve mlserver optimum]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TORCHPORT_VENV:-.venv}
PYTHON=${PYTHON:-$("$VENV/bin/python" -c 'import sys; print(sys._base_executable)')}
ORT=$("$VENV/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)')
declare -A PACKAGE=([pytriton]="nvidia-pytriton==0.7.0" [kserve]="kserve==0.21.0" [mlserver]="mlserver==1.7.1"
  [optimum]="optimum-onnx==0.1.0 optimum==2.1.0 transformers==4.57.6 torch==2.13.0 onnx")
for peer in "${@:-pytriton kserve mlserver optimum}"; do
  for p in $peer; do
    echo "==> .venv-$p: ${PACKAGE[$p]} onnxruntime==$ORT"
    "$PYTHON" -m venv ".venv-$p"
    # shellcheck disable=SC2086  # a peer may name several packages
    ".venv-$p/bin/pip" install -q -c constraints.txt ${PACKAGE[$p]} "onnxruntime==$ORT"
  done
done
