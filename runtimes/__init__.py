"""torchport.runtimes — no torch: the model package format, errors, ONNX Runtime sessions, the server.

This package never imports torch, torchport.exporters, torchport.deploy or torchport.cli.
"""

from torchport.runtimes._dtypes import PROTOCOL_DATATYPES, SUPPORTED_DTYPES, check_dtype
from torchport.runtimes._errors import (
    ExportError,
    InferenceInputError,
    LoadError,
    OptimizationError,
    PackageError,
    ProviderError,
    ServingError,
    TorchportError,
    UsageError,
    ValidationError,
)
from torchport.runtimes._eval import (
    EvalResult,
    VariantEval,
    evaluate_package,
    gate,
    record_eval,
)
from torchport.runtimes._generate import GenerationResult, Generator, SamplingParams
from torchport.runtimes._inputs import concrete_shape, dim_sample_points, random_inputs
from torchport.runtimes._inspect import PackageSummary, inspect_package
from torchport.runtimes._manifest import (
    MANIFEST_NAME,
    PARITY_NAME,
    SCHEMA_VERSION,
    DimRange,
    FileRecord,
    Manifest,
    TensorSpec,
    Variant,
    manifest_from_dict,
)
from torchport.runtimes._onnx_parity import check_variants
from torchport.runtimes._package import (
    ModelPackage,
    PackageWriter,
    sha256_file,
    update_package,
    write_package,
)
from torchport.runtimes._parity import (
    DEFAULT_TOLERANCES,
    Localization,
    OutputParity,
    ParityResult,
    Tolerance,
    VariantParity,
    record_parity,
)
from torchport.runtimes._providers import available_providers, resolve_providers
from torchport.runtimes._samples import load_samples
from torchport.runtimes._session import Session
from torchport.runtimes._spec_syntax import format_spec, parse_dim_spec, parse_input_spec
from torchport.runtimes._tokenizer import TextCodec

__all__ = [
    "EvalResult",
    "VariantEval",
    "evaluate_package",
    "gate",
    "record_eval",
    "DEFAULT_TOLERANCES",
    "Localization",
    "OutputParity",
    "ParityResult",
    "Tolerance",
    "VariantParity",
    "check_variants",
    "format_spec",
    "load_samples",
    "parse_dim_spec",
    "parse_input_spec",
    "record_parity",
    "MANIFEST_NAME",
    "PARITY_NAME",
    "PROTOCOL_DATATYPES",
    "SCHEMA_VERSION",
    "SUPPORTED_DTYPES",
    "DimRange",
    "ExportError",
    "FileRecord",
    "GenerationResult",
    "Generator",
    "InferenceInputError",
    "LoadError",
    "Manifest",
    "ModelPackage",
    "PackageSummary",
    "OptimizationError",
    "PackageError",
    "PackageWriter",
    "ProviderError",
    "SamplingParams",
    "ServingError",
    "Session",
    "TextCodec",
    "TensorSpec",
    "TorchportError",
    "UsageError",
    "ValidationError",
    "Variant",
    "check_dtype",
    "concrete_shape",
    "dim_sample_points",
    "inspect_package",
    "random_inputs",
    "available_providers",
    "resolve_providers",
    "manifest_from_dict",
    "sha256_file",
    "update_package",
    "write_package",
]
