"""``validate`` for text-generation packages (decoders with a key/value cache).

A decoder is not judged on random inputs of its signature: its pasts must be presents of the same
model. :func:`check_decoder_package` runs the eager model (wrapped as at export,
:class:`~torchport.exporters._decoder_export.DecoderModule`) and the package's ONNX files over a
left-padded batched prompt and ``steps`` decode steps, each side feeding its own presents back, and
compares logits and presents (:func:`~torchport.exporters._decoder_export.check_decoder_parity`):
``fp32`` against eager PyTorch with the fp32 tolerance, every other variant against the package's
validated ``model.onnx`` (the trust chain's variant link).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torchport.runtimes._errors import ValidationError
from torchport.runtimes._generate import is_text_generation
from torchport.runtimes._package import ModelPackage
from torchport.runtimes._parity import ParityResult, Tolerance

__all__ = ["check_decoder_package", "is_text_generation"]


def _mismatch(sig: Any, recorded: Mapping[str, Any]) -> str | None:
    mine = sig.to_dict()
    for key in ("num_layers", "kv_heads", "head_dims", "vocab", "position_ids"):
        if key in recorded and recorded[key] != mine[key]:
            return f"{key} {mine[key]} (eager) != {recorded[key]} (package)"
    return None


def check_decoder_package(
    package: ModelPackage,
    files: Mapping[str, Path],
    model: Any,
    *,
    steps: int = 4,
    seed: int = 0,
    atol: float | None = None,
    rtol: float | None = None,
    tolerances: Mapping[str, Tolerance] | None = None,
    provider: str = "cpu",
) -> ParityResult:
    """Multi-step parity of a text-generation package's ``files`` ({variant: .onnx path}).

    Args:
        package: the package (its manifest's dims and cache layout, its ``model.onnx``).
        model: the eager model: a ``LoadedModel`` or the Hugging Face causal LM module.
        steps: decode steps after the prompt step.

    Raises:
        ValidationError: the eager model is not a causal LM with a cache, or its cache layout differs
            from the package's.
    """
    from torchport.exporters._decoder_export import (
        DecoderModule,
        _prepare,
        check_decoder_parity,
        decoder_signature,
    )
    from torchport.exporters._outputs import is_causal_lm

    module = getattr(model, "module", model)
    if module is None or not is_causal_lm(module):
        raise ValidationError(
            f"{package.manifest.name!r} is a text-generation package; --model must be the Hugging Face "
            f"causal LM it came from, not a {type(module).__name__}"
        )
    _prepare(module)
    sig = decoder_signature(module)
    differs = _mismatch(sig, package.manifest.extra.get("generation", {}))
    if differs:
        raise ValidationError(
            f"the eager model's cache layout differs from the package's: {differs}; "
            "is --model the model this package was exported from?"
        )
    return check_decoder_parity(
        DecoderModule(module, sig).eval(),
        files,
        dims=package.manifest.dynamic_dims,
        steps=steps,
        seed=seed,
        atol=atol,
        rtol=rtol,
        tolerances=tolerances,
        provider=provider,
        fp32_reference=package.model_path("fp32"),
    )
