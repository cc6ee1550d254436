"""ExampleInputs: leaf names, dynamic_shapes for torch.export, make() at other sizes, value ranges."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from torchport.exporters import ExampleInputs, load_model, parse_dim_spec, parse_input_spec
from torchport.exporters._user_examples import example_from_object
from torchport.runtimes import DimRange, UsageError


class DictModel(torch.nn.Module):
    def forward(self, inputs: dict, scale: float = 1.0) -> dict:
        return {"sum": inputs["a"] + inputs["b"]["c"], "first": inputs["seq"][0] * scale}


class KwOnly(torch.nn.Module):
    def forward(
        self, x: torch.Tensor, *, bias: torch.Tensor, gain: torch.Tensor | None = None
    ) -> torch.Tensor:
        return x + bias


def test_nested_names_and_dynamic_shapes_export() -> None:
    model = DictModel()
    sig = inspect.signature(model.forward)
    inputs = {"a": torch.randn(2, 4), "b": {"c": torch.randn(2, 4)}, "seq": [torch.randn(3), torch.randn(3)]}
    ex = example_from_object(
        (inputs,),
        signature=sig,
        dynamic={"inputs_a": {0: ("batch", 1, 8)}, "inputs_b_c": {0: ("batch", 1, 8)}},
    )
    assert [s.name for s in ex.specs] == ["inputs_a", "inputs_b_c", "inputs_seq_0", "inputs_seq_1"]
    assert [s.shape for s in ex.specs] == [["batch", 4], ["batch", 4], [3], [3]]
    ds = ex.dynamic_shapes()
    assert set(ds) == {"inputs"}
    assert ds["inputs"]["a"][0] is ds["inputs"]["b"]["c"][0]  # one Dim object per name
    assert ds["inputs"]["seq"] == [None, None]
    ep = torch.export.export(model, ex.args, ex.kwargs, dynamic_shapes=ds)
    args, kwargs = ex.make({"batch": 5}, rng=0)
    assert (
        args[0]["a"].shape == (5, 4) and args[0]["b"]["c"].shape == (5, 4) and args[0]["seq"][1].shape == (3,)
    )
    got, want = ep.module()(*args, **kwargs), model(*args, **kwargs)
    torch.testing.assert_close(got["sum"], want["sum"])


def test_keyword_only_inputs_export() -> None:
    model = KwOnly()
    sig = inspect.signature(model.forward)
    ex = example_from_object(
        {"bias": torch.randn(3, 4), "x": torch.randn(3, 4)},
        signature=sig,
        dynamic={"x": {0: ("batch", 1, 16)}, "bias": {0: ("batch", 1, 16)}},
    )
    assert len(ex.args) == 1 and list(ex.kwargs) == ["bias"]
    assert ex.input_names == ["x", "bias"]
    ds = ex.dynamic_shapes()
    assert ds["x"][0] is ds["bias"][0]
    ep = torch.export.export(model, ex.args, ex.kwargs, dynamic_shapes=ds)
    args, kwargs = ex.make({"batch": 7}, rng=1)
    torch.testing.assert_close(ep.module()(*args, **kwargs), model(*args, **kwargs))


def test_make_respects_dtype_value_range_and_dims() -> None:
    specs = [
        parse_input_spec("ids:int64[batch,seq]{0..9}"),
        parse_input_spec("mask:bool[batch,seq]"),
        parse_input_spec("x:float16[batch,4]"),
        parse_input_spec("t:float32[]"),
    ]
    ex = ExampleInputs.from_specs(specs, {"batch": DimRange(1, 8), "seq": DimRange(1, 100)})
    sizes = ex.example_dims()
    assert sizes == {"batch": 2, "seq": 8}
    args, kwargs = ex.make({"seq": 33}, rng=0)
    ids, mask, x, t = (*args, *kwargs.values())
    assert ids.dtype == torch.int64 and ids.shape == (2, 33) and 0 <= int(ids.min()) and int(ids.max()) <= 9
    assert mask.dtype == torch.bool and mask.shape == (2, 33)
    assert x.dtype == torch.float16 and x.shape == (2, 4)
    assert t.shape == ()
    again, _ = ex.make({"seq": 33}, rng=0)
    assert torch.equal(again[0], ids)
    with pytest.raises(
        UsageError, match=r"unknown dynamic dim 'time'; this model's dynamic dims are: batch, seq"
    ):
        ex.make({"time": 3})
    assert (
        str(ex)
        == "ids:int64[batch,seq] mask:bool[batch,seq] x:float16[batch,4] t:float32[] (batch=1..8, seq=1..100)"
    )


def test_static_inputs_have_no_dynamic_shapes() -> None:
    ex = ExampleInputs.from_specs([parse_input_spec("x:float32[1,3]")], {})
    assert ex.dynamic_shapes() is None
    assert str(ex) == "x:float32[1,3] (static)"


def test_fixed_range_dim_is_static_in_dynamic_shapes() -> None:
    ex = ExampleInputs.from_specs(
        [parse_input_spec("x:float32[batch,n]")], {"batch": DimRange(1, 8), "n": DimRange(5, 5)}
    )
    assert ex.example_dims() == {"batch": 2, "n": 5}
    ds = ex.dynamic_shapes()
    assert list(ds[0]) == [0]


class VarArgs(torch.nn.Module):
    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return tensors[0] * tensors[1]


def test_input_specs_for_var_positional_forward() -> None:
    model = VarArgs()
    ex = ExampleInputs.from_specs(
        [parse_input_spec("a:float32[n,2]"), parse_input_spec("b:float32[n,2]")],
        dict([parse_dim_spec("n=1..5")]),
        signature=inspect.signature(model.forward),
    )
    assert ex.input_names == ["a", "b"]  # the user's names, not tensors_0/tensors_1
    ds = ex.dynamic_shapes()
    assert list(ds) == ["tensors"] and ds["tensors"][0][0] is ds["tensors"][1][0]
    ep = torch.export.export(model, ex.args, ex.kwargs, dynamic_shapes=ds)
    args, kwargs = ex.make({"n": 5}, rng=0)
    torch.testing.assert_close(ep.module()(*args, **kwargs), model(*args, **kwargs))


def test_integer_example_inputs_bound_generated_values(tmp_path: Path) -> None:
    path = tmp_path / "emb.py"
    path.write_text(
        "import torch\n"
        "def make():\n    return torch.nn.Embedding(5, 3)\n"
        "def example_inputs():\n    return (torch.tensor([[0, 4, 2]]),)\n"
        "DYNAMIC_DIMS = {'input': {1: ('seq', 1, 50)}}\n"
    )
    loaded = load_model(f"{path}:make")
    spec = loaded.example_inputs.specs[0]
    assert (spec.dtype, spec.shape, spec.value_range) == ("int64", [1, "seq"], (0, 4))
    (ids,), _ = loaded.example_inputs.make({"seq": 50}, rng=0)
    assert ids.shape == (1, 50) and int(ids.max()) <= 4
    assert loaded.module(ids).shape == (1, 50, 3)  # an id >= 5 would raise IndexError
