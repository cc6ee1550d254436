"""A model package opened for inference from Python: what an installed model wheel's ``load()`` returns."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from torchport.runtimes import ModelPackage, Session, TensorSpec


@dataclass(frozen=True)
class Signature:
    """Inputs and outputs of a model (names, dtypes, shapes with named dynamic dims) and dim ranges."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dynamic_dims: dict[str, tuple[int, int]]

    def __str__(self) -> str:
        def fmt(specs: Sequence[TensorSpec]) -> str:
            return ", ".join(f"{s.name}: {s.dtype}{list(s.shape)}" for s in specs)

        return f"({fmt(self.inputs)}) -> ({fmt(self.outputs)})"


class Model:
    """A verified model package with an ONNX Runtime session: ``predict(**arrays) -> {output: array}``.

    Inputs are validated exactly as the server validates them (names, dtypes, ranks, fixed dims,
    dynamic-dim ranges), so a mistake raises :class:`~torchport.runtimes.InferenceInputError`
    naming the input.

    Example:
        >>> import cnn                                   # an installed model wheel  # doctest: +SKIP
        >>> model = cnn.load(provider="cpu")
        >>> model.signature.inputs[0].name
        'image'
        >>> model.predict(image=np.zeros((1, 3, 32, 32), np.float32))["output"].shape
        (1, 10)
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        manifest = session.manifest
        self.name = manifest.name if manifest else session.name
        self.version = manifest.version if manifest else "1"
        self.signature = Signature(
            inputs=tuple(session.input_specs),
            outputs=tuple(session.output_specs),
            dynamic_dims={k: (r.min, r.max) for k, r in session.dynamic_dims.items()},
        )

    @classmethod
    def load(
        cls,
        package: str | os.PathLike[str] | ModelPackage,
        *,
        provider: str | Sequence[str] = "cpu",
        variant: str = "fp32",
        allow_fallback: bool = False,
        **session_options: Any,
    ) -> Model:
        """Verify the package's hashes and open ``variant`` on ``provider``.

        Raises:
            PackageError: the package is missing, tampered with, or has no such variant.
            ProviderError: ``provider`` is not available (unless ``allow_fallback``).
        """
        session = Session.from_package(
            package, variant=variant, providers=provider, allow_fallback=allow_fallback, **session_options
        )
        return cls(session)

    @property
    def provider(self) -> str:
        """The ONNX Runtime execution provider really in use."""
        return self.session.provider

    @property
    def path(self) -> Path | None:
        """The package folder."""
        return self.session.package.path if self.session.package else None

    def predict(
        self, text: str | Sequence[str] | None = None, **inputs: Any
    ) -> dict[str, np.ndarray | list[Any]]:
        """Run the model on one numpy array per input; returns ``{output name: array}``.

        A generation package (text-generation, text-to-text) also takes ``text``: one string or a
        list; the answer is ``{"text": [generated text per input], "tokens": [ids per input]}``, with
        ``generate``'s settings as keyword arguments (``max_new_tokens=32``, ``num_beams=4`` for
        encoder-decoders, ``do_sample=True, seed=0``...).

        Example:
            >>> t5 = load()                                              # doctest: +SKIP
            >>> t5.predict(text="translate: hello", max_new_tokens=8)["text"]
            ['Hallo']

        Raises:
            InferenceInputError: an input is missing, unknown, or does not match the signature.
        """
        if text is not None:
            result = self.session.generate([text] if isinstance(text, str) else list(text), **inputs)
            return {"text": result.text, "tokens": result.tokens}
        return self.session.run(inputs)

    def __repr__(self) -> str:
        return f"Model({self.name!r}, version={self.version!r}, provider={self.provider!r})"
