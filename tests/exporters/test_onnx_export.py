"""Translation to ONNX and saving: dim names, metadata, external data."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from torchport.exporters._capture import capture
from torchport.exporters._onnx_export import finalize_model, onnx_from_program, output_specs, save_model
from torchport.exporters._outputs import FlatModule
from torchport.runtimes import DimRange, TensorSpec


def test_dim_names_metadata_and_external_data(tmp_path) -> None:
    model = nn.Linear(8, 300).eval()  # 9.6 KB of weights
    x = torch.randn(2, 8)
    flat = FlatModule.build(model, (x,))
    specs = [TensorSpec("x", "float32", ["batch", 8])]
    dims = {"batch": DimRange(1, 32)}
    ep = capture(flat, (x,), specs, dims)
    onnx_model = onnx_from_program(ep, input_names=["x"], output_names=["y"], opset=18)
    finalize_model(onnx_model, specs, dims, {"torchport.strategy": "test"})
    assert output_specs(onnx_model, dims) == [TensorSpec("y", "float32", ["batch", 300])]

    small = tmp_path / "a" / "model.onnx"
    small.parent.mkdir()
    assert save_model(onnx_model, small) == []
    big = tmp_path / "b" / "model.onnx"
    big.parent.mkdir()
    assert save_model(onnx_model, big, external_data_threshold=1000) == ["model.onnx.data"]
    assert (big.parent / "model.onnx.data").stat().st_size >= 300 * 8 * 4
    assert big.stat().st_size < small.stat().st_size

    proto = onnx.load(str(big))
    assert {p.key: p.value for p in proto.metadata_props}["torchport.strategy"] == "test"
    assert proto.producer_name == "torchport" and proto.opset_import[0].version == 18
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x5 = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    (got,) = ort.InferenceSession(str(big)).run(None, {"x": x5})
    np.testing.assert_allclose(got, model(torch.from_numpy(x5)).detach().numpy(), atol=1e-5)
