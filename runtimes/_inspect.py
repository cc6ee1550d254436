"""``torchport inspect``: what a model package holds, without running it."""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torchport.runtimes._errors import PackageError
from torchport.runtimes._package import ModelPackage
from torchport.runtimes._spec_syntax import format_spec
from torchport.runtimes._table import format_table, human_size

if TYPE_CHECKING:
    import onnx


@dataclass
class VariantSummary:
    """Graph facts of one ONNX variant file."""

    name: str
    file: str
    opsets: dict[str, int]
    op_histogram: dict[str, int]
    node_count: int
    size: int
    parity: dict[str, Any] | None


@dataclass
class PackageSummary:
    """Signature, dims, opset, ops, files and parity of a package; ``str()`` renders it as text."""

    package: ModelPackage
    variants: list[VariantSummary]

    @property
    def total_size(self) -> int:
        return sum(r.size for r in self.package.manifest.files.values())

    def to_dict(self) -> dict[str, Any]:
        m = self.package.manifest
        return {
            "path": str(self.package.path),
            "name": m.name,
            "version": m.version,
            "inputs": [s.to_dict() for s in m.inputs],
            "outputs": [s.to_dict() for s in m.outputs],
            "dynamic_dims": {k: v.to_dict() for k, v in m.dynamic_dims.items()},
            "producer": m.producer,
            "source": m.source,
            "export": m.export,
            "variants": [v.__dict__ for v in self.variants],
            "files": {k: v.to_dict() for k, v in m.files.items()},
            "total_size": self.total_size,
            "validated": m.validated,
            "parity": m.parity,
        }

    def __str__(self) -> str:
        m = self.package.manifest
        lines = [f"{m.name} {m.version}  ({self.package.path})"]
        producer = ", ".join(f"{k} {v}" for k, v in m.producer.items())
        if producer:
            lines.append(f"producer: {producer}")
        if m.source:
            lines.append(f"source: {m.source.get('kind', '?')} {m.source.get('reference', '')}")
        if m.export.get("strategy"):
            lines.append(f"export strategy: {m.export['strategy']}")
        lines.append("")
        lines += ["Inputs", *(f"  {format_spec(s)}" for s in m.inputs)]
        lines += ["Outputs", *(f"  {format_spec(s)}" for s in m.outputs)]
        if m.dynamic_dims:
            lines.append("")
            rows = [[k, r.min, r.max] for k, r in m.dynamic_dims.items()]
            lines.append(format_table(["dim", "min", "max"], rows, title="Dynamic dims"))
        for v in self.variants:
            lines.append("")
            opset = ", ".join(f"{d or 'ai.onnx'} {n}" for d, n in sorted(v.opsets.items()))
            lines.append(
                f"Variant {v.name}: {v.file}, {human_size(v.size)}, {v.node_count} nodes, opset {opset}"
            )
            top = sorted(v.op_histogram.items(), key=lambda kv: (-kv[1], kv[0]))
            lines.append(format_table(["op", "count"], top))
        lines.append("")
        rows = [[f, r.size, human_size(r.size), r.sha256[:16]] for f, r in sorted(m.files.items())]
        lines.append(format_table(["file", "bytes", "size", "sha256"], rows, title="Files"))
        lines.append(f"total: {human_size(self.total_size)}")
        lines.append("")
        if m.parity:
            lines.append("Parity: " + _parity_line(m.parity))
        elif m.extra.get("validation") == "skipped":
            lines.append("Parity: not validated (exported with --no-validate)")
        else:
            lines.append("Parity: not validated against eager PyTorch (run `torchport validate`)")
        lines += [f"  {v.name}: {_link(v.parity)}" for v in self.variants if v.parity]
        if isinstance(m.extra.get("eval"), dict):
            from torchport.runtimes._eval import format_eval

            lines += ["", format_eval(m.extra["eval"])]
        return "\n".join(lines)


def _link(parity: dict[str, Any]) -> str:
    """One variant's links of the trust chain: ``passed vs eager PyTorch (...)``, then, for a model
    optimized or derived afterwards, ``← passed vs the validated fp32 model (...)``."""
    names = {"eager": "eager PyTorch", "fp32": "the validated fp32 model"}
    first = {k: v for k, v in parity.items() if k not in ("optimized", "reference")}
    text = f"{_parity_line(first)} vs {names.get(parity.get('reference', 'eager'), parity.get('reference'))}"
    optimized = parity.get("optimized")
    if optimized:
        text += f"; optimized graph: {_link(optimized)}"
    return text


def _parity_line(parity: dict[str, Any]) -> str:
    status = parity.get("passed")
    head = "passed" if status else ("FAILED" if status is False else "recorded")
    details = ", ".join(
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in parity.items()
        if k != "passed" and isinstance(v, int | float | str)
    )
    return f"{head}" + (f" ({details})" if details else "")


def _summarize_variant(package: ModelPackage, name: str) -> VariantSummary:
    import onnx  # here, not at module level: the serving image has no onnx

    variant = package.manifest.variants[name]
    path = package.file(variant.file)
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends
        raise PackageError(f"package {package.path}: cannot read {variant.file}: {e}") from e
    histogram: collections.Counter[str] = collections.Counter()

    def count(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            histogram[
                f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
            ] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    count(attr.g)
                for g in attr.graphs:
                    count(g)

    count(model.graph)
    files = [variant.file, *variant.data_files]
    size = sum(package.manifest.files[f].size for f in files if f in package.manifest.files)
    return VariantSummary(
        name=name,
        file=variant.file,
        opsets={o.domain: o.version for o in model.opset_import},
        op_histogram=dict(histogram),
        node_count=sum(histogram.values()),
        size=size,
        parity=variant.parity,
    )


def inspect_package(path: str | os.PathLike[str], *, verify: bool = True) -> PackageSummary:
    """Load a package (verifying hashes) and summarize it.

    Example:
        >>> summary = inspect_package("out/cnn")       # doctest: +SKIP
        >>> print(summary)                               # signature, dims, opset, ops, files, parity
        >>> summary.variants[0].op_histogram["Conv"]
        2
    """
    package = ModelPackage.load(path, verify=verify)
    return PackageSummary(
        package=package, variants=[_summarize_variant(package, v) for v in package.manifest.variants]
    )
