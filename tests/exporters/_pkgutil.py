"""Test helper for optimize/validate tests: build a model package with plain torch.onnx.export + write_package.

Used until/independently of export_model, so the optimize/validate tests exercise a real
dynamo export of a tiny model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import torch

from torchport.runtimes import DimRange, Manifest, TensorSpec, write_package
from torchport.runtimes._dtypes import ONNX_ELEM_TYPES


def _specs(values: Any) -> list[TensorSpec]:
    specs = []
    for v in values:
        t = v.type.tensor_type
        shape = [
            d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None)
            for d in t.shape.dim
        ]
        specs.append(TensorSpec(v.name, ONNX_ELEM_TYPES[t.elem_type], shape))
    return specs


def make_package(
    module: torch.nn.Module,
    args: tuple,
    dest: str | Path,
    dynamic: dict[str, dict[int, tuple[str, int, int]]] | None = None,
    kwargs: dict | None = None,
    value_ranges: dict[str, tuple[int, int]] | None = None,
    name: str = "model",
):
    """Export ``module`` with torch.onnx.export(dynamo=True) into a package at ``dest``."""
    dynamic = dynamic or {}
    dims: dict[str, Any] = {}
    dynamic_shapes = None
    if dynamic:
        dynamic_shapes = {}
        for inp, axes in dynamic.items():
            dynamic_shapes[inp] = {}
            for axis, (dname, lo, hi) in axes.items():
                if dname not in dims:
                    dims[dname] = (torch.export.Dim(dname, min=lo, max=hi), lo, hi)
                dynamic_shapes[inp][axis] = dims[dname][0]
    prog = torch.onnx.export(
        module, args, kwargs=kwargs or {}, dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False
    )
    with write_package(dest, overwrite=True) as w:
        prog.save(str(w.path / "model.onnx"))
        proto = onnx.load(str(w.path / "model.onnx"), load_external_data=False)
        inputs = _specs(proto.graph.input)
        for spec in inputs:
            if value_ranges and spec.name in value_ranges:
                spec.value_range = value_ranges[spec.name]
        manifest = Manifest(
            name=name,
            inputs=inputs,
            outputs=_specs(proto.graph.output),
            dynamic_dims={k: DimRange(lo, hi) for k, (_, lo, hi) in dims.items()},
            source={"kind": "test", "reference": type(module).__name__},
        )
        return w.commit(manifest)


def tiny_bert(layers: int = 2):
    """A 2-layer BERT with random weights (seed 0) from a small config."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return BertModel(cfg).eval()


BERT_DYNAMIC = {
    "input_ids": {0: ("batch", 1, 4), 1: ("seq", 2, 32)},
    "attention_mask": {0: ("batch", 1, 4), 1: ("seq", 2, 32)},
}
BERT_RANGES = {"input_ids": (0, 99), "attention_mask": (1, 1)}


def make_bert_package(dest: str | Path, layers: int = 2):
    """A tiny-BERT package (input_ids, attention_mask; batch 1..4, seq 2..32)."""
    model = tiny_bert(layers)
    ids = torch.randint(0, 100, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.int64)
    return model, make_package(
        model, (ids, mask), dest, dynamic=BERT_DYNAMIC, value_ranges=BERT_RANGES, name="bert"
    )
