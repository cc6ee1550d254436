"""The parity gate on real packages: passing, planted failures, samples, tolerances, records."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from tests.exporters._pkgutil import make_package
from tests.exporters.test_localize import swap_relu_for_sigmoid
from torchport.exporters import DEFAULT_TOLERANCES, ParityResult, Tolerance, optimize_package, validate
from torchport.exporters.examples import cnn
from torchport.runtimes import ModelPackage, TensorSpec, UsageError, ValidationError, update_package
from torchport.runtimes._parity import compare_output

CNN_SOURCE = "torchport.exporters.examples.cnn:make_model"


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(12, 24)
        self.head = nn.Linear(24, 7)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(features)))  # the planted Relu


def _classifier_package(tmp_path, name="clf"):
    torch.manual_seed(0)
    model = Classifier().eval()
    pkg = make_package(
        model, (torch.randn(3, 12),), tmp_path / name, dynamic={"features": {0: ("batch", 1, 32)}}
    )
    return model, pkg


@pytest.fixture(scope="module")
def cnn_pkg(tmp_path_factory):
    pkg = make_package(
        cnn.make_model(),
        cnn.example_inputs(),
        tmp_path_factory.mktemp("cnn") / "pkg",
        dynamic={"image": {0: ("batch", 1, 16)}},
    )
    optimize_package(pkg.path, level="all", fp16=True, int8="dynamic")
    return pkg.path


def test_cnn_package_passes_for_every_variant_and_is_recorded(cnn_pkg):
    result = validate(cnn_pkg, CNN_SOURCE, n=6)
    assert isinstance(result, ParityResult) and result
    assert set(result.variants) == {"fp32", "fp16", "int8"}
    assert result.cases[:2] == ["batch=1", "batch=16"] and len(result.cases) == 6
    fp32 = result.variants["fp32"].outputs[0]
    assert fp32.max_abs < 1e-4 and fp32.cosine > 0.99999 and fp32.mismatched == 0
    assert fp32.top1 == 1.0 and fp32.top5 is not None  # [batch, 10] logits: classifier metrics
    assert result.variants["int8"].tolerance == DEFAULT_TOLERANCES["int8"]
    text = str(result)
    assert "parity PASSED" in text and "fp16" in text and "cosine>=0.99" in text
    pkg = ModelPackage.load(cnn_pkg)
    assert pkg.manifest.validated and pkg.manifest.parity["passed"] and pkg.manifest.parity["cases"] == 6
    assert (
        pkg.manifest.variants["int8"].parity["passed"]
        and pkg.manifest.variants["fp32"].parity["max_abs"] < 1e-4
    )
    report = pkg.parity_report()
    assert report == json.loads((cnn_pkg / "parity.json").read_text()) and report["passed"]
    assert report["variants"]["fp32"]["outputs"][0]["top1"] == 1.0


def test_planted_divergence_fails_names_the_node_and_is_recorded(tmp_path):
    model, pkg = _classifier_package(tmp_path)
    with update_package(pkg) as w:  # a "pass" that breaks the graph: Relu -> Sigmoid
        bad, _ = swap_relu_for_sigmoid(onnx.load(str(w.path / "model.onnx")))
        onnx.save(bad, str(w.path / "model.onnx"))
        w.commit(pkg.manifest)
    result = validate(pkg.path, model, n=4)
    assert not result
    out = result.variants["fp32"].outputs[0]
    assert not out.passed and out.mismatched > 0 and "beyond atol=0.0001" in out.reasons[0]
    loc = result.localization
    assert loc and loc.op_type == "Sigmoid" and loc.fx_node == "relu"
    assert loc.source.endswith("test_validate.py:" + str(_line_of("# the planted Relu")))
    text = str(result)
    assert (
        "parity FAILED" in text and "FAIL:" in text and "first diverging node" in text and "Sigmoid" in text
    )
    m = ModelPackage.load(pkg.path).manifest
    assert m.validated is False and m.parity["passed"] is False
    report = json.loads((pkg.path / "parity.json").read_text())
    assert report["variants"]["fp32"]["localization"]["op_type"] == "Sigmoid"


def _line_of(marker: str) -> int:
    with open(__file__) as f:
        return next(i for i, line in enumerate(f, 1) if marker in line and "_line_of" not in line)


def test_user_samples_are_added_and_checked(tmp_path):
    model, pkg = _classifier_package(tmp_path)
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "s.npz", features=rng.standard_normal((3, 5, 12)).astype(np.float32))
    result = validate(pkg.path, model, n=2, samples=tmp_path / "s.npz", write=False)
    assert result and result.cases == ["batch=1", "batch=32", "sample 0", "sample 1", "sample 2"]
    assert not (pkg.path / "parity.json").exists()
    np.savez(tmp_path / "bad.npz", pixels=np.zeros((1, 12), np.float32))
    with pytest.raises(UsageError, match="lacks input\\(s\\) features; it has pixels"):
        validate(pkg.path, model, samples=tmp_path / "bad.npz")


def test_tight_user_tolerance_fails_int8_elementwise(cnn_pkg):
    result = validate(
        cnn_pkg, CNN_SOURCE, n=2, variants=["int8"], atol=1e-6, rtol=0.0, write=False, localize_failures=False
    )
    assert not result and result.variants["int8"].tolerance.atol == 1e-6
    assert "elements beyond atol=1e-06" in result.variants["int8"].outputs[0].reasons[0]


def test_wrong_model_and_unknown_variant_are_clear_errors(tmp_path, cnn_pkg):
    class TwoOutputs(nn.Module):
        def forward(self, image):
            return image.mean((1, 2, 3)), image.amax((1, 2, 3))

    with pytest.raises(
        ValidationError, match="eager model returns 2 tensors but the ONNX model has 1 outputs"
    ):
        validate(cnn_pkg, TwoOutputs(), n=1, write=False)
    with pytest.raises(UsageError, match="has no variant 'bf16'; available: fp32, fp16, int8"):
        validate(cnn_pkg, CNN_SOURCE, variants=["bf16"])


def test_compare_output_judges_logits_by_cosine_and_top1():
    spec = TensorSpec("logits", "float32", ["batch", 3])
    ref = [np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]], np.float32)]
    flipped = [np.array([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0]], np.float32)]
    tol = Tolerance(min_cosine=0.5, min_top1=0.9)
    ok = compare_output(spec, ref, ref, tol, logits=True)
    bad = compare_output(spec, flipped, ref, tol, logits=True)
    assert ok.passed and ok.top1 == 1.0 and ok.top5 is None
    assert not bad.passed and bad.top1 == 0.5 and bad.cosine > 0.5
    assert bad.reasons == ["top-1 agreement 0.500 < 0.9"]
    nan = compare_output(
        spec, [np.array([[np.nan, 0, 0], [0, 2, 1]], np.float32)], ref, Tolerance(atol=1, rtol=0), False
    )
    assert not nan.passed and "NaN/Inf in different places" in nan.reasons
    ints = compare_output(
        TensorSpec("ids", "int64", [2]),
        [np.array([1, 2])],
        [np.array([1, 3])],
        DEFAULT_TOLERANCES["fp32"],
        False,
    )
    assert not ints.passed and ints.reasons == ["1/2 integer elements differ"]
