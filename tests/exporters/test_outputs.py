"""Output flattening and selection, and the flat wrapper (FlatModule) that capture runs on."""

from __future__ import annotations

import dataclasses
from collections import namedtuple

import pytest
import torch
from torch import nn

from torchport.exporters._outputs import FlatModule, OutputSelection, flatten_outputs, is_causal_lm
from torchport.runtimes import UsageError

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
