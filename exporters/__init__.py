"""torchport.exporters — the torch side: load, capture, ONNX export, validation against eager PyTorch;
and the ONNX passes and variants of ``optimize``.

Names resolve lazily (PEP 562): ``import torchport.exporters`` loads neither torch nor any
submodule, so ``optimize_package`` (pure ONNX work) runs where torch is not installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the module that holds it
_EXPORTS: dict[str, str] = {
    "Attempt": "torchport.exporters._strategies",
    "STRATEGIES": "torchport.exporters._strategies",
    "ExportContext": "torchport.exporters._export",
    "ExportResult": "torchport.exporters._export",
    "export_model": "torchport.exporters._export",
    "OutputSelection": "torchport.exporters._outputs",
    "flatten_outputs": "torchport.exporters._outputs",
    "ExampleInputs": "torchport.exporters._example_inputs",
    "resolve_example_inputs": "torchport.exporters._example_resolution",
    "LoadedModel": "torchport.exporters._loaded_model",
    "load_model": "torchport.exporters._loading",
    "parse_dim_spec": "torchport.runtimes._spec_syntax",
    "parse_input_spec": "torchport.runtimes._spec_syntax",
    "FunctionPass": "torchport.exporters._passes",
    "Pass": "torchport.exporters._passes",
    "PassPipeline": "torchport.exporters._passes",
    "PassRecord": "torchport.exporters._passes",
    "PipelineResult": "torchport.exporters._passes",
    "OptimizeResult": "torchport.exporters._optimize",
    "optimize_package": "torchport.exporters._optimize",
    "DEFAULT_TOLERANCES": "torchport.runtimes._parity",
    "Localization": "torchport.runtimes._parity",
    "ParityResult": "torchport.runtimes._parity",
    "Tolerance": "torchport.runtimes._parity",
    "localize": "torchport.exporters._localize",
    "check_parity": "torchport.exporters._validate",
    "validate": "torchport.exporters._validate",
}

__all__ = [
    "Attempt",
    "DEFAULT_TOLERANCES",
    "ExampleInputs",
    "ExportContext",
    "ExportResult",
    "FunctionPass",
    "LoadedModel",
    "Localization",
    "OptimizeResult",
    "OutputSelection",
    "ParityResult",
    "Pass",
    "PassPipeline",
    "PassRecord",
    "PipelineResult",
    "STRATEGIES",
    "Tolerance",
    "check_parity",
    "export_model",
    "flatten_outputs",
    "load_model",
    "localize",
    "optimize_package",
    "parse_dim_spec",
    "parse_input_spec",
    "resolve_example_inputs",
    "validate",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'torchport.exporters' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolve once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from torchport.exporters._example_inputs import ExampleInputs
    from torchport.exporters._example_resolution import resolve_example_inputs
    from torchport.exporters._export import ExportContext, ExportResult, export_model
    from torchport.exporters._loaded_model import LoadedModel
    from torchport.exporters._loading import load_model
    from torchport.exporters._localize import localize
    from torchport.exporters._optimize import OptimizeResult, optimize_package
    from torchport.exporters._outputs import OutputSelection, flatten_outputs
    from torchport.exporters._passes import FunctionPass, Pass, PassPipeline, PassRecord, PipelineResult
    from torchport.exporters._strategies import STRATEGIES, Attempt
    from torchport.exporters._validate import check_parity, validate
    from torchport.runtimes._parity import DEFAULT_TOLERANCES, Localization, ParityResult, Tolerance
    from torchport.runtimes._spec_syntax import parse_dim_spec, parse_input_spec
