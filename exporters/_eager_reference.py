"""The eager side of validation: the model run in PyTorch on the package's inputs.

:func:`eager_reference` wraps a source string, a loaded model or an ``nn.Module`` the way
``export`` wrapped it (the same input flattening and output selection), so its outputs line up
with the ONNX model's.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchport.runtimes import Manifest, ValidationError, random_inputs

__all__ = ["EagerReference", "eager_outputs", "eager_reference"]


@dataclass
class EagerReference:
    """The eager side of the comparison: a module taking the package's inputs as flat tensors.

    Attributes:
        module: ``forward(*tensors)`` with one tensor per manifest input, in order (the same
            :class:`~torchport.exporters._outputs.FlatModule` ``export`` captured, when available),
            returning the outputs in manifest order.
        make: ``make(dims, rng) -> tuple of tensors``: random inputs with the dynamic dims set.
        description: what the model is, for the report.
    """

    module: Any
    make: Callable[[Mapping[str, int], np.random.Generator], tuple[Any, ...]]
    description: str

    @classmethod
    def from_flat(cls, flat: Any, example: Any, description: str) -> EagerReference:
        """From the wrapper and example inputs ``export`` used (its ``before_commit`` context)."""

        def make(dims: Mapping[str, int], rng: np.random.Generator) -> tuple[Any, ...]:
            args, kwargs = example.make(dict(dims), rng)
            return tuple(flat.flat_inputs(args, kwargs))

        return cls(flat, make, description)


def _forward_params(module: Any) -> list[str]:
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return []
    return [p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _by_name_module(module: Any, manifest: Manifest) -> Any:
    """Wrap a plain module as ``forward(*tensors)``: by parameter name when the input names match."""
    import torch

    names = [s.name for s in manifest.inputs]
    by_name = bool(names) and all(n in _forward_params(module) for n in names)

    class Flat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = module

        def forward(self, *tensors: Any) -> Any:
            if by_name:
                return self.model(**dict(zip(names, tensors, strict=True)))
            return self.model(*tensors)

    return Flat().eval()


def _random_make(manifest: Manifest) -> Callable[[Mapping[str, int], np.random.Generator], tuple[Any, ...]]:
    import torch

    def make(dims: Mapping[str, int], rng: np.random.Generator) -> tuple[Any, ...]:
        feeds = random_inputs(manifest.inputs, dims, rng)
        return tuple(torch.from_numpy(feeds[s.name]) for s in manifest.inputs)

    return make


def eager_reference(model: Any, manifest: Manifest) -> EagerReference:
    """The eager reference for a package: from a source string, a ``LoadedModel`` or a module.

    A source is loaded (``load_model``) and wrapped the way ``export`` wrapped it: its own
    example inputs (or, when their names differ from the package's, the package's input specs)
    flattened, and the package's outputs selected by name.
    """
    import torch

    if isinstance(model, EagerReference):
        return model
    if isinstance(model, (str, os.PathLike)):
        from torchport.exporters._loading import load_model

        model = load_model(str(model))
    if isinstance(model, torch.nn.Module):
        return EagerReference(_by_name_module(model, manifest), _random_make(manifest), type(model).__name__)
    module = getattr(model, "module", None)
    if module is None and getattr(model, "exported_program", None) is not None:
        module = model.exported_program.module()
    if module is None:
        raise ValidationError(f"cannot validate against {model!r}: no eager module to run")
    description = str(getattr(model, "reference", type(module).__name__))
    names = [s.name for s in manifest.inputs]
    try:
        from torchport.exporters._example_inputs import ExampleInputs
        from torchport.exporters._example_resolution import resolve_example_inputs
        from torchport.exporters._outputs import FlatModule

        example = None
        try:
            example = resolve_example_inputs(model, None, dict(manifest.dynamic_dims))
        except Exception:
            example = None
        if example is None or [s.name for s in example.specs] != names:
            example = ExampleInputs.from_specs(
                list(manifest.inputs),
                dict(manifest.dynamic_dims),
                signature=getattr(model, "forward_signature", None),
            )
        outputs = [s.name for s in manifest.outputs]
        try:
            flat = FlatModule.build(module, example.args, example.kwargs, outputs)
        except Exception:
            flat = FlatModule.build(module, example.args, example.kwargs, manifest.export.get("outputs"))
        return EagerReference.from_flat(flat, example, description)
    except Exception:  # a model the export wrapper cannot take: call it by input names
        ref = EagerReference(_by_name_module(module, manifest), _random_make(manifest), description)
        return ref


def eager_outputs(module: Any, tensors: Sequence[Any]) -> list[np.ndarray]:
    import torch
    from torch.utils import _pytree as pytree

    with torch.no_grad():
        out = module(*tensors)
    leaves = [x for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor)]
    return [
        x.detach().cpu().float().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
        for x in leaves
    ]
