"""Serving image size: what torchport's serving layer adds on top of the base image, for a small model.

Exports the example CNN (torchport export), writes its container build context (torchport deploy
container), builds it with podman on the local Debian bookworm base (scripts/base_image.sh: no registry
is reachable here), and prints one table: the base image, the serving image, what the serving layer adds
(target: <= 150 MB decimal for a small model), the model files, and the largest installed packages.
Sizes are podman's (uncompressed layers, decimal MB), measured in this run.

    python benchmarks/image_size.py                    # ~1 minute with a warm pip cache
    python benchmarks/image_size.py --base-image python:3.11-slim-bookworm   # where a registry is reachable
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from torchport.runtimes._table import format_table  # noqa: E402

BASE = "localhost/torchport-base:bookworm"
TARGET_MB = 150.0
TAG = "localhost/torchport-bench-cnn:size"


def podman(*args: str) -> str:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"podman {' '.join(args)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout


def image_bytes(tag: str) -> int:
    return int(json.loads(podman("image", "inspect", tag))[0]["Size"])


def mb(n: float) -> float:
    return round(n / 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-image", default=BASE, help=f"base image (default {BASE}, built if missing)")
    parser.add_argument("--top", type=int, default=6, help="largest installed packages to list")
    args = parser.parse_args()

    from torchport.deploy import build_image, write_container_context
    from torchport.exporters import export_model

    if args.base_image == BASE:
        subprocess.run(["bash", str(REPO_ROOT / "scripts" / "base_image.sh"), BASE], check=True)
    with tempfile.TemporaryDirectory(prefix="torchport-image-size-") as tmp:
        pkg_dir = Path(tmp) / "cnn"
        export_model("torchport.exporters.examples.cnn:make_model", pkg_dir, quiet=True)
        model_bytes = sum(p.stat().st_size for p in pkg_dir.iterdir() if p.is_file())
        ctx = write_container_context(pkg_dir, Path(tmp) / "ctx", base_image=args.base_image)
        wheel_bytes = sum(p.stat().st_size for p in (ctx.path / "wheels").glob("*.whl"))
        build_image(ctx.path, TAG, base_image=args.base_image, network="none")
        try:
            base, image = image_bytes(args.base_image), image_bytes(TAG)
            du = podman(
                "run", "--rm", "--entrypoint", "sh", TAG, "-c",
                "cd /opt/torchport/lib/python3*/site-packages && du -sk * | sort -rn | head -n " + str(args.top),
            )  # fmt: skip
            has_torch = subprocess.run(
                ["podman", "run", "--rm", "--entrypoint", "python3", TAG, "-c", "import torch"], capture_output=True
            ).returncode == 0  # fmt: skip
        finally:
            subprocess.run(["podman", "rmi", "-f", TAG], capture_output=True)
    added = image - base
    rows = [
        ["base image", args.base_image, mb(base), ""],
        ["serving image", "example CNN", mb(image), ""],
        [
            "added by the serving layer",
            "venv + model",
            mb(added),
            f"{added / 1e6 / TARGET_MB:.2f}x of target",
        ],
        [
            "target for the added layer",
            "<= 150 MB",
            TARGET_MB,
            "met" if added / 1e6 <= TARGET_MB else "MISSED",
        ],
        ["model package files", "cnn", round(model_bytes / 1e6, 3), ""],
        ["wheelhouse in the context", f"{len(ctx.wheels)} wheels", mb(wheel_bytes), ""],
    ]
    for line in du.strip().splitlines():
        kib, name = line.split(maxsplit=1)
        rows.append([f"  installed: {name}", "", mb(int(kib) * 1024), ""])
    rows.append(["torch in the image", "", "no" if not has_torch else "YES", ""])
    print(
        format_table(["what", "detail", "MB (decimal)", "ratio"], rows, title="serving image size (podman)")
    )


if __name__ == "__main__":
    main()
