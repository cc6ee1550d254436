"""export validates by default, refuses a package that fails, and takes the optimization options."""

from __future__ import annotations

import json

import pytest

from torchport.exporters._export import export_model
from torchport.runtimes import ModelPackage, UsageError, ValidationError

MLP = "torchport.exporters.examples.mlp:make_model"

NOISY_PY = """
import torch
from torch import nn


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x) + torch.rand_like(x[:, :3])  # eager and ONNX draw different numbers


def make_model():
    torch.manual_seed(0)
    return Noisy().eval()


def example_inputs():
    return (torch.randn(2, 4),)
"""


def test_export_validates_by_default_and_records_parity(tmp_path):
    result = export_model(MLP, tmp_path / "mlp", quiet=True)
    m = result.package.manifest
    assert m.validated and m.parity["passed"] and m.parity["cases"] >= 2
    assert m.variants["fp32"].parity["passed"] and m.passes == []
    report = json.loads((tmp_path / "mlp" / "parity.json").read_text())
    assert report["passed"] and report["variants"]["fp32"]["outputs"][0]["max_abs"] < 1e-4
    ModelPackage.load(tmp_path / "mlp")  # hashes (parity.json included) verify


def test_export_refuses_a_package_that_fails_parity(tmp_path):
    (tmp_path / "noisy.py").write_text(NOISY_PY)
    with pytest.raises(
        ValidationError, match=r"does not match eager PyTorch; no package was written"
    ) as info:
        export_model(f"{tmp_path / 'noisy.py'}:make_model", tmp_path / "out", quiet=True)
    assert "parity FAILED" in str(info.value) and "FAIL:" in str(info.value)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_no_validate_writes_an_unvalidated_package(tmp_path):
    (tmp_path / "noisy.py").write_text(NOISY_PY)
    result = export_model(f"{tmp_path / 'noisy.py'}:make_model", tmp_path / "out", quiet=True, validate=False)
    m = result.package.manifest
    assert m.validated is False and m.parity is None and m.extra["validation"] == "skipped"
    assert not (tmp_path / "out" / "parity.json").exists()


def test_export_with_optimization_options_writes_validated_variants(tmp_path):
    result = export_model(MLP, tmp_path / "mlp", quiet=True, level="all", fp16=True, int8="dynamic")
    m = result.package.manifest
    assert set(m.variants) == {"fp32", "fp16", "int8"} and m.validated
    assert all(v.parity["passed"] for v in m.variants.values())
    assert [r["name"] for r in m.passes] == [
        "optimize",
        "ort_fusions",
        "merge_matmuls",
        "ort_offline",
        "fp16",
        "ort_fusions",
        "int8_dynamic",
    ]
    assert (
        m.extra["optimization"]["level"] == "all"
        and m.extra["ort_offline"]["provider"] == "CPUExecutionProvider"
    )


def test_bad_optimization_options_fail_before_exporting(tmp_path):
    with pytest.raises(UsageError, match="unknown optimization level 'fast'"):
        export_model(MLP, tmp_path / "x", quiet=True, level="fast")
    with pytest.raises(UsageError, match="unknown pass 'fold'"):
        export_model(MLP, tmp_path / "x", quiet=True, disable=["fold"])
    assert not (tmp_path / "x").exists()
