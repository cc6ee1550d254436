"""`torchport optimize` (ONNX passes, variants, their validation against fp32) in a fresh
virtualenv without torch: `pip install "torchport[cpu,serve]" onnxscript onnx-ir`."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.runtimes.conftest import make_add_package
from tests.torchless_venv import torchless_venv
from torchport.runtimes import ModelPackage


@pytest.mark.slow
def test_optimize_in_a_virtualenv_without_torch(tmp_path):
    bin_dir = torchless_venv(
        tmp_path / "venv", ["numpy", "onnx", "onnxruntime", "typer", "rich", "onnxscript", "onnx-ir"]
    )
    py = bin_dir / "python"

    make_add_package(tmp_path / "add")
    proc = subprocess.run(
        [
            str(bin_dir / "torchport"),
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
