"""The one root error type and a subclass per stage.

Every error a user can act on is a :class:`TorchportError`; the CLI catches it in one place,
prints the message without a traceback and exits 1. Anything else is a bug.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any


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
        failure: the analysis of the failure (an exporters ``CaptureFailure``: kind, op, the user's
            source line, what to try), when one was made.
        user_traceback: a traceback ending in the user's frame, for ``--pdb``; ``None`` if unknown.
        original: the exception torch raised.
        attempts: every export strategy tried, when the error ends a run of strategies.
    """

    def __init__(
        self,
        message: str,
        *,
        stage: str | None = None,
        failure: Any = None,
        user_traceback: TracebackType | None = None,
        original: BaseException | None = None,
        attempts: list[Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.stage = stage
        self.failure = failure
        self.user_traceback = user_traceback
        self.original = original
        self.attempts = attempts


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


def first_line(error: BaseException | str) -> str:
    """The first non-empty line of an error's message (what a one-line report shows).

    Example:
        >>> first_line(ValueError("shape mismatch\\n  at node 3"))
        'shape mismatch'
        >>> first_line(RuntimeError())
        ''
    """
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return ""


def describe_error(error: BaseException) -> str:
    """``TypeName: first line`` of an exception (just ``TypeName`` when it has no message).

    Example:
        >>> describe_error(KeyError("x"))
        "KeyError: 'x'"
    """
    msg = first_line(error)
    return f"{type(error).__name__}: {msg}" if msg else type(error).__name__
