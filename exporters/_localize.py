"""Find the first ONNX node whose value diverges from eager PyTorch, and the user's source line.

How the two graphs are matched: the dynamo ONNX exporter (``torch.onnx.export(dynamo=True)``)
names the ONNX value that carries the result of an FX node after that node (FX ``%linear`` →
ONNX value ``linear``) and stamps every ONNX node with metadata (``pkg.torch.onnx.fx_node``,
``pkg.torch.onnx.name_scopes``, ``pkg.torch.onnx.stack_trace``). Optimization passes keep most
of these names (ONNX Runtime's offline optimizer drops the metadata but keeps the names), so:

1. the eager side runs the ExportedProgram's FX graph node by node (``torch.fx.Interpreter``) and
   keeps every intermediate tensor by node name;
2. the ONNX side exposes every intermediate value as an extra graph output and runs in ONNX
   Runtime with graph optimizations off, so each value is what that node computed;
3. walking the ONNX nodes in graph (topological) order, the first node with an output matched to
   an FX node beyond tolerance is reported with its op type, its inputs' ranges and the source
   line (from the ONNX node's stack-trace metadata, else from the FX node's ``stack_trace``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from torchport.exporters._source_lines import location_in_text
from torchport.exporters._torch_logs import quiet_torch_logs
from torchport.runtimes._parity import InputRange, Localization, cosine

_FX_NAME = re.compile(r"^%([A-Za-z0-9_]+)\s*:")


# ---------------------------------------------------------------- eager side


def exported_program_for(
    module: Any, args: tuple, kwargs: Mapping[str, Any] | None = None, dynamic_shapes: Any = None
) -> Any:
    """The ExportedProgram the dynamo ONNX exporter translates (after its decompositions).

    Its FX node names are the names the exporter gives ONNX values. Pass the ``dynamic_shapes``
    the model was exported with: FX node names depend on them (symbolic shape arithmetic takes
    names from the same counters, ``mul`` becomes ``mul_4``).
    """
    import torch

    with quiet_torch_logs():  # torch.onnx's registry logs (torchvision ops skipped...) on first use
        # the same two steps as ``export``: torch.export (non-strict), then the ONNX translation
        ep = torch.export.export(
            module,
            tuple(args),
            kwargs=dict(kwargs or {}) or None,
            dynamic_shapes=dynamic_shapes,
            strict=False,
        )
        prog = torch.onnx.export(ep, (), dynamo=True, verbose=False, optimize=False, report=False)
    assert prog is not None  # the dynamo exporter returns its program
    return prog.exported_program


def fx_intermediates(
    exported_program: Any, args: tuple, kwargs: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the FX graph node by node; return ``({node name: tensor}, {node name: fx node})``."""
    import torch
    import torch.fx
    from torch.utils import _pytree as pytree

    gm = exported_program.module()
    values: dict[str, Any] = {}
    nodes: dict[str, Any] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            result = super().run_node(n)
            if isinstance(result, torch.Tensor) and n.op == "call_function":
                values[n.name] = result.detach()
                nodes[n.name] = n
            return result

    in_spec = getattr(gm, "_in_spec", None)
    if in_spec is not None:
        from torch.fx._pytree import tree_flatten_spec

        flat = tree_flatten_spec((tuple(args), dict(kwargs or {})), in_spec)
    else:
        flat = pytree.tree_leaves((tuple(args), dict(kwargs or {})))
    with torch.no_grad():
        Recorder(gm).run(*flat)
    # the graph of ep.module() may name nodes differently from the ExportedProgram's graph; add those
    for n in exported_program.graph.nodes:
        if n.op == "call_function" and n.name not in nodes and n.name in values:
            nodes[n.name] = n
    return values, nodes


# ---------------------------------------------------------------- ONNX side


def onnx_intermediates(
    model: onnx.ModelProto | str | Path, feeds: Mapping[str, np.ndarray], names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Run ``model`` in ONNX Runtime (optimizations off) exposing intermediate values as outputs.

    Args:
        model: the ONNX model or its path.
        feeds: the inputs.
        names: values to expose (default: every node output of the main graph).
    """
    import onnxruntime as ort

    proto = onnx.load(str(model)) if not isinstance(model, onnx.ModelProto) else model
    proto = (
        onnx.ModelProto.FromString(proto.SerializeToString()) if proto.ByteSize() < 1_800_000_000 else proto
    )
    existing = {o.name for o in proto.graph.output}
    wanted = list(names) if names is not None else [o for n in proto.graph.node for o in n.output if o]
    for name in wanted:
        if name not in existing:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
            existing.add(name)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    results = sess.run(out_names, dict(feeds))
    return {n: r for n, r in zip(out_names, results, strict=True) if isinstance(r, np.ndarray)}


def _meta(node: onnx.NodeProto) -> dict[str, str]:
    return {p.key: p.value for p in node.metadata_props}


def localize(
    model: onnx.ModelProto | str | os.PathLike[str],
    feeds: Mapping[str, np.ndarray],
    *,
    module: Any = None,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    exported_program: Any = None,
    dynamic_shapes: Any = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    min_cosine: float | None = None,
) -> Localization:
    """Find the first ONNX node of ``model`` whose output diverges from eager PyTorch on one input.

    Args:
        model: the ONNX model (or its path) that failed validation.
        feeds: the ONNX inputs ``{name: array}`` of the failing case.
        module: the eager model; with ``args``/``kwargs`` (the same input as torch tensors) it is
            captured with the dynamo ONNX exporter to get the FX graph, unless
            ``exported_program`` is given.
        exported_program: the ExportedProgram the ONNX model was translated from (its FX node
            names must be the ONNX value names).
        dynamic_shapes: the ``dynamic_shapes`` the model was exported with (see
            :func:`~torchport.exporters._dynamic_shapes.flat_dynamic_shapes`), so the re-captured FX
            graph names nodes the same way.
        atol / rtol: a value diverges when ``max|onnx - eager| > atol + rtol * max|eager|``.
        min_cosine: if given, a value also diverges when its cosine similarity drops below it
            (used for fp16 / int8 variants, where small absolute errors are expected).

    Returns:
        A :class:`Localization` (falsy with a ``message`` when no matched value diverges).

    Example:
        >>> loc = localize("out/m/model.onnx", {"x": x.numpy()}, module=model, args=(x,))  # doctest: +SKIP
        >>> print(loc)
        first diverging node: node_mul_4 (Mul) -> value 'mul_4' (FX node mul_4 = aten.mul.Tensor)
          ...
          source: /home/me/model.py:12
            z = torch.relu(y) * 2.0
    """
    proto = onnx.load(str(model)) if not isinstance(model, onnx.ModelProto) else model
    if exported_program is None:
        if module is None:
            raise ValueError("localize needs module (with args/kwargs) or exported_program")
        try:
            exported_program = exported_program_for(module, args, kwargs, dynamic_shapes)
        except Exception:
            if dynamic_shapes is None:
                raise
            # e.g. a dim of size 1 in this input specializes; names may then differ a little
            exported_program = exported_program_for(module, args, kwargs, None)
    fx_values, fx_nodes = fx_intermediates(exported_program, args, kwargs)
    ort_values = onnx_intermediates(proto, feeds)
    initializers = {i.name: i for i in proto.graph.initializer}
    compared = 0
    for node in proto.graph.node:
        for out in node.output:
            if out not in fx_values or out not in ort_values:
                continue
            ref = (
                fx_values[out].float().numpy()
                if fx_values[out].is_floating_point()
                else fx_values[out].numpy()
            )
            got = ort_values[out]
            if ref.shape != got.shape:
                continue
            compared += 1
            ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
            if not np.all(np.isfinite(ref64)) or not np.all(np.isfinite(got64)):
                same = np.array_equal(np.isnan(ref64), np.isnan(got64)) and np.allclose(
                    np.nan_to_num(got64), np.nan_to_num(ref64), atol=atol, rtol=rtol
                )
                diff = float("inf") if not same else 0.0
            else:
                diff = float(np.max(np.abs(got64 - ref64))) if ref64.size else 0.0
            scale = float(np.max(np.abs(ref64))) if ref64.size else 0.0
            cos = cosine(got64, ref64) if ref64.size else 1.0
            diverged = diff > atol + rtol * scale
            if min_cosine is not None:
                diverged = cos < min_cosine and diff > atol
            if not diverged:
                continue
            return _report(
                node,
                out,
                diff,
                diff / scale if scale else float("inf"),
                cos,
                compared,
                ort_values,
                initializers,
                fx_nodes.get(out),
            )
    return Localization(
        found=False,
        compared=compared,
        message=(
            f"none of the {compared} intermediate values matched between the FX graph and the ONNX graph "
            "diverges beyond tolerance; the divergence is in an unmatched (fused or renamed) node, or only "
            "in ONNX Runtime's own graph optimizations"
            if compared
            else "no ONNX value could be matched to an FX node (localization follows the value names of the "
            "torch.onnx dynamo exporter; a TorchScript export or a pass that renames values hides them)"
        ),
    )


def _report(
    node: onnx.NodeProto,
    value: str,
    max_abs: float,
    max_rel: float,
    cosine: float,
    compared: int,
    ort_values: Mapping[str, np.ndarray],
    initializers: Mapping[str, onnx.TensorProto],
    fx_node: Any,
) -> Localization:
    inputs = []
    for name in node.input:
        if not name:
            continue
        arr = ort_values.get(name)
        if arr is None and name in initializers:
            arr = numpy_helper.to_array(initializers[name])
        if arr is None or arr.dtype.kind not in "biuf" or arr.size == 0:
            inputs.append(
                InputRange(
                    name,
                    tuple(arr.shape) if arr is not None else None,
                    str(arr.dtype) if arr is not None else None,
                    None,
                    None,
                )
            )
        else:
            inputs.append(
                InputRange(name, tuple(arr.shape), str(arr.dtype), float(arr.min()), float(arr.max()))
            )
    meta = _meta(node)
    fx_target = None
    fx_name = value
    if "pkg.torch.onnx.fx_node" in meta:
        m = _FX_NAME.match(meta["pkg.torch.onnx.fx_node"])
        fx_name = m.group(1) if m else value
        t = re.search(r"target=([^\]]+)\]", meta["pkg.torch.onnx.fx_node"])
        fx_target = t.group(1).replace("torch.ops.", "") if t else None
    trace = meta.get("pkg.torch.onnx.stack_trace")
    if fx_node is not None:
        fx_target = fx_target or str(getattr(fx_node.target, "__name__", fx_node.target)).replace(
            "torch.ops.", ""
        )
        trace = trace or fx_node.meta.get("stack_trace")
    where = location_in_text(trace)
    module = None
    stack = getattr(fx_node, "meta", {}).get("nn_module_stack") if fx_node is not None else None
    if stack:
        path, kind = list(stack.values())[-1]
        kind_name = getattr(kind, "__name__", None) or str(kind).rsplit(".", 1)[-1].strip("'>")
        module = f"{path or '<root>'} ({kind_name})"
    elif "pkg.torch.onnx.class_hierarchy" in meta and "pkg.torch.onnx.name_scopes" in meta:
        try:
            import ast

            scopes = ast.literal_eval(meta["pkg.torch.onnx.name_scopes"])
            classes = ast.literal_eval(meta["pkg.torch.onnx.class_hierarchy"])
            if len(scopes) >= 2 and len(classes) >= 2:
                module = f"{scopes[-2] or '<root>'} ({classes[-2].rsplit('.', 1)[-1]})"
        except (ValueError, SyntaxError):
            module = None
    return Localization(
        found=True,
        node=node.name or f"<{node.op_type} producing {value}>",
        op_type=node.op_type,
        domain=node.domain,
        value=value,
        fx_node=fx_name,
        fx_target=fx_target,
        max_abs=max_abs,
        max_rel=max_rel,
        cosine=cosine,
        inputs=inputs,
        source=f"{where.filename}:{where.lineno}" if where else None,
        code=where.line if where else None,
        module=module,
        compared=compared,
    )
