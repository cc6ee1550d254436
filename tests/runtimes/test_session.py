"""Session: providers, validation, running, warm-up (real ONNX Runtime, tiny onnx.helper models)."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest

from torchport.runtimes import (
    InferenceInputError,
    PackageError,
    ProviderError,
    Session,
    resolve_providers,
)
from torchport.runtimes._providers import normalize_provider

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def _tensorrt_usable() -> bool:
    """onnxruntime-gpu lists TensorRT whenever it was built with it; the TensorRT libraries must be there too."""
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        return False
    import ctypes

    for lib in ("libnvinfer.so.10", "libnvinfer.so"):
        try:
            ctypes.CDLL(lib)
            return True
        except OSError:
            pass
    return False


HAS_TRT = _tensorrt_usable()


def _reference(pkg, feeds):
    sess = ort.InferenceSession(str(pkg.model_path()), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


def test_run_matches_plain_onnxruntime(add_package):
    sess = Session.from_package(add_package.path, providers="cpu", warmup=2)
    assert sess.provider == "CPUExecutionProvider"
    assert sess.input_names == ["x"] and sess.output_names == ["y", "z"]
    assert sess.batch_dim == "batch"
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    out = sess.run({"x": x})
    ref = _reference(add_package, {"x": x})
    np.testing.assert_array_equal(out["y"], ref["y"])
    np.testing.assert_array_equal(out["z"], x + 1)
    only = sess.run({"x": x}, ["z"])
    assert list(only) == ["z"]


def test_from_package_accepts_loaded_package_and_threads(add_package):
    sess = Session.from_package(add_package, intra_op_threads=1, inter_op_threads=1, spinning=False)
    assert sess.manifest.name == "add"
    assert "add" in str(sess) and "cpu" in str(sess)


@pytest.mark.parametrize(
    "feeds, match",
    [
        ({"x": np.zeros((2, 4), np.float32), "q": np.zeros(1)}, r"unknown input 'q'; model 'add' expects: x"),
        ({}, r"missing input 'x' \(float32 \[batch, 4\]\)"),
        ({"x": np.zeros((2, 4), np.float64)}, r"input 'x' has dtype float64, expected float32"),
        ({"x": np.zeros((2, 4, 1), np.float32)}, r"input 'x' has rank 3 .* expected rank 2: \[batch, 4\]"),
        ({"x": np.zeros((2, 5), np.float32)}, r"input 'x' dim 1 is 5, expected 4"),
        ({"x": np.zeros((65, 4), np.float32)}, r"input 'x' dim 0 \('batch'\) is 65, outside its range 1..64"),
        ({"x": "1 2 3 4"}, r"input 'x' must be a numpy array, got str"),
        ({"x": [[1.0, 2.0, 3.0]]}, r"input 'x' dim 1 is 3, expected 4"),  # a list is converted, then checked
    ],
)
def test_validation_errors_name_the_input(add_package, feeds, match):
    sess = Session.from_package(add_package)
    with pytest.raises(InferenceInputError, match=match):
        sess.run(feeds)


def test_lists_are_converted_to_the_input_dtype(add_package):
    session = Session.from_package(add_package)
    from_list = session.run({"x": [[1.0, 2.0, 3.0, 4.0]]})
    from_array = session.run({"x": np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)})
    for name, value in from_array.items():
        np.testing.assert_array_equal(from_list[name], value)


def test_named_dims_must_agree_across_inputs(package_factory):
    sess = Session.from_package(package_factory("seq").path)
    a = np.ones((2, 3), np.float32)
    with pytest.raises(
        InferenceInputError, match=r"input 'b' dim 0 \('batch'\) is 3 but input 'a' has batch=2"
    ):
        sess.run({"a": a, "b": np.ones((3, 3), np.float32)})
    out = sess.run({"a": a, "b": a * 2})
    np.testing.assert_allclose(out["s"], np.full((2, 1), 6.0))


def test_unknown_output(add_package):
    sess = Session.from_package(add_package)
    with pytest.raises(InferenceInputError, match=r"unknown output 'nope'; model 'add' has: y, z"):
        sess.run({"x": np.zeros((1, 4), np.float32)}, ["nope"])


def test_fixed_model_has_no_batch_dim(package_factory):
    sess = Session.from_package(package_factory("fixed").path)
    assert sess.batch_dim is None
    np.testing.assert_array_equal(sess.run({"x": np.ones((2, 2), np.float32)})["y"], np.full((2, 2), 2.0))


def test_bfloat16_round_trip(package_factory):
    sess = Session.from_package(package_factory("bf16").path)
    bits = (np.array([[1.5, -2.0], [3.0, 0.25]], np.float32).view(np.uint32) >> 16).astype(np.uint16)
    out = sess.run({"x": bits})["y"]
    as_float = (out.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(as_float, [[1.5, 0.0], [3.0, 0.25]])


def test_provider_names():
    assert normalize_provider("cuda") == "CUDAExecutionProvider"
    assert normalize_provider("TensorRT") == "TensorrtExecutionProvider"
    assert resolve_providers(["cpu"]) == ["CPUExecutionProvider"]
    assert resolve_providers("cuda,cpu", available=["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    with pytest.raises(ProviderError, match="unknown execution provider 'tpu'"):
        resolve_providers("tpu")


def test_unavailable_provider_lists_available_ones(add_package):
    with pytest.raises(
        ProviderError, match=r"tensorrt \(TensorrtExecutionProvider\) is not available.*available: .*cpu"
    ):
        resolve_providers("tensorrt", available=["CPUExecutionProvider"])
    if HAS_CUDA:
        pytest.skip("CUDA is available here; the not-available path needs a machine without it")
    with pytest.raises(
        ProviderError, match=r"cuda \(CUDAExecutionProvider\) is not available.*--allow-fallback"
    ):
        Session.from_package(add_package, providers="cuda")


def test_fallback_reports_the_provider_in_use(add_package, caplog):
    if HAS_CUDA:
        pytest.skip("CUDA is available here; fallback cannot be observed")
    with caplog.at_level(logging.WARNING, logger="torchport.runtimes"):
        sess = Session.from_package(add_package, providers=["cuda", "cpu"], allow_fallback=True)
    assert sess.provider == "CPUExecutionProvider"
    assert "falling back to cpu" in caplog.text


def test_missing_variant_and_tampered_package(add_package):
    with pytest.raises(PackageError, match="has no variant 'fp16'; available: fp32"):
        Session.from_package(add_package, variant="fp16")
    with open(add_package.path / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(PackageError, match="model.onnx"):
        Session.from_package(add_package.path)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and a CUDA device (CUDAExecutionProvider)")
def test_cuda_iobinding_matches_cpu(add_package):
    x = np.random.default_rng(2).standard_normal((8, 4)).astype(np.float32)
    gpu = Session.from_package(add_package, providers="cuda")
    assert gpu.provider == "CUDAExecutionProvider" and gpu._use_iobinding
    # float32 stays float32 on the GPU (no TF32 matrix products): it must match the validated CPU run
    assert gpu._sess.get_provider_options()["CUDAExecutionProvider"]["use_tf32"] == "0"
    cpu = Session.from_package(add_package, providers="cpu")
    np.testing.assert_allclose(gpu.run({"x": x})["y"], cpu.run({"x": x})["y"], rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and a CUDA device (CUDAExecutionProvider)")
def test_cuda_float16(package_factory, tmp_path):
    from tests.runtimes.conftest import make_identity_package

    pkg = make_identity_package(tmp_path / "h", "float16")
    sess = Session.from_package(pkg, providers="cuda")
    x = np.arange(6, dtype=np.float16).reshape(2, 3)
    np.testing.assert_array_equal(sess.run({"x": x})["y"], x)


@pytest.mark.gpu
@pytest.mark.skipif(
    not HAS_TRT, reason="needs onnxruntime-gpu with TensorRT (TensorrtExecutionProvider and libnvinfer)"
)
def test_tensorrt(add_package):
    sess = Session.from_package(add_package, providers=["tensorrt", "cuda", "cpu"])
    assert sess.provider == "TensorrtExecutionProvider"
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(sess.run({"x": x})["z"], x + 1)


def test_variant_signature_comes_from_its_onnx_file(tmp_path):
    """An fp16 variant with float16 I/O: the session reports and validates float16 for it."""
    import onnx
    from onnx import TensorProto, helper

    from torchport.runtimes import DimRange, Manifest, TensorSpec, Variant, write_package

    def model(elem):
        g = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", elem, ["batch", 2])],
            [helper.make_tensor_value_info("y", elem, ["batch", 2])],
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 9
        return m

    with write_package(tmp_path / "pkg") as w:
        onnx.save(model(TensorProto.FLOAT), w.path / "model.onnx")
        onnx.save(model(TensorProto.FLOAT16), w.path / "model.fp16.onnx")
        pkg = w.commit(
            Manifest(
                name="relu",
                inputs=[TensorSpec("x", "float32", ["batch", 2])],
                outputs=[TensorSpec("y", "float32", ["batch", 2])],
                dynamic_dims={"batch": DimRange(1, 4)},
                variants={
                    "fp32": Variant("model.onnx"),
                    "fp16": Variant("model.fp16.onnx", precision="fp16"),
                },
            )
        )
    half = Session.from_package(pkg, variant="fp16")
    assert [s.dtype for s in half.input_specs] == ["float16"] and half.input_specs[0].shape == ["batch", 2]
    out = half.run({"x": np.array([[-1.0, 2.0]], np.float16)})["y"]
    assert out.dtype == np.float16 and out.tolist() == [[0.0, 2.0]]
    with pytest.raises(
        InferenceInputError, match="input 'x' dim 0 \\('batch'\\) is 5, outside its range 1..4"
    ):
        half.run({"x": np.zeros((5, 2), np.float16)})
    assert Session.from_package(pkg).input_specs[0].dtype == "float32"
