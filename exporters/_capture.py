"""Capture with torch.export.

:func:`capture` runs :func:`torch.export.export` (non-strict or strict) on a
:class:`~torchport.exporters._outputs.FlatModule` with the user's dynamic dims; a failure is
analysed (:mod:`~torchport.exporters._capture_failures`) into an error naming the op, the user's
line and what to change. :func:`capture_resizing` retries at other example sizes when torch.export
specialized a dynamic dim at the first ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from torchport.exporters._capture_failures import export_error
from torchport.exporters._dynamic_shapes import flat_dynamic_shapes
from torchport.exporters._example_sizes import retry_sizes
from torchport.exporters._torch_logs import quiet_torch_logs
from torchport.runtimes._errors import ExportError
from torchport.runtimes._manifest import DimRange, TensorSpec

__all__ = ["Captured", "capture", "capture_resizing"]


def capture(
    module: torch.nn.Module,
    flat_inputs: tuple[torch.Tensor, ...],
    specs: Sequence[TensorSpec],
    dynamic_dims: Mapping[str, DimRange],
    *,
    strict: bool = False,
) -> torch.export.ExportedProgram:
    """Capture ``module`` (a :class:`FlatModule`) with torch.export and the given dynamic dims.

    Raises:
        ExportError: stage ``"capture"``, with ``.failure`` (:class:`CaptureFailure`) and
            ``.user_traceback``.

    Example:
        >>> from torchport.exporters._outputs import FlatModule
        >>> flat = FlatModule.build(torch.nn.Linear(4, 2), (torch.randn(3, 4),))
        >>> ep = capture(flat, (torch.randn(3, 4),), [TensorSpec("x", "float32", ["batch", 4])],
        ...              {"batch": DimRange(1, 8)})
    """
    dynamic_shapes = flat_dynamic_shapes(specs, dynamic_dims)
    try:
        with quiet_torch_logs():
            return torch.export.export(
                module, tuple(flat_inputs), dynamic_shapes=dynamic_shapes, strict=strict
            )
    except Exception as e:  # noqa: BLE001 - every capture failure is analysed and re-raised
        mode = "strict" if strict else "non-strict"
        raise export_error("capture", e, prefix=f"torch.export ({mode}) failed") from e


@dataclass
class Captured:
    """A captured program and the example inputs (and their dim sizes) it was captured at.

    Attributes:
        program: the :class:`torch.export.ExportedProgram`.
        flat_inputs: the inputs it was captured with.
        sizes: the size of each dynamic dim in ``flat_inputs``.
        note: when other sizes than the first were needed, which ones worked and why the first failed.
    """

    program: torch.export.ExportedProgram
    flat_inputs: tuple[torch.Tensor, ...]
    sizes: dict[str, int]
    note: str | None = None


def capture_resizing(
    module: torch.nn.Module,
    flat_inputs: tuple[torch.Tensor, ...],
    specs: Sequence[TensorSpec],
    dynamic_dims: Mapping[str, DimRange],
    *,
    sizes: Mapping[str, int],
    resize: Callable[[Mapping[str, int]], tuple[torch.Tensor, ...]] | None,
    strict: bool = False,
) -> Captured:
    """:func:`capture`; when torch.export specializes a dynamic dim at the example ``sizes``, capture
    again at other sizes well inside each range (:func:`retry_sizes`) before giving up.

    torch.export keeps a dim symbolic only if the model behaves alike over its whole range, yet what
    it sees depends on the example: a dim of size 1 is specialized, and two dims of the same size
    that the model compares (a square image, ``if h == w``) are tied together. Other sizes avoid both.

    Args:
        module, flat_inputs, specs, dynamic_dims, strict: as :func:`capture`.
        sizes: the size of each dynamic dim in ``flat_inputs``.
        resize: new flat inputs with the dynamic dims at the given sizes (``None``: no retry).

    Raises:
        ExportError: the first capture's error when no other size helped; its summary lists the sizes
            tried.
    """
    try:
        return Captured(
            capture(module, flat_inputs, specs, dynamic_dims, strict=strict), flat_inputs, dict(sizes)
        )
    except ExportError as first:
        if resize is None or not _specialized(first):
            raise
        static = {int(d) for s in specs for d in s.shape if isinstance(d, int)}
        tried = [dict(sizes)]
        for candidate in retry_sizes(dynamic_dims, sizes, static, vary=first.failure.dims):
            inputs = resize(candidate)
            try:
                program = capture(module, inputs, specs, dynamic_dims, strict=strict)
            except ExportError as e:
                tried.append(candidate)
                if not _specialized(e):
                    break
                continue
            note = (
                f"captured at example size {_changed(candidate, sizes)}: at {_changed(sizes, candidate)} "
                f"{first.failure.summary}"
            )
            return Captured(program, inputs, candidate, note)
        if len(tried) > 1:
            first.failure.summary += (
                " (example sizes tried: " + "; ".join(_changed(t, {}) for t in tried) + ")"
            )
        raise


def _specialized(error: ExportError) -> bool:
    return error.failure is not None and error.failure.kind == "dynamic dim specialized"


def _changed(sizes: Mapping[str, int], other: Mapping[str, int]) -> str:
    """``h=40, w=41``: the sizes in ``sizes`` that differ from ``other``."""
    return ", ".join(f"{k}={v}" for k, v in sizes.items() if other.get(k) != v)
