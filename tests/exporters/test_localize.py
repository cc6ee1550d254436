"""First-divergence localization with planted divergences in real dynamo-exported models."""

from __future__ import annotations

import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from torchport.exporters import FunctionPass, Localization, localize
from torchport.exporters._source_lines import location_in_text


class Planted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = torch.relu(h)  # LINE: relu
        h = h * 3.0  # LINE: scale
        return self.fc2(torch.tanh(h))


def _line(tag: str) -> int:
    with open(__file__) as f:
        for i, text in enumerate(f, 1):
            if f"# LINE: {tag}" in text and "_line(" not in text:
                return i
    raise AssertionError(tag)


@pytest.fixture(scope="module")
def exported():
    torch.manual_seed(0)
    model = Planted().eval()
    x = torch.randn(3, 8)
    prog = torch.onnx.export(
        model, (x,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False
    )
    return model, x, prog.model_proto


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.ModelProto.FromString(proto.SerializeToString())


def swap_relu_for_sigmoid(model: onnx.ModelProto):
    model = _copy(model)
    for n in model.graph.node:
        if n.op_type == "Relu":
            n.op_type = "Sigmoid"
            return model, True
    return model, False


def perturb_mul_constant(model: onnx.ModelProto):
    """Multiply the constant operand of the (only) Mul node by 1.5."""
    model = _copy(model)
    inits = {i.name: i for i in model.graph.initializer}
    consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    for n in model.graph.node:
        if n.op_type != "Mul":
            continue
        for name in n.input:
            if name in inits:
                arr = numpy_helper.to_array(inits[name]) * 1.5
                inits[name].CopyFrom(numpy_helper.from_array(arr.astype(arr.dtype), name))
                return model, True
            if name in consts:
                attr = consts[name].attribute[0]
                arr = numpy_helper.to_array(attr.t) * 1.5
                attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))
                return model, True
    raise AssertionError("no Mul with a constant operand")


def test_swapped_relu_is_named_with_its_source_line(exported):
    model, x, proto = exported
    bad, changed = FunctionPass("plant", swap_relu_for_sigmoid)(proto)
    assert changed
    loc = localize(bad, {"x": x.numpy()}, module=model, args=(x,))
    assert loc and loc.found
    assert loc.op_type == "Sigmoid" and loc.value == "relu" and loc.fx_node == "relu"
    assert loc.node == next(n.name for n in bad.graph.node if n.op_type == "Sigmoid")
    assert loc.fx_target == "aten.relu.default"
    assert loc.source == f"{__file__}:{_line('relu')}"
    assert "torch.relu(h)" in loc.code
    # the node's input (fc1's output) is reported with its range
    (inp,) = loc.inputs
    assert inp.name == "linear" and inp.shape == (3, 16)
    assert inp.min < 0 < inp.max
    assert loc.max_abs > 0.1
    text = str(loc)
    assert "Sigmoid" in text and f":{_line('relu')}" in text and "linear: float32[3, 16]" in text


def test_perturbed_mul_constant_is_named(exported):
    model, x, proto = exported
    bad, _ = perturb_mul_constant(proto)
    batch = {0: torch.export.Dim("batch")}
    loc = localize(bad, {"x": x.numpy()}, module=model, args=(x,), dynamic_shapes=(batch,))
    assert loc.op_type == "Mul" and loc.value == "mul_4"  # named as in the dynamic-shape export
    assert loc.source.endswith(f":{_line('scale')}") and "h * 3.0" in loc.code
    assert loc.compared >= 2  # linear and relu matched and equal before it
    assert loc.to_dict()["node"] == loc.node


def test_dynamic_shapes_from_manifest_match_the_exported_names(exported):
    model, x, proto = exported
    from torchport.exporters._dynamic_shapes import flat_dynamic_shapes
    from torchport.runtimes import DimRange, Manifest, TensorSpec

    manifest = Manifest(
        "m", inputs=[TensorSpec("x", "float32", ["batch", 8])], dynamic_dims={"batch": DimRange(1, 16)}
    )
    ((shapes,),) = flat_dynamic_shapes(manifest.inputs, manifest.dynamic_dims)
    assert list(shapes) == [0] and shapes[0].__name__ == "batch"
    bad, _ = perturb_mul_constant(proto)
    loc = localize(bad, {"x": x.numpy()}, module=model, args=(x,), dynamic_shapes=(shapes,))
    assert loc.op_type == "Mul"


def test_unperturbed_model_has_no_diverging_node(exported):
    model, x, proto = exported
    loc = localize(proto, {"x": x.numpy()}, module=model, args=(x,))
    assert isinstance(loc, Localization) and not loc
    assert loc.compared >= 4 and "diverges beyond tolerance" in loc.message


def test_source_line_of_a_stack_trace_skips_torch_frames():
    trace = (
        'File "/home/me/model.py", line 12, in forward\n    y = self.fc(x)\n'
        '  File "/venv/lib/python3.11/site-packages/torch/nn/modules/linear.py", line 134, in forward\n'
        "    return F.linear(input, self.weight, self.bias)"
    )
    loc = location_in_text(trace)
    assert (f"{loc.filename}:{loc.lineno}", loc.line) == ("/home/me/model.py:12", "y = self.fc(x)")
    assert location_in_text(None) is None


NET_PY = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 12)
        self.b = nn.Linear(12, 5)

    def forward(self, x):
        h = self.a(x)
        h = torch.relu(h) * 0.5  # PLANT
        return self.b(h)


def make_model():
    torch.manual_seed(0)
    return Net().eval()


def example_inputs():
    return (torch.randn(3, 6),)


DYNAMIC_DIMS = {"x": {0: ("batch", 1, 16)}}
"""


def test_exported_package_planted_divergence_is_localized_through_validate(tmp_path):
    """The whole path: export_model -> a pass plants a bug -> validate(source) names node and line."""
    from torchport.exporters import validate
    from torchport.exporters._export import export_model
    from torchport.runtimes import update_package

    (tmp_path / "net.py").write_text(NET_PY)
    source = f"{tmp_path / 'net.py'}:make_model"
    pkg = export_model(source, tmp_path / "pkg", quiet=True).package
    with update_package(pkg) as w:
        bad, changed = FunctionPass("plant", swap_relu_for_sigmoid)(onnx.load(str(w.path / "model.onnx")))
        assert changed
        onnx.save(bad, str(w.path / "model.onnx"))
        w.commit(pkg.manifest)
    result = validate(tmp_path / "pkg", source, n=5)
    assert not result
    loc = result.localization
    assert loc.op_type == "Sigmoid" and loc.node == "node_relu" and loc.fx_target == "aten.relu.default"
    line = NET_PY.splitlines().index("        h = torch.relu(h) * 0.5  # PLANT") + 1
    assert loc.source == f"{tmp_path / 'net.py'}:{line}"
    assert loc.inputs[0].name == "linear" and loc.inputs[0].shape[1] == 12
