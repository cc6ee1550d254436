#!/usr/bin/env bash
# Build the local Debian bookworm base image (python3 + venv) that container tests pass as
# `torchport deploy container --base-image`, once per machine: no image registry is reachable here,
# so the root comes from Debian packages (debootstrap) and is `podman import`ed.
# Idempotent: does nothing when the image exists. Usage: bash scripts/base_image.sh [TAG]
set -euo pipefail
TAG=${1:-${TORCHPORT_BASE_IMAGE:-localhost/torchport-base:bookworm}}
if podman image exists "$TAG"; then
  echo "base image $TAG exists"
  exit 0
fi
for cmd in podman debootstrap; do
  command -v "$cmd" >/dev/null 2>&1 || { echo "error: $cmd is missing (run scripts/setup.sh as root)" >&2; exit 1; }
done
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
work=$(mktemp -d /var/tmp/torchport-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "==> debootstrap bookworm (python3, python3-venv) into $work/root"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$work/root" "$MIRROR" \
  > "$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
chroot "$work/root" apt-get clean
rm -rf "$work/root"/var/lib/apt/lists/* "$work/root"/var/cache/apt/*.bin \
  "$work/root"/usr/share/doc/* "$work/root"/usr/share/man/* "$work/root"/usr/share/locale/*
echo "==> podman import as $TAG"
tar -C "$work/root" -c . | podman import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' - "$TAG" >/dev/null
podman image exists "$TAG"
echo "base image $TAG built"
