"""Capture building blocks: output flattening and selection, the flat wrapper, dynamic shapes,
torch.export failure analysis, the contiguous() rewrite, ONNX saving details. Real torch.export runs."""

from __future__ import annotations

import dataclasses
from collections import namedtuple

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from torchport.exporters._capture import capture
from torchport.exporters._capture_failures import analyze_failure
from torchport.exporters._dynamic_shapes import flat_dynamic_shapes
from torchport.exporters._onnx_export import finalize_model, onnx_from_program, output_specs, save_model
from torchport.exporters._outputs import FlatModule, OutputSelection, flatten_outputs, is_causal_lm
from torchport.exporters._source_lines import user_traceback
from torchport.exporters._strategies import rewrite_contiguous
from torchport.runtimes import DimRange, ExportError, TensorSpec, UsageError

# --------------------------------------------------------------------------- flatten_outputs


def _names(obj) -> list[str]:
    return [n for n, _ in flatten_outputs(obj)]


def test_flatten_tensor_tuple_list() -> None:
    t = torch.ones(2)
    assert _names(t) == ["output"]
    assert _names((t, t)) == ["output_0", "output_1"]
    assert _names([t, (t, t)]) == ["output_0", "output_1.0", "output_1.1"]
    assert _names((t, None, 3)) == ["output_0"]


def test_flatten_dict_dataclass_namedtuple() -> None:
    t = torch.ones(1)

    @dataclasses.dataclass
    class Out:
        logits: torch.Tensor
        extra: dict | None = None

    Pair = namedtuple("Pair", ["start", "end"])
    assert _names({"a": t, "b": {"c": t, "d": [t, t]}}) == ["a", "b.c", "b.d.0", "b.d.1"]
    assert _names(Out(t, {"x": t})) == ["logits", "extra.x"]
    assert _names(Out(t)) == ["logits"]
    assert _names(Pair(t, t)) == ["start", "end"]


def test_flatten_hf_model_output_and_cache() -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_outputs import BaseModelOutputWithPooling, CausalLMOutputWithPast

    t = torch.ones(1, 2)
    out = BaseModelOutputWithPooling(last_hidden_state=t, pooler_output=t)
    assert _names(out) == ["last_hidden_state", "pooler_output"]

    cache = transformers.DynamicCache()
    for layer in range(2):
        cache.update(torch.full((1, 2, 3, 4), float(layer)), torch.full((1, 2, 3, 4), -float(layer)), layer)
    named = flatten_outputs(CausalLMOutputWithPast(logits=t, past_key_values=cache))
    assert [n for n, _ in named] == [
        "logits",
        "present.0.key",
        "present.0.value",
        "present.1.key",
        "present.1.value",
    ]
    assert float(named[3][1][0, 0, 0, 0]) == 1.0 and float(named[4][1][0, 0, 0, 0]) == -1.0
    legacy = {"logits": t, "past_key_values": ((t, t), (t, t))}
    assert _names(legacy)[1:3] == ["present.0.key", "present.0.value"]


# --------------------------------------------------------------------------- OutputSelection


class FakeForCausalLM(nn.Module):
    def forward(self, x):
        return {"logits": x * 2, "hidden": x + 1}


def test_output_selection() -> None:
    named = [("logits", 0), ("hidden", 1), ("present.0.key", 2)]
    assert OutputSelection.parse(None).select(named, FakeForCausalLM()) == [0]
    assert OutputSelection.parse("default").select(named, nn.Linear(1, 1)) == [0, 1]
    assert OutputSelection.parse("all").select(named) == [0, 1, 2]
    assert OutputSelection.parse("hidden,logits").select(named) == [1, 0]
    assert OutputSelection.parse(["present.0.key"]).use_cache()
    with pytest.raises(
        UsageError,
        match=r"--outputs nope: the model returns no output of that name; it returns: logits, hidden",
    ):
        OutputSelection.parse("nope").select(named)
    with pytest.raises(UsageError, match="--outputs is empty"):
        OutputSelection.parse(" , ")
    assert is_causal_lm(FakeForCausalLM()) and not is_causal_lm(nn.Linear(1, 1))


# --------------------------------------------------------------------------- FlatModule


class KwDict(nn.Module):
    def forward(self, feats, *, scale, flag=True):
        y = feats["a"] @ feats["b"].T
        return {"y": y * scale if flag else y, "n": feats["a"].norm(dim=-1)}


def test_flat_module_roundtrip() -> None:
    model = KwDict()
    args = ({"a": torch.randn(3, 4), "b": torch.randn(5, 4)},)
    kwargs = {"scale": torch.tensor(2.0), "flag": False}
    flat = FlatModule.build(model, args, kwargs)
    assert flat.output_names == ["y", "n"] and flat.num_inputs == 3
    assert flat.example_output_shapes == [[3, 5], [3]]
    new_args = ({"a": torch.randn(2, 4), "b": torch.randn(6, 4)},)
    new_kwargs = {"scale": torch.tensor(3.0), "flag": False}
    got = flat(*flat.flat_inputs(new_args, new_kwargs))
    ref = model(*new_args, **new_kwargs)
    torch.testing.assert_close(got[0], ref["y"])  # flag=False is kept as a constant
    torch.testing.assert_close(got[1], ref["n"])


def test_flat_module_no_tensor_output() -> None:
    class NoTensors(nn.Module):
        def forward(self, x):
            return {"shape": tuple(x.shape)}

    with pytest.raises(UsageError, match="returned no tensors"):
        FlatModule.build(NoTensors(), (torch.randn(2),))


# --------------------------------------------------------------------------- dynamic shapes + capture


def test_make_dynamic_shapes_shares_dims() -> None:
    specs = [
        TensorSpec("a", "float32", ["batch", 4]),
        TensorSpec("b", "float32", ["batch", "n"]),
        TensorSpec("c", "int64", [3]),
    ]
    (shapes,) = flat_dynamic_shapes(specs, {"batch": DimRange(1, 8), "n": DimRange(2, 9)})
    assert shapes[0][0] is shapes[1][0]
    assert shapes[0][0].__name__ == "batch" and shapes[1][1].min == 2 and shapes[1][1].max == 9
    assert shapes[2] is None


def test_capture_dynamic_batch() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval()
    flat = FlatModule.build(model, (torch.randn(3, 4),))
    ep = capture(
        flat, (torch.randn(3, 4),), [TensorSpec("x", "float32", ["batch", 4])], {"batch": DimRange(1, 16)}
    )
    x = torch.randn(11, 4)
    torch.testing.assert_close(ep.module()(x)[0], model(x))


class Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


def _capture_error(
    model: nn.Module, x: torch.Tensor, spec: TensorSpec, dims: dict, strict: bool = False
) -> ExportError:
    flat = FlatModule.build(model, (x,))
    with pytest.raises(ExportError) as info:
        capture(flat, (x,), [spec], dims, strict=strict)
    return info.value


@pytest.mark.parametrize("strict", [False, True], ids=["non-strict", "strict"])
def test_data_dependent_branch_is_located(strict: bool) -> None:
    err = _capture_error(
        Branchy(),
        torch.randn(3, 4),
        TensorSpec("x", "float32", ["batch", 4]),
        {"batch": DimRange(1, 8)},
        strict,
    )
    assert err.stage == "capture"
    assert err.failure.kind == "data-dependent control flow"
    assert err.failure.location.filename == __file__
    assert err.failure.location.line == "if x.sum() > 0:"
    text = str(err)
    assert f"{__file__}:{err.failure.location.lineno} in forward" in text
    assert "torch.cond(x.sum() > 0, true_fn, false_fn, (x,))" in text
    if not strict:  # non-strict runs the Python: the traceback ends in the user's frame (for --pdb)
        tb = err.user_traceback
        while tb.tb_next is not None:
            tb = tb.tb_next
        assert tb.tb_frame.f_code.co_name == "forward" and tb.tb_frame.f_code.co_filename == __file__


def test_item_is_data_dependent_value() -> None:
    class UsesItem(nn.Module):
        def forward(self, x):
            n = int(x.max().item())
            return torch.zeros(n) + x.sum()

    err = _capture_error(
        UsesItem(), torch.ones(3, 4) * 3, TensorSpec("x", "float32", ["batch", 4]), {"batch": DimRange(1, 8)}
    )
    assert err.failure.kind == "data-dependent value"
    assert err.failure.location.filename == __file__
    assert "torch.zeros(n)" in err.failure.location.line or "item()" in err.failure.location.line


def test_specialized_dim_is_explained() -> None:
    class FixedBatch(nn.Module):
        def forward(self, x):
            return x.reshape(4, -1)

    err = _capture_error(
        FixedBatch(), torch.randn(4, 6), TensorSpec("x", "float32", ["batch", 6]), {"batch": DimRange(1, 16)}
    )
    assert err.failure.kind == "dynamic dim specialized"
    assert "'batch' to 4" in str(err)
    assert "--dim" in err.failure.hint


def test_analyze_plain_exception_finds_user_frame() -> None:
    def user_code():
        raise RuntimeError("boom happened")

    try:
        user_code()
    except RuntimeError as e:
        failure = analyze_failure(e, "capture")
        tb = user_traceback(e)
    assert failure.kind == "error" and "boom happened" in failure.summary
    assert (
        failure.location.function == "user_code"
        and failure.location.line == 'raise RuntimeError("boom happened")'
    )
    assert tb is not None


# --------------------------------------------------------------------------- contiguous rewrite, ONNX details


class TransposeContiguous(nn.Module):
    def forward(self, x):
        y = x.transpose(1, 2).contiguous()
        return y.reshape(y.shape[0], -1)


def test_rewrite_contiguous_keeps_values() -> None:
    model = TransposeContiguous()
    x = torch.randn(2, 3, 5)
    flat = FlatModule.build(model, (x,))
    spec = TensorSpec("x", "float32", ["batch", 3, "n"])
    ep = capture(flat, (x,), [spec], {"batch": DimRange(1, 8), "n": DimRange(2, 16)})
    assert rewrite_contiguous(ep) == 1
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert torch.ops.aten.contiguous.default not in targets and torch.ops.aten.clone.default in targets
    x2 = torch.randn(4, 3, 9)
    torch.testing.assert_close(ep.module()(x2)[0], model(x2))


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


def test_single_size_range_stays_static() -> None:
    """--dim n=5..5 means a fixed size: torch.export.Dim refuses min == max, so the axis stays static."""
    specs = [TensorSpec("x", "float32", ["batch", "seq"])]
    (shapes,) = flat_dynamic_shapes(specs, {"batch": DimRange(5, 5), "seq": DimRange(1, 8)})
    assert list(shapes[0]) == [1] and shapes[0][1].__name__ == "seq"
