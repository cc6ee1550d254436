"""ONNX translation (torch.onnx dynamo path and the legacy TorchScript exporter) and saving.

* :func:`onnx_from_program` translates an ExportedProgram with ``torch.onnx.export(ep, dynamo=True)``.
* :func:`onnx_from_torchscript` runs the legacy exporter (``dynamo=False``) with ``dynamic_axes``
  built from the same named dims.
* :func:`finalize_model` renames the exporter's symbolic dims (``s31``) to the user's dim names
  (``batch``), and records producer metadata in ``metadata_props``.
* :func:`save_model` writes ``model.onnx``, with every large tensor in one ``model.onnx.data`` file
  when the weights exceed ``external_data_threshold`` (2 GB by default: protobuf's limit).
* :func:`output_specs` reads the output signature back from the graph, dims named where possible.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx_ir as ir
import torch

from torchport.exporters._onnx_files import EXTERNAL_DATA_THRESHOLD, save_onnx
from torchport.runtimes._dtypes import ONNX_ELEM_TYPES
from torchport.runtimes._errors import ExportError, first_line
from torchport.runtimes._manifest import DimRange, TensorSpec

__all__ = [
    "EXTERNAL_DATA_THRESHOLD",
    "finalize_model",
    "onnx_from_program",
    "onnx_from_torchscript",
    "output_specs",
    "save_model",
]

#: weights above this many bytes are saved as external data (protobuf cannot hold 2 GB)
#: opset the TorchScript exporter uses when none is asked for (its newest well-supported one)
TORCHSCRIPT_DEFAULT_OPSET = 17
#: tensors smaller than this stay inside model.onnx even when external data is used


def onnx_from_program(
    program: torch.export.ExportedProgram,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int | None = None,
    optimize: bool = True,
    custom_translation_table: dict[Any, Any] | None = None,
) -> ir.Model:
    """Translate an ExportedProgram to ONNX (in memory) with torch.onnx's dynamo exporter.

    Raises whatever torch.onnx raises; the strategy runner analyses it.

    Example:
        >>> model = onnx_from_program(ep, input_names=["x"], output_names=["y"], opset=18)  # doctest: +SKIP
    """
    kwargs: dict[str, Any] = {}
    if opset is not None:
        kwargs["opset_version"] = opset
    if custom_translation_table:
        kwargs["custom_translation_table"] = custom_translation_table
    onnx_program = torch.onnx.export(
        program,
        (),
        dynamo=True,
        input_names=list(input_names),
        output_names=list(output_names),
        optimize=optimize,
        verbose=False,
        report=False,
        **kwargs,
    )
    if onnx_program is None:  # pragma: no cover - dynamo=True always returns a program
        raise RuntimeError("torch.onnx.export returned no program")
    return onnx_program.model


def onnx_from_torchscript(
    module: torch.nn.Module,
    flat_inputs: tuple[torch.Tensor, ...],
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    specs: Sequence[TensorSpec],
    opset: int | None = None,
) -> tuple[ir.Model, list[str]]:
    """Run the legacy TorchScript-based exporter, with ``dynamic_axes`` from the specs' dim names.

    Returns:
        The model and the tracer warnings it raised (``"might cause the trace to be incorrect"``...),
        which the caller reports.
    """
    dynamic_axes = {
        spec.name: {axis: d for axis, d in enumerate(spec.shape) if isinstance(d, str)} for spec in specs
    }
    dynamic_axes = {k: v for k, v in dynamic_axes.items() if v}
    with tempfile.TemporaryDirectory(prefix="torchport-ts-") as tmp:
        path = Path(tmp) / "model.onnx"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.onnx.export(
                module,
                tuple(flat_inputs),
                str(path),
                dynamo=False,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes or None,
                opset_version=opset or TORCHSCRIPT_DEFAULT_OPSET,
                do_constant_folding=True,
            )
        model = ir.load(path)
        # pull external tensors (if the exporter wrote any) into memory before tmp disappears
        for init in model.graph.initializers.values():
            if init.const_value is not None and isinstance(init.const_value, ir.ExternalTensor):
                init.const_value = ir.Tensor(init.const_value.numpy(), name=init.name)
    tracer = sorted(
        {
            first_line(str(w.message))
            for w in caught
            if "TracerWarning" in type(w.message).__name__ or "trace" in str(w.message).lower()
        }
    )
    return model, tracer


_SYM_RE = re.compile(r"\b[a-zA-Z_]\w*\b")


def finalize_model(
    model: ir.Model,
    specs: Sequence[TensorSpec],
    dynamic_dims: Mapping[str, DimRange],
    metadata: Mapping[str, str],
) -> ir.Model:
    """Name dynamic dims after the user's dims, and record producer metadata.

    The exporter names symbolic dims ``s31``, ``s80``...; each input's dims are matched position by
    position with its spec, and every symbol is renamed throughout the graph (``s31*2`` becomes
    ``batch*2``).
    """
    from torchport import __version__

    rename: dict[str, str] = {}
    for value, spec in zip(model.graph.inputs, specs, strict=False):
        if value.shape is None:
            continue
        for dim, want in zip(value.shape, spec.shape, strict=False):
            if isinstance(dim, ir.SymbolicDim) and isinstance(want, str) and dim.value and dim.value != want:
                rename.setdefault(dim.value, want)

    def fix(value: ir.Value) -> None:
        if value.shape is None or not rename:
            return
        changed = False
        dims: list[Any] = []
        for d in value.shape:
            if isinstance(d, ir.SymbolicDim) and d.value:
                new = _SYM_RE.sub(lambda m: rename.get(m.group(0), m.group(0)), d.value)
                changed |= new != d.value
                dims.append(new)
            else:
                dims.append(d)
        if changed:
            value.shape = ir.Shape(dims)

    if rename:
        for value in model.graph.inputs:
            fix(value)
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            for value in node.outputs:
                fix(value)
        for value in model.graph.outputs:
            fix(value)

    model.producer_name = "torchport"
    model.producer_version = __version__
    props = dict(model.metadata_props)
    props.update({k: str(v) for k, v in metadata.items()})
    model.metadata_props.clear()
    model.metadata_props.update(props)
    return model


def save_model(
    model: ir.Model, path: str | os.PathLike[str], *, external_data_threshold: int = EXTERNAL_DATA_THRESHOLD
) -> list[str]:
    """Save ``model`` to ``path``; weights go to ``<name>.data`` next to it when they exceed the threshold.

    Returns:
        The names of the data files written next to ``path`` (``[]`` without external data).

    Raises:
        ExportError: stage ``"save"`` when writing fails.
    """
    try:
        return save_onnx(model, path, external_data_threshold=external_data_threshold)
    except (OSError, ValueError) as e:
        raise ExportError(f"save failed: cannot write {path}: {e}", stage="save") from e


def _dtype_name(dtype: ir.DataType | None) -> str:
    if dtype is None:
        return "float32"
    return ONNX_ELEM_TYPES.get(int(dtype.value), "float32")


def output_specs(
    model: ir.Model,
    dynamic_dims: Mapping[str, DimRange],
    eager_shapes: Sequence[Sequence[int]] | None = None,
    program_dims: Sequence[Sequence[int | str | None]] | None = None,
) -> list[TensorSpec]:
    """Output signature from the graph: ints for static dims, the user's dim names where the graph's
    symbolic dim is one of them, ``None`` for a dim that is an expression or unknown.

    ``program_dims`` (output shapes from the captured program, see
    :func:`~torchport.exporters._strategies.program_output_dims`) fill dims the ONNX graph left
    unknown (ONNX shape inference does not see through every op, LSTM's state outputs for one).
    """
    specs = []
    for i, value in enumerate(model.graph.outputs):
        shape: list[int | str | None] = []
        if value.shape is not None:
            for d in value.shape:
                if isinstance(d, int):
                    shape.append(int(d))
                elif isinstance(d, ir.SymbolicDim) and d.value in dynamic_dims:
                    shape.append(d.value)
                else:
                    shape.append(None)
        elif eager_shapes is not None and i < len(eager_shapes):
            shape = [None] * len(eager_shapes[i])
        if program_dims is not None and i < len(program_dims) and len(program_dims[i]) == len(shape):
            shape = [
                p if s is None and (isinstance(p, int) or p in dynamic_dims) else s
                for s, p in zip(shape, program_dims[i], strict=True)
            ]
        specs.append(
            TensorSpec(name=value.name or f"output_{i}", dtype=_dtype_name(value.dtype), shape=shape)
        )
    return specs
