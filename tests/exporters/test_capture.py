"""Capture with torch.export (real runs), and its retry at other example sizes when torch.export
specializes a dynamic dim at the first ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from torchport.exporters import export_model, load_model
from torchport.exporters._capture import capture, capture_resizing
from torchport.exporters._outputs import FlatModule
from torchport.runtimes import DimRange, ExportError, ModelPackage, TensorSpec


def test_capture_dynamic_batch() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval()
    flat = FlatModule.build(model, (torch.randn(3, 4),))
    ep = capture(
        flat, (torch.randn(3, 4),), [TensorSpec("x", "float32", ["batch", 4])], {"batch": DimRange(1, 16)}
    )
    x = torch.randn(11, 4)
    torch.testing.assert_close(ep.module()(x)[0], model(x))


# --------------------------------------------------------------------------- retry at other sizes

#: square images take a shortcut (one table for both axes); a square example ties w to h in torch.export
SQUARE_MODEL = """
import torch
from torch import nn

DYNAMIC_DIMS = {"image": {2: ("h", 16, 64), 3: ("w", 16, 64)}}


class PositionTable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.row = nn.Parameter(torch.randn(64))
        self.col = nn.Parameter(torch.randn(64))

    def forward(self, image):
        y = self.conv(image)
        h, w = y.shape[-2:]
        if h == w:
            pos = torch.outer(self.row[:h], self.col[:h])
        else:
            pos = self.row[:h, None] * self.col[None, :w]
        return y + pos


def make_model():
    torch.manual_seed(0)
    return PositionTable().eval()


def example_inputs():
    return (torch.randn(1, 3, 32, 32),)  # square, as sample images usually are
"""


def test_export_retries_capture_at_other_sizes_and_keeps_the_dims_dynamic(tmp_path: Path, capsys) -> None:
    path = tmp_path / "square.py"
    path.write_text(SQUARE_MODEL)
    loaded = load_model(f"{path}:make_model")
    example = loaded.example_inputs
    assert example.example_dims() == {"h": 32, "w": 32}
    flat = FlatModule.build(loaded.module, example.args)
    with pytest.raises(ExportError) as first:  # the first attempt, at 32x32, specializes
        capture(flat, flat.flat_inputs(example.args), example.specs, example.dynamic_dims)
    assert first.value.failure.kind == "dynamic dim specialized" and first.value.failure.dims == ["w"]

    result = export_model(f"{path}:make_model", tmp_path / "pkg")
    note = (
        "captured at example size w=40: at w=32 the model ties dynamic dim 'w' to 'h' "
        "(torch.export requires them always equal)"
    )
    assert f"dynamo-nonstrict: {note}" in capsys.readouterr().err  # the output says which size worked
    assert result and result.strategy == "dynamo-nonstrict"
    assert [a.strategy for a in result.attempts] == ["dynamo-nonstrict"]
    package = ModelPackage.load(tmp_path / "pkg")
    assert package.manifest.export["attempts"][0]["warnings"] == [note]
    assert package.manifest.validated and package.manifest.parity["passed"]

    proto = onnx.load(str(tmp_path / "pkg" / "model.onnx"))
    shape = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert shape == [1, 3, "h", "w"]
    session = ort.InferenceSession(str(tmp_path / "pkg" / "model.onnx"), providers=["CPUExecutionProvider"])
    for h, w in [(17, 63), (50, 50), (64, 23), (16, 16)]:  # sizes the capture never saw, squares too
        x = torch.randn(1, 3, h, w)
        (got,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            want = loaded.module(x).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_an_example_of_size_one_is_captured_at_two() -> None:
    model = nn.Linear(4, 3).eval()
    spec, dims = TensorSpec("x", "float32", ["batch", 4]), {"batch": DimRange(1, 64)}
    x1 = torch.randn(1, 4)
    flat = FlatModule.build(model, (x1,))
    with pytest.raises(ExportError, match=r"the model fixes dynamic dim 'batch' to 1"):
        capture(flat, (x1,), [spec], dims)  # torch.export specializes a dim of size 1
    got = capture_resizing(
        flat, (x1,), [spec], dims, sizes={"batch": 1}, resize=lambda s: (torch.randn(s["batch"], 4),)
    )
    assert got.sizes == {"batch": 2} and got.flat_inputs[0].shape == (2, 4)
    assert got.note.startswith("captured at example size batch=2: at batch=1 the model fixes dynamic dim")
    for n in (1, 64):
        x = torch.randn(n, 4)
        torch.testing.assert_close(got.program.module()(x)[0], model(x))


class PinnedSeq(nn.Module):
    def forward(self, x):
        return x * 2 if x.shape[1] == 8 else x * 3


def test_no_size_helps_the_first_error_lists_the_sizes_tried() -> None:
    spec, dims = TensorSpec("x", "float32", [2, "seq"]), {"seq": DimRange(2, 64)}
    x = torch.randn(2, 8)
    flat = FlatModule.build(PinnedSeq(), (x,))
    with pytest.raises(ExportError) as info:
        capture_resizing(
            flat, (x,), [spec], dims, sizes={"seq": 8}, resize=lambda s: (torch.randn(2, s["seq"]),)
        )
    assert info.value.failure.summary == (
        "the model fixes dynamic dim 'seq' to 8 (torch.export had to specialize it) "
        "(example sizes tried: seq=8; seq=33; seq=49)"
    )
    with pytest.raises(ExportError, match="'seq' to 8"):  # no resize: the first error as is
        capture_resizing(flat, (x,), [spec], dims, sizes={"seq": 8}, resize=None)
