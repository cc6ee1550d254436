"""What ``export_model``'s stages share, handed to its ``before_commit`` hook (the parity gate)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchport.exporters._example_inputs import ExampleInputs
from torchport.exporters._loaded_model import LoadedModel
from torchport.exporters._outputs import FlatModule
from torchport.exporters._progress import Progress
from torchport.runtimes._manifest import Manifest
from torchport.runtimes._package import PackageWriter

__all__ = ["BeforeCommit", "ExportContext"]


@dataclass
class ExportContext:
    """What the stages share; handed to the ``before_commit`` hook.

    Attributes:
        loaded: the loaded model (:class:`~torchport.exporters.LoadedModel`).
        example: the example inputs (:class:`~torchport.exporters.ExampleInputs`) with specs and dims.
        flat: the wrapper that was exported (flat tensors in, flat tuple of selected outputs out);
            ``flat(*flat.flat_inputs(*example.make(dims)))`` is the eager reference for validation.
        writer: the package being written (``writer.path`` holds ``model.onnx`` already).
        model_path: ``writer.path / "model.onnx"``.
        manifest: the manifest that will be committed (the hook may change it).
        progress: the progress display (hooks add their own stage lines).
    """

    loaded: LoadedModel
    example: ExampleInputs
    flat: FlatModule
    writer: PackageWriter
    model_path: Path
    manifest: Manifest
    progress: Progress


#: ``before_commit(ctx) -> parity report or None``; raise a TorchportError to abort the export
BeforeCommit = Callable[[ExportContext], "dict[str, Any] | None"]
