"""What loading a model source yields: :class:`LoadedModel`."""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from torchport.exporters._example_inputs import ExampleInputs
from torchport.runtimes._manifest import DimRange

__all__ = ["LoadedModel"]


@dataclass
class LoadedModel:
    """A loaded model and what was found next to it.

    Attributes:
        module: the model in eval mode; for an ExportedProgram its ``.module()`` (not put in eval
            mode: the program was captured in whichever mode it was), or ``None`` if that fails.
        kind: ``"python_file"``, ``"python_module"``, ``"torchscript"``, ``"exported_program"`` or
            ``"huggingface"``.
        reference: the source string as the user gave it.
        sha256: sha256 of the source file (python file, ``.pt``, ``.pt2``), or of a Hugging Face
            folder's config and weight files (sorted by name, hashed together); ``None`` for an
            importable module.
        example_inputs: from ``example_inputs()`` next to the factory, from a ``.pt2``'s saved example
            inputs, or from the Hugging Face config; ``None`` if the source offers none.
        exported_program: the ExportedProgram of a ``.pt2``.
        hf_config: the transformers config of a Hugging Face folder.
        forward_signature: the signature of ``module.forward`` (without ``self``), for input names.
        dynamic_dims_decl: the model file's ``DYNAMIC_DIMS`` (``{param: {axis: (name, min, max)}}``).
        example_source: where ``example_inputs`` came from: ``"example_inputs()"``, ``"pt2"``,
            ``"huggingface"`` or ``None``.
        hf_defaults: default dim ranges and value ranges derived from the HF config.

    Example:
        >>> from torchport.exporters import load_model
        >>> loaded = load_model("torchport.exporters.examples.cnn:make_model")
        >>> loaded.kind, str(loaded.example_inputs)
        ('python_module', 'image:float32[batch,3,32,32] (batch=1..64)')
    """

    module: torch.nn.Module | None
    kind: str
    reference: str
    sha256: str | None = None
    example_inputs: ExampleInputs | None = None
    exported_program: Any | None = None
    hf_config: Any | None = None
    forward_signature: inspect.Signature | None = None
    dynamic_dims_decl: dict[str, dict[int, Any]] | None = field(default=None, repr=False)
    example_source: str | None = None
    hf_defaults: dict[str, Any] = field(default_factory=dict, repr=False)

    def default_dims(self) -> dict[str, DimRange]:
        """Ranges of dim names the model itself declares (``DYNAMIC_DIMS`` or the HF config)."""
        out: dict[str, DimRange] = dict(self.hf_defaults.get("dims", {}))
        for axes in (self.dynamic_dims_decl or {}).values():
            for entry in axes.values():
                with contextlib.suppress(TypeError, ValueError):
                    name, low, high = entry
                    out[str(name)] = DimRange(int(low), int(high))
        if self.example_inputs is not None:
            out.update(self.example_inputs.dynamic_dims)
        return out

    def default_value_ranges(self) -> dict[str, tuple[float, float]]:
        """Known value ranges of integer inputs by name (``input_ids``: ``[0, vocab_size-1]``...)."""
        out = dict(self.hf_defaults.get("value_ranges", {}))
        if self.example_inputs is not None:
            for s in self.example_inputs.specs:
                if s.value_range is not None:
                    out.setdefault(s.name, s.value_range)
        return out

    def __bool__(self) -> bool:
        return self.module is not None or self.exported_program is not None

    def __str__(self) -> str:
        what = type(self.module).__name__ if self.module is not None else "ExportedProgram"
        text = f"{self.kind} {self.reference} ({what})"
        if self.example_inputs is not None:
            text += f"; example inputs: {self.example_inputs}"
        return text
