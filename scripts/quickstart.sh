#!/usr/bin/env bash
# torchport's main job on the built-in example CNN, as a user runs it:
#   export (capture → ONNX, validated against eager PyTorch) → inspect the package
#   → serve it over the Open Inference Protocol → one real request with tritonclient.
# Sets up everything first (scripts/setup.sh). Output goes to out/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${TORCHPORT_VENV:-.venv}
PATH="$(cd "$VENV/bin" && pwd):$PATH"
OUT=${QUICKSTART_OUT:-out/quickstart}
PKG="$OUT/cnn"
mkdir -p "$OUT"

echo; echo "==> torchport export (capture, ONNX, parity gate)"
torchport export torchport.exporters.examples.cnn:make_model -o "$PKG" --force

echo; echo "==> torchport inspect"
torchport inspect "$PKG"

PORT=${PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
echo; echo "==> torchport serve on 127.0.0.1:$PORT"
torchport serve "$PKG" --port "$PORT" --no-access-log > "$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT

echo; echo "==> one request with tritonclient (Open Inference Protocol v2)"
python scripts/quickstart_request.py --url "127.0.0.1:$PORT" --package "$PKG"
