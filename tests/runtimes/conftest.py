"""Tiny ONNX model packages built with onnx.helper (no torch), for session and server tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from torchport.runtimes import DimRange, Manifest, ModelPackage, TensorSpec, Variant, write_package

ELEM = {
    "float32": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
    "float64": TensorProto.DOUBLE,
    "bfloat16": TensorProto.BFLOAT16,
    "int8": TensorProto.INT8,
    "int16": TensorProto.INT16,
    "int32": TensorProto.INT32,
    "int64": TensorProto.INT64,
    "uint8": TensorProto.UINT8,
    "uint16": TensorProto.UINT16,
    "uint32": TensorProto.UINT32,
    "uint64": TensorProto.UINT64,
    "bool": TensorProto.BOOL,
    "string": TensorProto.STRING,
}


def _vi(spec: TensorSpec) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(spec.name, ELEM[spec.dtype], spec.shape)


def save_package(
    dest: Path,
    name: str,
    nodes: list[onnx.NodeProto],
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    *,
    initializers: list[onnx.TensorProto] = (),
    dynamic_dims: dict[str, DimRange] | None = None,
    version: str = "1",
    opset: int = 17,
) -> ModelPackage:
    graph = helper.make_graph(
        nodes, name, [_vi(s) for s in inputs], [_vi(s) for s in outputs], initializer=list(initializers)
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    manifest = Manifest(
        name=name,
        version=version,
        inputs=inputs,
        outputs=outputs,
        dynamic_dims=dynamic_dims or {},
        variants={"fp32": Variant(file="model.onnx")},
    )
    with write_package(dest) as w:
        onnx.save(model, w.path / "model.onnx")
        return w.commit(manifest)


def make_add_package(dest: Path, name: str = "add", version: str = "1", max_batch: int = 64) -> ModelPackage:
    """y = relu(x @ W + b) with x: float32 [batch, 4] -> y: float32 [batch, 3]; also z = x + 1."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "B")
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["y"]),
        helper.make_node("Add", ["x", "one"], ["z"]),
    ]
    return save_package(
        dest,
        name,
        nodes,
        [TensorSpec("x", "float32", ["batch", 4])],
        [TensorSpec("y", "float32", ["batch", 3]), TensorSpec("z", "float32", ["batch", 4])],
        initializers=[w, b, one],
        dynamic_dims={"batch": DimRange(1, max_batch)},
        version=version,
    )


def make_seq_package(dest: Path, name: str = "seq") -> ModelPackage:
    """Two inputs with a batch and a seq dim: out = a * b (float32 [batch, seq]), s = sum over seq."""
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [
        helper.make_node("Mul", ["a", "b"], ["out"]),
        helper.make_node("ReduceSum", ["out", "axes"], ["s"], keepdims=1),
    ]
    return save_package(
        dest,
        name,
        nodes,
        [TensorSpec("a", "float32", ["batch", "seq"]), TensorSpec("b", "float32", ["batch", "seq"])],
        [TensorSpec("out", "float32", ["batch", "seq"]), TensorSpec("s", "float32", ["batch", 1])],
        initializers=[axes],
        dynamic_dims={"batch": DimRange(1, 32), "seq": DimRange(1, 16)},
    )


def make_fixed_package(dest: Path, name: str = "fixed") -> ModelPackage:
    """No batch dim: x float32 [2, 2] -> y = x * 2."""
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    return save_package(
        dest,
        name,
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        [TensorSpec("x", "float32", [2, 2])],
        [TensorSpec("y", "float32", [2, 2])],
        initializers=[two],
    )


def make_identity_package(dest: Path, dtype: str, name: str | None = None) -> ModelPackage:
    """y = Identity(x) for one dtype, shape [batch, 3] (used to round-trip every protocol datatype)."""
    name = name or f"id_{dtype}"
    return save_package(
        dest,
        name,
        [helper.make_node("Identity", ["x"], ["y"])],
        [TensorSpec("x", dtype, ["batch", 3])],
        [TensorSpec("y", dtype, ["batch", 3])],
        dynamic_dims={"batch": DimRange(1, 16)},
    )


def make_bf16_package(dest: Path, name: str = "bf16") -> ModelPackage:
    """bf16 in/out: y = bf16(relu(float(x)))."""
    nodes = [
        helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Relu", ["f"], ["r"]),
        helper.make_node("Cast", ["r"], ["y"], to=TensorProto.BFLOAT16),
    ]
    return save_package(
        dest,
        name,
        nodes,
        [TensorSpec("x", "bfloat16", ["batch", 2])],
        [TensorSpec("y", "bfloat16", ["batch", 2])],
        dynamic_dims={"batch": DimRange(1, 8)},
    )


@pytest.fixture
def add_package(tmp_path: Path) -> ModelPackage:
    return make_add_package(tmp_path / "add")


@pytest.fixture
def package_factory(tmp_path: Path) -> Callable[..., ModelPackage]:
    def make(kind: str, name: str | None = None, **kw):
        builders = {
            "add": make_add_package,
            "seq": make_seq_package,
            "fixed": make_fixed_package,
            "bf16": make_bf16_package,
        }
        return builders[kind](tmp_path / (name or kind), **({"name": name} if name else {}), **kw)

    return make


def make_reshape_package(dest: Path, name: str = "reshape") -> ModelPackage:
    """x float32 [batch, n] -> Reshape to [-1, 3]: fails inside ONNX Runtime when batch*n % 3 != 0."""
    target = numpy_helper.from_array(np.array([-1, 3], np.int64), "target")
    return save_package(
        dest,
        name,
        [helper.make_node("Reshape", ["x", "target"], ["y"])],
        [TensorSpec("x", "float32", ["batch", "n"])],
        [TensorSpec("y", "float32", ["rows", 3])],
        initializers=[target],
        dynamic_dims={"batch": DimRange(1, 4), "n": DimRange(1, 12)},
    )


def corrupt(pkg: ModelPackage) -> None:
    """Change one byte of model.onnx so the package's sha256 no longer matches."""
    path = pkg.path / "model.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@contextmanager
def running_server(path: Path, **config) -> Iterator:
    """A real InferenceServer on a free port, in a background thread."""
    from torchport.runtimes.server import InferenceServer, ServerConfig

    config.setdefault("port", 0)
    config.setdefault("access_log", False)
    config.setdefault("warmup", 1)
    server = InferenceServer(path, ServerConfig(**config)).start_in_thread()
    try:
        yield server
    finally:
        server.stop()


def http(
    server, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP request (http.client) -> (status, lower-cased headers, body)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()
