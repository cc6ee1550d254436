"""The one root error type and a subclass per stage.

Every error a user can act on is a :class:`TorchportError`; the CLI catches it in one place,
prints the message without a traceback and exits 1. Anything else is a bug.
"""

from __future__ import annotations


class TorchportError(Exception):
    """Root of every user-facing torchport error. The message says what to do."""


class UsageError(TorchportError):
    """Bad input from the user: a malformed option, a missing file, an unsupported value."""


class LoadError(TorchportError):
    """The model source could not be loaded (missing file or attribute, factory raised, not a module)."""


class ExportError(TorchportError):
    """Capture (torch.export) or ONNX translation failed.

    Attributes:
        stage: which stage failed: ``"capture"``, ``"onnx translation"``, ``"save"``...
    """

    def __init__(self, message: str, *, stage: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage


class OptimizationError(TorchportError):
    """An optimization pass failed."""


class ValidationError(TorchportError):
    """Parity validation could not run, or the model did not match eager PyTorch."""


class PackageError(TorchportError):
    """A model package is missing, malformed, tampered with, or could not be written."""


class InferenceInputError(TorchportError):
    """An inference request does not match the model's signature (name, dtype, shape)."""


class ProviderError(TorchportError):
    """A requested ONNX Runtime execution provider is not available."""


class ServingError(TorchportError):
    """The server could not be configured or started."""
