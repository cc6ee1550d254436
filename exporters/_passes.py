"""A small pass framework for ONNX models: named passes, a pipeline, and what each pass did.

A pass is any object with a ``name`` and ``__call__(model) -> (model, modified)``. The model is
an ``onnx.ModelProto`` or an ``onnx_ir.Model``; a pass accepts either and returns the kind it
works on (use :func:`as_proto` / :func:`as_ir` to convert). A :class:`PassPipeline` runs passes in
order, lets any of them be switched off by name, and records for each one::

    {"name", "modified", "nodes_before", "nodes_after", "fused": {"com.microsoft.Attention": 12, ...},
     "seconds", "skipped"}

which :func:`torchport.exporters.optimize_package` stores in the manifest's ``passes``.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import onnx
import onnx_ir as ir

from torchport.runtimes import OptimizationError, UsageError

AnyModel = onnx.ModelProto | ir.Model


@runtime_checkable
class Pass(Protocol):
    """The pass protocol: a ``name`` and ``__call__(model) -> (model, modified)``."""

    name: str

    def __call__(self, model: AnyModel) -> tuple[AnyModel, bool]: ...


def as_proto(model: AnyModel) -> onnx.ModelProto:
    """``model`` as an ``onnx.ModelProto`` (serialized from onnx-ir when needed)."""
    if isinstance(model, onnx.ModelProto):
        return model
    return ir.serde.serialize_model(model)


def as_ir(model: AnyModel) -> ir.Model:
    """``model`` as an ``onnx_ir.Model`` (deserialized from a proto when needed)."""
    if isinstance(model, ir.Model):
        return model
    return ir.serde.deserialize_model(model)


def op_counts(model: AnyModel) -> collections.Counter[str]:
    """Count of nodes by ``domain.op_type`` (``Attention`` in ``com.microsoft`` → ``com.microsoft.Attention``).

    Only the main graph is counted (subgraphs and functions are not).
    """
    counts: collections.Counter[str] = collections.Counter()
    if isinstance(model, onnx.ModelProto):
        nodes = ((n.domain, n.op_type) for n in model.graph.node)
    else:
        nodes = ((n.domain, n.op_type) for n in model.graph)
    for domain, op in nodes:
        key = op if domain in ("", "ai.onnx") else f"{domain}.{op}"
        counts[key] += 1
    return counts


@dataclass
class FunctionPass:
    """Wrap a plain function ``fn(model) -> (model, modified)`` as a named pass.

    Example:
        >>> def noop(model):
        ...     return model, False
        >>> FunctionPass("noop", noop).name
        'noop'
    """

    name: str
    fn: Callable[[AnyModel], tuple[AnyModel, bool]]
    description: str = ""

    def __call__(self, model: AnyModel) -> tuple[AnyModel, bool]:
        return self.fn(model)


@dataclass
class PassRecord:
    """What one pass did: the entry stored in ``manifest.passes``."""

    name: str
    modified: bool = False
    nodes_before: int = 0
    nodes_after: int = 0
    #: ops that appeared or grew in count (op -> how many more), e.g. fused com.microsoft ops
    fused: dict[str, int] = field(default_factory=dict)
    #: ops that disappeared or shrank (op -> how many fewer)
    removed: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "modified": self.modified,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "fused": dict(self.fused),
            "removed": dict(self.removed),
            "seconds": round(self.seconds, 4),
            "skipped": self.skipped,
        }
        if self.details:
            data["details"] = self.details
        return data


@dataclass
class PipelineResult:
    """The final model and one :class:`PassRecord` per pass (skipped passes included)."""

    model: AnyModel
    records: list[PassRecord]

    @property
    def modified(self) -> bool:
        return any(r.modified for r in self.records)

    def __bool__(self) -> bool:
        return True

    def to_list(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.records]

    def __str__(self) -> str:
        lines = [f"{'pass':<28} {'changed':>7} {'nodes':>13} {'seconds':>8}  fused"]
        for r in self.records:
            if r.skipped:
                lines.append(f"{r.name:<28} {'skipped':>7}")
                continue
            fused = ", ".join(f"{k}×{v}" for k, v in sorted(r.fused.items())) or "-"
            nodes = f"{r.nodes_before}→{r.nodes_after}"
            lines.append(
                f"{r.name:<28} {'yes' if r.modified else 'no':>7} {nodes:>13} {r.seconds:8.2f}  {fused}"
            )
        return "\n".join(lines)


class PassPipeline:
    """Run passes in order, skipping the ones named in ``disable``, and record what each did.

    Args:
        passes: the passes, in order.
        disable: names of passes to skip (each must name a pass of the pipeline).

    Raises:
        UsageError: a name in ``disable`` is not a pass of this pipeline (the message lists them).

    Example:
        >>> import onnx
        >>> p = PassPipeline([FunctionPass("noop", lambda m: (m, False))])
        >>> result = p(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])))
        >>> result.records[0].modified
        False
    """

    def __init__(self, passes: Sequence[Pass], disable: Iterable[str] = ()) -> None:
        self.passes = list(passes)
        names = [p.name for p in self.passes]
        self.disable = set(disable)
        unknown = sorted(self.disable - set(names))
        if unknown:
            raise UsageError(
                f"unknown pass {', '.join(map(repr, unknown))} in --disable; "
                f"this pipeline has: {', '.join(names) or 'no passes'}"
            )

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.passes]

    def __call__(self, model: AnyModel) -> PipelineResult:
        records: list[PassRecord] = []
        for p in self.passes:
            if p.name in self.disable:
                records.append(PassRecord(name=p.name, skipped=True))
                continue
            before = op_counts(model)
            start = time.perf_counter()
            try:
                new_model, modified = p(model)
            except OptimizationError:
                raise
            except Exception as e:  # a pass bug must name the pass; --disable is the way out
                raise OptimizationError(
                    f"optimization pass {p.name!r} failed: {type(e).__name__}: {str(e)[:300]}; "
                    f"skip it with --disable {p.name}"
                ) from e
            seconds = time.perf_counter() - start
            after = op_counts(new_model)
            grown = {k: after[k] - before.get(k, 0) for k in after if after[k] > before.get(k, 0)}
            shrunk = {k: before[k] - after.get(k, 0) for k in before if before[k] > after.get(k, 0)}
            record = PassRecord(
                name=p.name,
                modified=bool(modified),
                nodes_before=sum(before.values()),
                nodes_after=sum(after.values()),
                fused=grown,
                removed=shrunk,
                seconds=seconds,
                details=dict(getattr(p, "details", None) or {}),
            )
            records.append(record)
            model = new_model
        return PipelineResult(model=model, records=records)
