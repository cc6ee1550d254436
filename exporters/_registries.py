"""The names users type, in one place: export strategies, optimization levels and ONNX passes.

Nothing heavy is imported here (no torch, no onnx), so the CLI builds its help from these
registries at start-up; the implementations (:mod:`~torchport.exporters._strategies`,
:mod:`~torchport.exporters._onnx_passes`) are keyed by the same names, and a test checks that
they match.
"""

from __future__ import annotations

__all__ = ["ATTENTION_MODES", "INT8_MODES", "LEVELS", "ONNX_PASSES", "STRATEGIES", "describe"]

#: export strategies, in the order they are tried
STRATEGIES: dict[str, str] = {
    "dynamo-nonstrict": "torch.export (non-strict) → torch.onnx dynamo exporter",
    "dynamo-strict": "torch.export (strict, TorchDynamo) → torch.onnx dynamo exporter",
    "dynamo-decomp-workaround": "captured program with contiguous() rewritten to a real copy → torch.onnx dynamo",
    "torchscript": "legacy TorchScript exporter (torch.onnx.export(dynamo=False)) with dynamic_axes",
}

#: optimization levels
LEVELS: dict[str, str] = {
    "none": "no graph passes",
    "basic": "onnxscript optimizer (constant folding, dead code, redundant casts/reshapes)",
    "all": "basic + ONNX Runtime transformer fusions + a graph optimized offline for --provider",
}

#: int8 quantization modes
INT8_MODES: dict[str, str] = {
    "dynamic": "int8 weights, activations quantized at run time",
    "static": "int8 QDQ with activation ranges calibrated on --calibration inputs",
}

#: attention of a text-generation export
ATTENTION_MODES: dict[str, str] = {
    "fused": "one ONNX Runtime GroupQueryAttention per layer (fastest on the CPU)",
    "standard": "the model's own attention ops (for CUDA)",
}

#: ONNX passes, in pipeline order (the names --disable takes)
ONNX_PASSES: dict[str, str] = {
    "optimize": "onnxscript optimizer",
    "ort_fusions": "ONNX Runtime transformer fusions",
    "merge_matmuls": "one MatMul for the linear layers that read the same input",
    "ort_offline": "ONNX Runtime graph optimized offline",
    "fp16": "float16 variant",
    "int8_dynamic": "int8 dynamic variant",
    "int8_static": "int8 static (QDQ) variant",
    "int4": "int4 weight-only (MatMulNBits) variant",
}


def describe(registry: dict[str, str]) -> str:
    """``name (what it does), ...`` for a help text.

    Example:
        >>> describe({"a": "first", "b": "second"})
        'a (first), b (second)'
    """
    return ", ".join(f"{name} ({text})" for name, text in registry.items())
