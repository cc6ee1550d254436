"""`torchport optimize` (ONNX passes, variants, their validation against fp32) in a fresh
virtualenv without torch: `pip install "torchport[cpu,serve]" onnxscript onnx-ir`."""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

import pytest

from tests.runtimes.conftest import make_add_package
from torchport.runtimes import ModelPackage

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_optimize_in_a_virtualenv_without_torch(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    py = env_dir / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(
        [
            *pip,
            "-c",
            str(REPO_ROOT / "constraints.txt"),
            "numpy",
            "onnx",
            "onnxruntime",
            "typer",
            "rich",
            "onnxscript",
            "onnx-ir",
        ],
        check=True,
        timeout=900,
    )
    subprocess.run([*pip, "--no-deps", "-e", str(REPO_ROOT)], check=True, timeout=600)
    no_torch = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr

    make_add_package(tmp_path / "add")
    proc = subprocess.run(
        [
            str(env_dir / "bin" / "torchport"),
            "optimize",
            str(tmp_path / "add"),
            "--fp16",
            "--int8",
            "dynamic",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["parity"]["passed"] and set(report["parity"]["variants"]) >= {"fp16", "int8"}
    manifest = ModelPackage.load(tmp_path / "add").manifest
    assert set(manifest.variants) == {"fp32", "fp16", "int8"}
    assert (
        manifest.variants["int8"].parity["reference"] == "fp32" and manifest.variants["int8"].parity["passed"]
    )
    modules = subprocess.run(
        [
            str(py),
            "-c",
            "import sys, torchport.exporters; torchport.exporters.optimize_package; print('torch' in sys.modules)",
        ],
        capture_output=True,
        text=True,
    )
    assert modules.stdout.strip() == "False", modules.stderr
