"""A fresh virtualenv with torchport installed (editable, no dependencies) and no torch, for the
tests that prove a path works where torch is absent (serving, optimizing)."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def torchless_venv(folder: Path, packages: list[str]) -> Path:
    """Create ``folder`` with ``packages`` and torchport but not torch; return its ``bin`` folder."""
    venv.EnvBuilder(with_pip=True, clear=True).create(folder)
    py = folder / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "-c", str(REPO_ROOT / "constraints.txt"), *packages], check=True, timeout=900)
    subprocess.run([*pip, "--no-deps", "-e", str(REPO_ROOT)], check=True, timeout=600)
    no_torch = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    return folder / "bin"
