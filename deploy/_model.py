"""A model package opened for inference from Python: what an installed model wheel's ``load()`` returns."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

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
        self,
        text: str | Sequence[str] | None = None,
        *,
        audio: Any = None,
        language: str | None = None,
        task: str | None = None,
        **inputs: Any,
    ) -> dict[str, Any]:
        """Run the model on one numpy array per input; returns ``{output name: array}``.

        A generation package (text-generation, text-to-text) also takes ``text``: one string or a
        list; the answer is ``{"text": [generated text per input], "tokens": [ids per input]}``, with
        ``generate``'s settings as keyword arguments (``max_new_tokens=32``, ``num_beams=4`` for
        encoder-decoders, ``do_sample=True, seed=0``...).

        A speech package (Whisper) takes ``audio``: a WAV file's path or bytes, FP32 samples at 16 kHz,
        or a list of those, with ``language`` (e.g. ``"en"``) and ``task`` (``"transcribe"`` or
        ``"translate"``); the answer has the same ``text`` and ``tokens``.

        Example:
            >>> t5 = load()                                              # doctest: +SKIP
            >>> t5.predict(text="translate: hello", max_new_tokens=8)["text"]
            ['Hallo']
            >>> whisper.predict(audio="speech.wav", language="en")["text"]  # doctest: +SKIP
            [' Hello world.']

        Raises:
            InferenceInputError: an input is missing, unknown, or does not match the signature.
        """
        if audio is not None:
            return self._transcribe(audio, language, task, inputs)
        if text is not None:
            result = self.session.generate([text] if isinstance(text, str) else list(text), **inputs)
            return {"text": result.text, "tokens": result.tokens}
        return self.session.run(inputs)

    def _transcribe(
        self, audio: Any, language: str | None, task: str | None, settings: dict[str, Any]
    ) -> dict[str, Any]:
        from torchport.runtimes._audio_request import SpeechCodec
        from torchport.runtimes._errors import UsageError
        from torchport.runtimes._generate import Generator, Seq2SeqBatch

        codec = SpeechCodec.from_manifest(self.session.manifest)
        if codec is None:
            raise UsageError(f"{self.name!r} does not take audio; pass text or its input arrays")
        many = isinstance(audio, list | tuple)
        items = [
            Path(a).read_bytes() if isinstance(a, str | os.PathLike) else a
            for a in (audio if many else [audio])
        ]
        gen = Generator(self.session)
        batch = Seq2SeqBatch(self.session)
        tokens: list[list[int]] = []
        for source in codec.sources(items):  # each item's prompt may differ (a detected language)
            forced = codec.forced(language, task, detect=partial(batch.first_logits, [source]))
            tokens += gen.generate(None, sources=[source], forced=forced, **settings).tokens
        texts: list[Any] = [gen.codec.decode(t) for t in tokens] if gen.codec is not None else []
        return {"text": texts, "tokens": tokens}

    def __repr__(self) -> str:
        return f"Model({self.name!r}, version={self.version!r}, provider={self.provider!r})"
