"""torchport.exporters — the torch side: load, capture, passes, ONNX export, parity validation."""

from torchport.exporters._example_inputs import ExampleInputs
from torchport.exporters._example_resolution import resolve_example_inputs
from torchport.exporters._export import ExportContext, ExportResult, export_model
from torchport.exporters._loaded_model import LoadedModel
from torchport.exporters._loading import load_model
from torchport.exporters._localize import Localization, localize
from torchport.exporters._optimize import OptimizeResult, optimize_package
from torchport.exporters._outputs import OutputSelection, flatten_outputs
from torchport.exporters._passes import FunctionPass, Pass, PassPipeline, PassRecord, PipelineResult
from torchport.exporters._strategies import STRATEGIES, Attempt
from torchport.exporters._validate import (
    DEFAULT_TOLERANCES,
    ParityResult,
    Tolerance,
    check_parity,
    validate,
)
from torchport.runtimes._spec_syntax import parse_dim_spec, parse_input_spec

__all__ = [
    "Attempt",
    "ExportContext",
    "ExportResult",
    "OutputSelection",
    "STRATEGIES",
    "export_model",
    "flatten_outputs",
    "ExampleInputs",
    "LoadedModel",
    "load_model",
    "parse_dim_spec",
    "parse_input_spec",
    "resolve_example_inputs",
    "FunctionPass",
    "OptimizeResult",
    "Pass",
    "PassPipeline",
    "PassRecord",
    "PipelineResult",
    "optimize_package",
    "DEFAULT_TOLERANCES",
    "Localization",
    "ParityResult",
    "Tolerance",
    "check_parity",
    "localize",
    "validate",
]
