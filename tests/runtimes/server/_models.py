"""Packages for the serving-operations tests: a scaler model with fp32 and int8 variants, versions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from torchport.runtimes import DimRange, Manifest, ModelPackage, TensorSpec, Variant, write_package


def _scale_model(factor: float) -> onnx.ModelProto:
    k = numpy_helper.from_array(np.array(factor, np.float32), "k")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[k],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def make_scale_package(
    dest: Path, factor: float, *, name: str = "scale", version: str = "1", int8_factor: float | None = None
) -> ModelPackage:
    """y = x * factor (x: float32 [batch, 4]); with ``int8_factor`` also an "int8" variant y = x * int8_factor
    (a different graph, so a test can tell which variant answered)."""
    variants = {"fp32": Variant(file="model.onnx")}
    with write_package(dest, overwrite=True) as w:
        onnx.save(_scale_model(factor), w.path / "model.onnx")
        if int8_factor is not None:
            onnx.save(_scale_model(int8_factor), w.path / "model.int8.onnx")
            variants["int8"] = Variant(file="model.int8.onnx", precision="int8")
        manifest = Manifest(
            name=name,
            version=version,
            inputs=[TensorSpec("x", "float32", ["batch", 4])],
            outputs=[TensorSpec("y", "float32", ["batch", 4])],
            dynamic_dims={"batch": DimRange(1, 64)},
            variants=variants,
        )
        return w.commit(manifest)
