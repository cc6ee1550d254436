"""``torchport generate``'s Python API: one generation from a package, with its speed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torchport.runtimes._errors import UsageError
from torchport.runtimes._generate import Generator

__all__ = ["GenerateReport", "generate_once"]


@dataclass
class GenerateReport:
    """What :func:`generate_once` returns: the text, its tokens and the speed.

    Attributes:
        text: the generated text (``None`` without a tokenizer).
        tokens: the generated ids.
        finish_reason: ``"stop"`` or ``"length"``.
        seconds: wall time of the generation (encoder step included).
        tokens_per_s: generated tokens per second.
    """

    text: str | None
    tokens: list[int]
    finish_reason: str
    seconds: float
    tokens_per_s: float

    def __str__(self) -> str:
        return f"{self.text if self.text is not None else self.tokens}\n{len(self.tokens)} tokens in {self.seconds:.3f} s ({self.tokens_per_s:.1f} tokens/s)"

    def __bool__(self) -> bool:
        return True


def generate_once(
    package: Any,
    text: str | None = None,
    *,
    audio: str | None = None,
    language: str | None = None,
    variant: str = "fp32",
    num_beams: int = 1,
    **params: Any,
) -> GenerateReport:
    """Generate once from a package (``torchport generate``): text for a text-generation or
    text-to-text package, ``audio`` (a WAV file) for a speech package.

    Args:
        package: the package folder.
        text: the prompt or source text.
        audio: a WAV file (16 kHz mono) for a speech package.
        language: the speech package's language (Whisper's forced language token), e.g. ``"en"``.
        variant: ``fp32``, ``fp16``, ``int8``...
        num_beams: beam search (encoder-decoders) when > 1.
        params: :class:`SamplingParams` fields (``max_new_tokens=32, do_sample=True, seed=0``).

    Example:
        >>> print(generate_once("out/t5", "translate: hello", max_new_tokens=16))  # doctest: +SKIP
        Hallo
        5 tokens in 0.012 s (416.7 tokens/s)

    Raises:
        UsageError: neither or both of text and audio, or audio for a package that takes text.
        InferenceInputError: a bad parameter or input beyond the model's range.
    """
    import time
    from pathlib import Path

    from torchport.runtimes._session import Session

    if (text is None) == (audio is None):
        raise UsageError("pass either text or --audio FILE")
    session = Session.from_package(package, variant=variant)
    gen = Generator(session)
    start = time.perf_counter()
    if audio is not None:
        from torchport.runtimes._audio_request import SpeechCodec

        codec = SpeechCodec.from_manifest(session.manifest)
        if codec is None:
            raise UsageError(f"{session.name!r} does not take audio; pass text")
        try:
            data = Path(audio).read_bytes()
        except OSError as e:
            raise UsageError(f"cannot read --audio {audio}: {e.strerror}") from None
        sources = codec.sources([data])
        from torchport.runtimes._seq2seq_batch import Seq2SeqBatch

        def detect() -> Any:  # no --language on a multilingual model: detected as generate does
            return Seq2SeqBatch(session).first_logits(sources)

        result = gen.generate(
            None,
            sources=sources,
            forced=codec.forced(language=language, detect=detect),
            num_beams=num_beams,
            **params,
        )
        if gen.codec is not None:
            result.text = [gen.codec.decode(t) for t in result.tokens]
    else:
        result = gen.generate(text, num_beams=num_beams, **params)
    seconds = time.perf_counter() - start
    tokens = result.tokens[0]
    return GenerateReport(
        text=result.text[0] if result.text else None,
        tokens=tokens,
        finish_reason=result.finish_reasons[0],
        seconds=seconds,
        tokens_per_s=len(tokens) / seconds if seconds > 0 else 0.0,
    )
