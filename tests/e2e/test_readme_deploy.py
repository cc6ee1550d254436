"""The README's "From a PyTorch model to a container and Kubernetes" commands, run as a user copies them.

Two changes only, for this machine: the image builds on the local Debian base (no registry is reachable
here, `--base-image`), and the lines that need a cluster or publish port 8000 (`podman run`, `curl`,
`kubectl`) are left out; the container itself is run and queried in tests/deploy/test_container.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## From a PyTorch model to a container and Kubernetes"


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text[text.index(SECTION) :], re.S).group(1)
    return [re.sub(r"\s+#\s.*$", "", line).strip() for line in block.strip().splitlines()]


@pytest.mark.slow
def test_readme_deploy_commands(tmp_path, base_image):
    commands = readme_commands()
    assert commands[0].startswith("torchport export") and commands[-1] == "kubectl apply -f k8s/"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    tag = "cnn:1.0.0"
    try:
        for command in commands:
            if command.split()[0] in ("podman", "until", "kubectl"):
                continue
            if "--build" in command:
                if not shutil.which("podman"):
                    pytest.skip("podman is not installed")
                command += f" --base-image {base_image}"
            proc = subprocess.run(
                command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
            )
            assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        wheel = tmp_path / "dist" / "cnn-1.0.0-py3-none-any.whl"
        assert "cnn/models/cnn/model.onnx" in zipfile.ZipFile(wheel).namelist()
        assert subprocess.run(["podman", "image", "exists", tag]).returncode == 0
        kinds = {yaml.safe_load(p.read_text())["kind"] for p in (tmp_path / "k8s").glob("*.yaml")}
        assert kinds == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret"}
    finally:
        subprocess.run(["podman", "rmi", "-f", tag], capture_output=True)
