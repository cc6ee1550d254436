"""ONNX Runtime execution providers by short name (``cpu``, ``cuda``, ``tensorrt``), with fallback rules."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torchport.runtimes._errors import ProviderError

log = logging.getLogger("torchport.runtimes")

#: short name -> ONNX Runtime provider name
PROVIDER_ALIASES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
    "rocm": "ROCMExecutionProvider",
}

_SHORT = {v: k for k, v in reversed(PROVIDER_ALIASES.items())}

CPU = "CPUExecutionProvider"
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider")


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers (full ONNX Runtime names)."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def short_name(provider: str) -> str:
    """``"CUDAExecutionProvider"`` -> ``"cuda"``; unknown names are returned unchanged."""
    return _SHORT.get(provider, provider)


def normalize_provider(name: str) -> str:
    """Full ONNX Runtime name of a provider given by short or full name (case-insensitive)."""
    key = name.strip()
    if key.lower() in PROVIDER_ALIASES:
        return PROVIDER_ALIASES[key.lower()]
    for full in PROVIDER_ALIASES.values():
        if full.lower() == key.lower():
            return full
    if key.endswith("ExecutionProvider"):
        return key
    raise ProviderError(
        f"unknown execution provider {name!r}; use one of: {', '.join(sorted(set(PROVIDER_ALIASES) - {'gpu', 'trt'}))}"
        " or a full ONNX Runtime provider name"
    )


def _describe(providers: Sequence[str]) -> str:
    return ", ".join(f"{short_name(p)} ({p})" if short_name(p) != p else p for p in providers) or "none"


def resolve_providers(
    requested: str | Sequence[str], *, allow_fallback: bool = False, available: Sequence[str] | None = None
) -> list[str]:
    """Turn the user's ordered provider request into the list handed to ONNX Runtime.

    ``requested`` is a name, a comma-separated string (``"cuda,cpu"``) or a list. A provider that
    this onnxruntime build does not offer is an error listing the available ones, unless
    ``allow_fallback`` (then it is dropped with a warning). The CPU provider is always appended last
    so that nodes a GPU provider cannot run still have a home.

    Example:
        >>> resolve_providers("cpu")
        ['CPUExecutionProvider']

    Raises:
        ProviderError: an unknown or unavailable provider without ``allow_fallback``.
    """
    if isinstance(requested, str):
        names = [p for p in requested.split(",") if p.strip()]
    else:
        names = list(requested)
    if not names:
        names = ["cpu"]
    wanted = []
    for name in names:
        full = normalize_provider(name)
        if full not in wanted:
            wanted.append(full)
    have = list(available) if available is not None else available_providers()
    missing = [p for p in wanted if p not in have]
    if missing and not allow_fallback:
        hint = (
            " (install onnxruntime-gpu and check the CUDA libraries)"
            if any(p in GPU_PROVIDERS for p in missing)
            else ""
        )
        raise ProviderError(
            f"execution provider {_describe(missing)} is not available{hint}; available: {_describe(have)}; "
            "pass --allow-fallback (allow_fallback=True) to fall back to the next available provider"
        )
    chosen = [p for p in wanted if p in have]
    if missing:
        log.warning(
            "execution provider %s not available (available: %s); falling back to %s",
            _describe(missing),
            _describe(have),
            _describe(chosen or [CPU]),
        )
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen
