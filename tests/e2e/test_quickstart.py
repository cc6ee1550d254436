"""The README's first command, run as a user runs it: export → validate → inspect → serve → one request."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_readme_starts_with_the_two_setup_commands() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks[0].strip() == "bash scripts/quickstart.sh"
    assert blocks[1].strip() == "bash scripts/test.sh"
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("exec bash scripts/test.sh")


@pytest.mark.slow
def test_quickstart_runs_end_to_end(tmp_path: Path) -> None:
    env = dict(os.environ, TORCHPORT_VENV=sys.prefix, QUICKSTART_OUT=str(tmp_path / "out"))
    proc = subprocess.run(
        ["bash", "scripts/quickstart.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "validate" in out and "passed" in out
    assert "  image:float32[batch,3,32,32]" in out  # inspect
    assert "request id quickstart-1" in out
    assert "OK: served result equals eager PyTorch" in out
    assert (tmp_path / "out" / "cnn" / "torchport.json").is_file()
    wheel = tmp_path / "out" / "dist" / "cnn-1-py3-none-any.whl"
    assert wheel.is_file() and f"model wheel:   {wheel}" in out
    if shutil.which("podman") or shutil.which("docker"):
        assert "image:         localhost/torchport-quickstart-cnn:1" in out
        assert (tmp_path / "out" / "image" / "Containerfile").is_file()
