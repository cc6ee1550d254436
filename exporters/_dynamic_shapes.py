"""The ``dynamic_shapes`` argument of :func:`torch.export.export`, built in one place.

Each named dynamic dim becomes one :class:`torch.export.Dim` with its range, shared by every input
that uses the name; a dim whose range holds one size (``--dim n=5..5``) stays static. Capture,
the structured inputs of :class:`~torchport.exporters._example_inputs.ExampleInputs` and the
re-capture that localization runs all build their ``dynamic_shapes`` from these two functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from torchport.runtimes._manifest import DimRange, TensorSpec

__all__ = ["export_dims", "flat_dynamic_shapes", "spec_axes"]


def export_dims(ranges: Mapping[str, DimRange], names: Iterable[str] = ()) -> dict[str, Any]:
    """One :class:`torch.export.Dim` per dynamic dim name.

    Args:
        ranges: the range of each named dim; a range of one size (``min == max``) makes no Dim.
        names: more dim names to make unbounded Dims for when they have no range.

    Example:
        >>> export_dims({"batch": DimRange(1, 64), "n": DimRange(5, 5)})
        {'batch': Dim('batch', min=1, max=64)}
    """
    dims = {
        name: torch.export.Dim(name, min=r.min, max=r.max) for name, r in ranges.items() if r.min != r.max
    }
    for name in names:
        if name not in ranges and name not in dims:
            dims[name] = torch.export.Dim(name)
    return dims


def spec_axes(spec: TensorSpec, dims: Mapping[str, Any]) -> dict[int, Any] | None:
    """``{axis: Dim}`` of one input from its spec's named dims (``None`` when all its dims are fixed)."""
    axes = {i: dims[d] for i, d in enumerate(spec.shape) if isinstance(d, str) and d in dims}
    return axes or None


def flat_dynamic_shapes(
    specs: Sequence[TensorSpec], ranges: Mapping[str, DimRange]
) -> tuple[tuple[dict[int, Any] | None, ...]]:
    """``dynamic_shapes`` for a module taking one tensor per spec (``forward(*tensors)``).

    Example:
        >>> specs = [TensorSpec("x", "float32", ["batch", 16])]
        >>> flat_dynamic_shapes(specs, {"batch": DimRange(1, 64)})
        (({0: Dim('batch', min=1, max=64)},),)
    """
    dims = export_dims(ranges, (d for s in specs for d in s.shape if isinstance(d, str)))
    return (tuple(spec_axes(s, dims) for s in specs),)
