"""Capture with torch.export.

:func:`capture` runs :func:`torch.export.export` (non-strict or strict) on a
:class:`~torchport.exporters._outputs.FlatModule` with the user's dynamic dims; a failure is
analysed (:mod:`~torchport.exporters._capture_failures`) into an error naming the op, the user's
line and what to change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from torchport.exporters._capture_failures import export_error
from torchport.exporters._dynamic_shapes import flat_dynamic_shapes
from torchport.exporters._torch_logs import quiet_torch_logs
from torchport.runtimes._manifest import DimRange, TensorSpec

__all__ = ["capture"]


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
