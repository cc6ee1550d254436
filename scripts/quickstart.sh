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

echo; echo "==> torchport package (the model as a pip-installable wheel, no torch needed to use it)"
torchport package "$PKG" -o "$OUT/dist" --force
WHEEL=$(ls "$OUT"/dist/cnn-*-py3-none-any.whl)

IMAGE=${QUICKSTART_IMAGE:-localhost/torchport-quickstart-cnn:1}
BUILT_IMAGE=""
if command -v podman >/dev/null 2>&1 || command -v docker >/dev/null 2>&1; then
  echo; echo "==> torchport deploy container (offline build context, then the image)"
  BASE=${QUICKSTART_BASE_IMAGE:-}
  if [ -z "$BASE" ] && command -v podman >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    bash scripts/base_image.sh   # a Debian bookworm base from Debian's packages: no image registry needed
    BASE=localhost/torchport-base:bookworm
  fi
  BASE_ARGS=()
  if [ -n "$BASE" ]; then BASE_ARGS=(--base-image "$BASE"); fi
  torchport deploy container "$PKG" -o "$OUT/image" --force "${BASE_ARGS[@]}" --build --tag "$IMAGE"
  BUILT_IMAGE=$IMAGE
fi

echo
echo "==> done"
echo "model package: $PKG"
echo "model wheel:   $WHEEL      (pip install \"$WHEEL[cpu]\"; python -c 'import cnn; print(cnn.load().signature)')"
if [ -n "$BUILT_IMAGE" ]; then
  echo "image:         $BUILT_IMAGE (context $OUT/image; run: podman run --rm -p 8000:8000 $BUILT_IMAGE)"
else
  echo "image:         not built (neither podman nor docker is installed); the build context: torchport deploy container $PKG -o $OUT/image"
fi
