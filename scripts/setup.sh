#!/usr/bin/env bash
# Set up everything torchport needs on a fresh Debian machine, idempotently:
#   system packages (podman, runc, catatonit: container builds and `podman kube play`; debootstrap: the
#   local base image; wrk: serving benchmark), /etc/containers/containers.conf for podman on this machine,
#   a virtualenv at $TORCHPORT_VENV (default .venv) with torchport[dev] installed editable,
#   torch pinned by constraints.txt (the CPU wheel on this machine's disk).
# Usage: bash scripts/setup.sh        (then: . .venv/bin/activate)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TORCHPORT_VENV:-.venv}
PYTHON=${PYTHON:-python3}

need_apt=()
for cmd in podman runc wrk debootstrap; do
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$cmd")
done
[ -x /usr/bin/catatonit ] || [ -x /usr/libexec/podman/catatonit ] || need_apt+=(catatonit)
if [ ${#need_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "==> installing system packages: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "==> warning: missing ${need_apt[*]} and cannot apt-get install (not root?); container and wrk features will be unavailable" >&2
  fi
fi
# podman inside this (container) machine: no ulimit changes, host network, runc
if [ "$(id -u)" = 0 ] && command -v podman >/dev/null 2>&1 && ! cmp -s scripts/containers.conf /etc/containers/containers.conf; then
  echo "==> installing /etc/containers/containers.conf"
  mkdir -p /etc/containers
  cp scripts/containers.conf /etc/containers/containers.conf
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.torchport-installed"
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "==> installing torchport[dev] into $VENV (torch pinned by constraints.txt)"
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v -i warning || true
  "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[dev]" 2>&1 | grep -v -i 'warning' || true
  "$VENV/bin/python" -c "import torch, onnxruntime, onnxscript, torchport.cli" # fail loudly if the install is broken
  echo "$want" > "$stamp"
fi
