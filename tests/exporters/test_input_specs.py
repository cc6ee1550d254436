"""--input/--dim parsing, ExampleInputs (names, dynamic_shapes, make) and example-input precedence."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from torchport.exporters import (
    ExampleInputs,
    load_model,
    parse_dim_spec,
    parse_input_spec,
    resolve_example_inputs,
)
from torchport.exporters._example_sizes import example_size
from torchport.exporters._user_examples import example_from_object
from torchport.runtimes import DimRange, LoadError, TensorSpec, UsageError

# --------------------------------------------------------------------------- parse_input_spec


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("input_ids:int64[batch,seq]", TensorSpec("input_ids", "int64", ["batch", "seq"])),
        ("x:float32[1,3,224,224]", TensorSpec("x", "float32", [1, 3, 224, 224])),
        ("mask:bool[batch,seq]", TensorSpec("mask", "bool", ["batch", "seq"])),
        ("t:float32[]", TensorSpec("t", "float32", [])),
        (" x : float [ batch , 4 ] ", TensorSpec("x", "float32", ["batch", 4])),
        ("h:float16[batch,8]", TensorSpec("h", "float16", ["batch", 8])),
        ("b:bfloat16[2]", TensorSpec("b", "bfloat16", [2])),
        ("ids:int64[batch,seq]{0..30521}", TensorSpec("ids", "int64", ["batch", "seq"], (0, 30521))),
    ],
)
def test_parse_input_spec(text: str, expected: TensorSpec) -> None:
    assert parse_input_spec(text) == expected


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (
            "input_ids",
            r"--input 'input_ids': expected name:dtype\[dims\], e\.g\. \"input_ids:int64\[batch,seq\]\"",
        ),
        (":int64[batch]", r"the input name is missing before ':'"),
        ("x:[batch]", r"the dtype is missing after ':'"),
        ("x:complex64[2]", r"unsupported dtype 'complex64'; use one of: bool, .*int64.*float32"),
        ("x:string[2]", r"unsupported dtype 'string'; use one of:"),
        ("x:float32", r"the shape is missing; add \[dims\] after the dtype"),
        ("x:float32[2,3", r"malformed shape '\[2,3'; write it as \[dim,dim,\.\.\.\]"),
        ("x:float32[2,-1]", r"dim '-1' is neither a size \(an int >= 0\) nor a dim name"),
        ("x:float32[2,3.5]", r"dim '3\.5' is neither a size"),
        ("x:float32[2,,3]", r"empty dim in '\[2,,3\]'"),
        ("1x:float32[2]", r"input name '1x' is not a valid identifier"),
        ("x:int64[2]{5..1}", r"value range \{5\.\.1\} has low > high"),
        ("x:int64[2]{a..b}", r"malformed value range \{a\.\.b\}"),
    ],
)
def test_parse_input_spec_errors(text: str, pattern: str) -> None:
    with pytest.raises(UsageError, match=pattern) as info:
        parse_input_spec(text)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- parse_dim_spec


def test_parse_dim_spec() -> None:
    assert parse_dim_spec("batch=1..64") == ("batch", DimRange(1, 64))
    assert parse_dim_spec(" seq = 1 .. 512 ") == ("seq", DimRange(1, 512))
    assert parse_dim_spec("n=0..4") == ("n", DimRange(0, 4))


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (
            "batch=8",
            r"a dynamic dim needs a range such as batch=1\.\.8; for a fixed size write the number in --input",
        ),
        ("batch", r"expected name=min\.\.max, e\.g\. \"batch=1\.\.64\""),
        ("=1..4", r"the dim name is missing before '='"),
        ("batch=1-64", r"range '1-64' is not min\.\.max with ints >= 0"),
        ("batch=64..1", r"min 64 is greater than max 1"),
        ("2batch=1..4", r"dim name '2batch' is not a valid identifier"),
    ],
)
def test_parse_dim_spec_errors(text: str, pattern: str) -> None:
    with pytest.raises(UsageError, match=pattern):
        parse_dim_spec(text)


# --------------------------------------------------------------------------- example sizes


def test_example_size_is_not_the_min_and_distinct() -> None:
    assert example_size("batch", DimRange(1, 64)) == 2
    assert example_size("seq", DimRange(1, 512)) == 8
    assert example_size("seq", DimRange(1, 4)) == 4
    assert example_size("seq", DimRange(20, 40)) == 30  # well inside the range, not its minimum
    assert example_size("h", DimRange(32, 96)) == 64
    assert example_size("n", DimRange(1, 64), taken={8, 9}) == 10
    assert example_size("n", DimRange(0, 1)) == 1  # nothing else fits


# --------------------------------------------------------------------------- ExampleInputs structure


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
    sig = __import__("inspect").signature(model.forward)
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
    sig = __import__("inspect").signature(model.forward)
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


# --------------------------------------------------------------------------- resolution / precedence

MODEL = textwrap.dedent(
    """
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 2)

        def forward(self, x, y=None):
            out = self.lin(x)
            return out if y is None else out + y.sum()

    def make():
        return Net()
    """
)


@pytest.fixture()
def bare_model(tmp_path: Path) -> Path:
    path = tmp_path / "bare.py"
    path.write_text(MODEL)
    return path


@pytest.fixture()
def model_with_examples(tmp_path: Path) -> Path:
    path = tmp_path / "with_examples.py"
    path.write_text(
        MODEL
        + textwrap.dedent(
            """
            def example_inputs():
                return (torch.ones(3, 4),)

            DYNAMIC_DIMS = {"x": {0: ("batch", 1, 32)}}
            """
        )
    )
    return path


def _npz(tmp_path: Path, **arrays: np.ndarray) -> str:
    path = tmp_path / "sample.npz"
    np.savez(path, **arrays)
    return str(path)


def test_input_specs_win_over_everything(model_with_examples: Path, tmp_path: Path) -> None:
    loaded = load_model(f"{model_with_examples}:make")
    sample = _npz(tmp_path, x=np.zeros((5, 4), np.float32))
    ex = resolve_example_inputs(
        loaded, [parse_input_spec("x:float32[n,4]")], dict([parse_dim_spec("n=1..10")]), sample_file=sample
    )
    assert str(ex) == "x:float32[n,4] (n=1..10)"
    assert ex.args[0].shape == (8, 4)
    ep = torch.export.export(loaded.module, ex.args, ex.kwargs, dynamic_shapes=ex.dynamic_shapes())
    (x,), _ = ex.make({"n": 3}, rng=0)
    torch.testing.assert_close(ep.module()(x), loaded.module(x))


def test_input_spec_dim_falls_back_to_model_range(model_with_examples: Path) -> None:
    loaded = load_model(f"{model_with_examples}:make")
    ex = resolve_example_inputs(loaded, [parse_input_spec("x:float32[batch,4]")], {})
    assert ex.dynamic_dims == {"batch": DimRange(1, 32)}


def test_example_inputs_beat_sample_file(model_with_examples: Path, tmp_path: Path) -> None:
    loaded = load_model(f"{model_with_examples}:make")
    sample = _npz(tmp_path, x=np.zeros((5, 4), np.float32))
    ex = resolve_example_inputs(loaded, [], {}, sample_file=sample)
    assert str(ex) == "x:float32[batch,4] (batch=1..32)"
    assert torch.equal(ex.args[0], torch.ones(3, 4))


def test_dim_overrides_the_range_of_example_inputs(model_with_examples: Path) -> None:
    loaded = load_model(f"{model_with_examples}:make")
    ex = resolve_example_inputs(loaded, [], dict([parse_dim_spec("batch=1..4")]))
    assert ex.dynamic_dims == {"batch": DimRange(1, 4)}
    assert torch.equal(ex.args[0], torch.ones(3, 4))  # 3 is in range: kept
    moved = resolve_example_inputs(loaded, [], dict([parse_dim_spec("batch=5..9")]))
    assert moved.args[0].shape == (7, 4)  # regenerated well inside the new range
    torch.export.export(loaded.module, moved.args, moved.kwargs, dynamic_shapes=moved.dynamic_shapes())


def test_dim_for_unknown_name_lists_existing(model_with_examples: Path) -> None:
    loaded = load_model(f"{model_with_examples}:make")
    with pytest.raises(
        UsageError, match=r"--dim seq: no input uses a dim of that name; the dynamic dims are: batch"
    ):
        resolve_example_inputs(loaded, [], dict([parse_dim_spec("seq=1..8")]))
    with pytest.raises(UsageError, match=r"--dim seq: no --input uses a dim of that name; dims used: n"):
        resolve_example_inputs(
            loaded,
            [parse_input_spec("x:float32[n,4]")],
            dict([parse_dim_spec("n=1..4"), parse_dim_spec("seq=1..8")]),
        )


def test_sample_npz_keyed_by_parameter_names(bare_model: Path, tmp_path: Path) -> None:
    loaded = load_model(f"{bare_model}:make")
    sample = _npz(tmp_path, y=np.ones((2,), np.float32), x=np.ones((6, 4), np.float32))
    ex = resolve_example_inputs(loaded, [], {}, sample_file=sample)
    assert [(s.name, s.shape) for s in ex.specs] == [("x", [6, 4]), ("y", [2])]  # forward order
    assert ex.dynamic_dims == {}
    assert loaded.module(*ex.args, **ex.kwargs).shape == (6, 2)


def test_sample_npz_with_dynamic_dims(model_with_examples: Path, tmp_path: Path) -> None:
    # the model file's DYNAMIC_DIMS apply to sample-file inputs too (no example_inputs() here)
    path = tmp_path / "dd.py"
    path.write_text(MODEL + '\nDYNAMIC_DIMS = {"x": {0: ("batch", 1, 32)}}\n')
    loaded = load_model(f"{path}:make")
    ex = resolve_example_inputs(loaded, [], {}, sample_file=_npz(tmp_path, x=np.ones((6, 4), np.float32)))
    assert str(ex) == "x:float32[batch,4] (batch=1..32)"


def test_sample_npz_unknown_key(bare_model: Path, tmp_path: Path) -> None:
    loaded = load_model(f"{bare_model}:make")
    with pytest.raises(
        UsageError, match=r"names 'z' that forward\(\) does not take; its parameters are: x, y"
    ):
        resolve_example_inputs(loaded, [], {}, sample_file=_npz(tmp_path, z=np.ones((1, 4), np.float32)))


def test_sample_pt_tuple_and_pickle_refused(bare_model: Path, tmp_path: Path) -> None:
    loaded = load_model(f"{bare_model}:make")
    path = tmp_path / "sample.pt"
    torch.save((torch.ones(2, 4),), str(path))
    ex = resolve_example_inputs(loaded, [], {}, sample_file=str(path))
    assert [(s.name, s.shape) for s in ex.specs] == [("x", [2, 4])]
    bad = tmp_path / "bad.pt"
    torch.save({"x": torch.nn.Linear(2, 2)}, str(bad))
    with pytest.raises(UsageError, match=r"cannot read sample file .*bad\.pt with weights_only=True"):
        resolve_example_inputs(loaded, [], {}, sample_file=str(bad))
    with pytest.raises(UsageError, match=r"sample file not found"):
        resolve_example_inputs(loaded, [], {}, sample_file=str(tmp_path / "missing.npz"))
    with pytest.raises(UsageError, match=r"unsupported type \.csv; use \.npz or \.pt"):
        (tmp_path / "s.csv").write_text("1,2")
        resolve_example_inputs(loaded, [], {}, sample_file=str(tmp_path / "s.csv"))


def test_no_inputs_anywhere(bare_model: Path) -> None:
    loaded = load_model(f"{bare_model}:make")
    with pytest.raises(
        UsageError, match=r'no example inputs for .*: pass --input "name:dtype\[dims\]" and --dim'
    ):
        resolve_example_inputs(loaded, [], {})


def test_input_spec_errors_against_the_model(bare_model: Path) -> None:
    loaded = load_model(f"{bare_model}:make")
    with pytest.raises(
        UsageError, match=r"dim\(s\) seq used in --input have no range; add --dim seq=1\.\.64"
    ):
        resolve_example_inputs(loaded, [parse_input_spec("x:float32[seq,4]")], {})
    with pytest.raises(
        UsageError, match=r"--input names 'image' that forward\(\) does not take; its parameters are: x, y"
    ):
        resolve_example_inputs(loaded, [parse_input_spec("image:float32[1,4]")], {})
    with pytest.raises(UsageError, match=r"--input names x more than once"):
        resolve_example_inputs(
            loaded, [parse_input_spec("x:float32[1,4]"), parse_input_spec("x:float32[2,4]")], {}
        )


def test_distinct_example_sizes_for_input_specs(bare_model: Path) -> None:
    loaded = load_model(f"{bare_model}:make")
    ex = resolve_example_inputs(
        loaded,
        [parse_input_spec("x:float32[batch,4]"), parse_input_spec("y:float32[seq]")],
        dict([parse_dim_spec("batch=1..64"), parse_dim_spec("seq=1..64")]),
    )
    sizes = ex.example_dims()
    assert sizes["batch"] >= 2 and sizes["seq"] >= 2 and sizes["batch"] != sizes["seq"]
    assert 4 not in sizes.values()  # static sizes avoided too
    assert list(ex.kwargs) == [] and len(ex.args) == 2
    ep = torch.export.export(loaded.module, ex.args, ex.kwargs, dynamic_shapes=ex.dynamic_shapes())
    args, kwargs = ex.make({"batch": 1, "seq": 64}, rng=3)
    torch.testing.assert_close(ep.module()(*args, **kwargs), loaded.module(*args, **kwargs))


def test_bad_example_inputs_value(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(MODEL + "\ndef example_inputs():\n    return 'text'\n")
    with pytest.raises(LoadError, match=r"example_inputs\(\) in .* gave a str; return a tensor, a tuple"):
        load_model(f"{path}:make")
    path.write_text(
        MODEL
        + "\ndef example_inputs():\n    return (torch.ones(2, 4),)\nDYNAMIC_DIMS = {'q': {0: ('b', 1, 4)}}\n"
    )
    with pytest.raises(
        LoadError, match=r"dynamic dims name input\(s\) 'q' that the model does not take; inputs are: x"
    ):
        load_model(f"{path}:make")


def test_dim_batch_makes_axis_zero_dynamic(bare_model: Path, tmp_path: Path) -> None:
    path = tmp_path / "plain.py"
    path.write_text(
        MODEL + "\ndef example_inputs():\n    return {'x': torch.ones(1, 4), 'y': torch.ones(1, 3)}\n"
    )
    loaded = load_model(f"{path}:make")
    assert str(loaded.example_inputs) == "x:float32[1,4] y:float32[1,3] (static)"
    ex = resolve_example_inputs(loaded, [], dict([parse_dim_spec("batch=1..16")]))
    assert str(ex) == "x:float32[batch,4] y:float32[batch,3] (batch=1..16)"
    assert ex.args[0].shape == (2, 4) and ex.args[1].shape == (2, 3)  # size 1 would be specialized
    ep = torch.export.export(loaded.module, ex.args, ex.kwargs, dynamic_shapes=ex.dynamic_shapes())
    args, kwargs = ex.make({"batch": 16}, rng=0)
    torch.testing.assert_close(ep.module()(*args, **kwargs), loaded.module(*args, **kwargs))
    with pytest.raises(
        UsageError, match=r"--dim seq: no input uses a dim of that name; the dynamic dims are: \(none"
    ):
        resolve_example_inputs(loaded, [], dict([parse_dim_spec("seq=1..16")]))


class VarArgs(torch.nn.Module):
    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return tensors[0] * tensors[1]


def test_input_specs_for_var_positional_forward() -> None:
    import inspect

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


def test_torchscript_with_input_specs(tmp_path: Path) -> None:
    model = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 2)).eval())
    path = tmp_path / "seq.pt"
    torch.jit.save(model, str(path))
    loaded = load_model(str(path))
    ex = resolve_example_inputs(
        loaded, [parse_input_spec("input:float32[batch,4]")], dict([parse_dim_spec("batch=1..8")])
    )
    assert str(ex) == "input:float32[batch,4] (batch=1..8)"
    args, kwargs = ex.make({"batch": 8}, rng=0)
    assert loaded.module(*args, **kwargs).shape == (8, 2)
    with pytest.raises(
        UsageError, match=r"--input names 'x' that forward\(\) does not take; its parameters are: input"
    ):
        resolve_example_inputs(loaded, [parse_input_spec("x:float32[2,4]")], {})


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
