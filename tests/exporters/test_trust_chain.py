"""The trust chain: eager PyTorch → model.onnx (validate) → fp16 / int8 variants (optimize, ONNX vs ONNX)."""

from __future__ import annotations

import json

import pytest

from tests.exporters._pkgutil import make_package
from torchport.exporters import optimize_package, validate
from torchport.exporters.examples import cnn
from torchport.runtimes import ModelPackage, Tolerance, inspect_package

CNN_SOURCE = "torchport.exporters.examples.cnn:make_model"


@pytest.fixture()
def validated_cnn(tmp_path):
    pkg = make_package(
        cnn.make_model(), cnn.example_inputs(), tmp_path / "cnn", dynamic={"image": {0: ("batch", 1, 8)}}
    )
    assert validate(pkg.path, CNN_SOURCE, n=4)
    return pkg.path


def test_optimize_validates_each_variant_against_the_validated_fp32_model(validated_cnn):
    result = optimize_package(validated_cnn, level="all", fp16=True, int8="dynamic", n=4)
    assert result and result.parity is not None and set(result.parity.variants) == {"fp32", "fp16", "int8"}
    m = ModelPackage.load(validated_cnn).manifest
    assert (
        m.validated
        and m.parity["passed"]
        and m.parity["variants"] == {"fp32": True, "fp16": True, "int8": True}
    )
    fp32 = m.variants["fp32"].parity
    assert fp32["reference"] == "eager" and fp32["passed"]  # the first link, kept
    assert fp32["optimized"]["reference"] == "fp32" and fp32["optimized"]["passed"]  # the rewritten graph
    for name in ("fp16", "int8"):
        link = m.variants[name].parity
        assert link["reference"] == "fp32" and link["passed"] and link["tolerance"]["min_cosine"] is not None
    report = json.loads((validated_cnn / "parity.json").read_text())
    assert report["passed"] and report["variants"]["fp32"]["reference"] == "eager"  # eager report kept
    chain = report["variants_vs_fp32"]
    assert chain["passed"] and chain["variants"]["int8"]["reference"] == "fp32"
    text = str(inspect_package(validated_cnn))
    assert "fp32: passed" in text and "vs eager PyTorch" in text
    assert "int8: passed" in text and "vs the validated fp32 model" in text
    assert "not validated" not in text
    assert "vs model.onnx (fp32)" in str(result)


def test_a_variant_beyond_its_tolerance_is_recorded_and_the_result_is_falsy(validated_cnn):
    strict = {"int8": Tolerance(atol=1e-9, rtol=0.0)}
    result = optimize_package(validated_cnn, level="none", int8="dynamic", n=2, tolerances=strict)
    assert not result and not result.parity.variants["int8"]
    assert "elements beyond atol=1e-09" in result.parity.variants["int8"].outputs[0].reasons[0]
    m = ModelPackage.load(validated_cnn).manifest
    assert m.validated is False and m.parity["variants"] == {"fp32": True, "int8": False}
    assert m.variants["int8"].parity["passed"] is False and m.variants["fp32"].parity["passed"]
    assert "int8: FAILED" in str(inspect_package(validated_cnn))


def test_pass_history_is_kept_per_variant_across_runs(validated_cnn):
    optimize_package(validated_cnn, level="basic", n=2)
    optimize_package(validated_cnn, level="none", fp16=True, n=2)
    m = ModelPackage.load(validated_cnn).manifest
    assert [p["name"] for p in m.variants["fp32"].passes] == ["optimize", "merge_matmuls"]
    assert [p["name"] for p in m.variants["fp16"].passes] == ["optimize", "merge_matmuls", "fp16"]
    assert m.validated
