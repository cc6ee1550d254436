"""What one generated sequence is and how its next token is picked, shared by the decoder-only
batch (:mod:`torchport.runtimes._generate`) and the encoder-decoder one
(:mod:`torchport.runtimes._seq2seq_batch`).

Picking follows Hugging Face ``generate``: the logits processors of :mod:`torchport.runtimes._logits`
(repetition penalty, no-repeat n-grams, bad words, minimum length, the model's suppressed / forced
tokens), then, when sampling, temperature, top-k and top-p, then argmax (greedy) or a draw from a
seeded ``numpy`` generator per request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from torchport.runtimes._errors import InferenceInputError
from torchport.runtimes._logits import LogitsRules, check_bad_words, pick, warp

__all__ = ["GenRequest", "GenerationResult", "SamplingParams", "pick_token"]


class _StopSpec(Protocol):
    """What :meth:`GenRequest.stop_ids` reads of a model's generation spec."""

    @property
    def eos_token_ids(self) -> tuple[int, ...]: ...


#: the most new tokens one request may ask for (beyond it the request is refused)
MAX_NEW_TOKENS = 4096


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token, and when to stop.

    Attributes:
        max_new_tokens: tokens to generate at most (1..4096, and within the model's positions).
        do_sample: draw from the distribution; ``False`` is greedy (argmax).
        temperature / top_k / top_p: the distribution when sampling (``top_k=0``, ``top_p=1``: off).
        seed: seed of this request's random generator (same seed, same tokens).
        stop_token_ids: ids that end the sequence (the token is not part of the output); ``None``:
            the model's EOS ids.
        ignore_eos: keep going past EOS (only ``stop_token_ids`` given explicitly stop).
        repetition_penalty: > 1 makes tokens already in the prompt or output less likely (as
            Hugging Face's ``repetition_penalty``; an encoder-decoder's: in the decoder's ids).
        no_repeat_ngram_size / min_length / min_new_tokens / bad_words_ids: as Hugging Face's
            ``generate`` arguments of those names; ``None``: what the package's generation config
            says (encoder-decoders record it at export), else off.

    Example:
        >>> SamplingParams(max_new_tokens=8, do_sample=True, temperature=0.7, top_p=0.9, seed=1).check()
    """

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] | None = None
    ignore_eos: bool = False
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int | None = None
    min_length: int | None = None
    min_new_tokens: int | None = None
    bad_words_ids: tuple[tuple[int, ...], ...] | None = None

    def check(self) -> None:
        """Raise :class:`InferenceInputError` naming the first bad field."""
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise InferenceInputError(f"max_tokens must be an integer, got {self.max_new_tokens!r}")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise InferenceInputError(
                f"max_tokens must be between 1 and {MAX_NEW_TOKENS}, got {self.max_new_tokens}"
            )
        if (
            not (isinstance(self.temperature, int | float) and math.isfinite(self.temperature))
            or self.temperature < 0
        ):
            raise InferenceInputError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if self.do_sample and self.temperature == 0:
            raise InferenceInputError("temperature 0 means greedy decoding; do not combine it with sampling")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise InferenceInputError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if not isinstance(self.top_p, int | float) or not 0 < self.top_p <= 1:
            raise InferenceInputError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.repetition_penalty, int | float) or not self.repetition_penalty > 0:
            raise InferenceInputError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0
        ):
            raise InferenceInputError(f"seed must be an integer >= 0, got {self.seed!r}")
        for name in ("no_repeat_ngram_size", "min_length", "min_new_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise InferenceInputError(f"{name} must be an integer >= 0, got {value!r}")
        if self.bad_words_ids is not None:
            check_bad_words(self.bad_words_ids)


@dataclass
class GenRequest:
    """One sequence being generated (a row of a :class:`DecodeBatch`).

    Attributes:
        prompt: the prompt token ids.
        params: its sampling parameters.
        tokens: the generated ids so far (stop tokens not included).
        finish_reason: ``None`` while running, then ``"stop"`` (EOS or a stop token) or ``"length"``.
        tag: anything the caller wants to find the sequence by (the server keeps its stream there).
    """

    prompt: list[int]
    params: SamplingParams
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    tag: Any = None
    #: encoder-decoders: this row's encoder feeds (e.g. ``{"input_features": [80, 3000]}``) instead
    #: of the tokenized ``prompt``; and decoder ids forced after the start token (Whisper's
    #: language/task tokens), not part of ``tokens``
    source: dict[str, Any] | None = None
    forced: list[int] = field(default_factory=list)
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    #: the logits processors of this row (the model's and the request's), set when it joins a batch
    rules: LogitsRules | None = None
    _seen: np.ndarray | None = None
    _stops: set[int] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def stop_ids(self, spec: _StopSpec) -> set[int]:
        if self._stops is None:
            ids = set(self.params.stop_token_ids or ())
            if not self.params.ignore_eos and self.params.stop_token_ids is None:
                ids |= set(spec.eos_token_ids)
            self._stops = ids
        return self._stops


@dataclass
class GenerationResult:
    """What :meth:`Generator.generate` returns.

    Attributes:
        tokens: the generated ids of each prompt (without the prompt, without the stop token).
        finish_reasons: ``"stop"`` or ``"length"`` per prompt.
        text: the decoded text per prompt when the prompts were text.
    """

    tokens: list[list[int]]
    finish_reasons: list[str]
    text: list[str] | None = None


def _last_logits_processed(
    logits: np.ndarray, seq: GenRequest, prefix: list[int] | None = None
) -> np.ndarray:
    """The logits processors, then (sampling) the warpers, on one row's last-position logits.

    ``prefix``: the ids before ``seq.tokens`` that ``generate`` sees as ``input_ids`` (a decoder's
    prompt, the default; an encoder-decoder's start token and forced ids).
    """
    p = seq.params
    rules = seq.rules if seq.rules is not None else LogitsRules().with_request(p)
    head = seq.prompt if prefix is None else prefix
    scores = rules.apply(logits, head + seq.tokens, len(head), len(head) + p.max_new_tokens)
    if not p.do_sample:
        return scores
    return warp(scores, p.temperature, p.top_k, p.top_p)


def pick_token(logits: np.ndarray, seq: GenRequest, prefix: list[int] | None = None) -> int:
    """The next token of ``seq`` from its last-position logits (``prefix``: see
    :func:`_last_logits_processed`)."""
    return pick(_last_logits_processed(logits, seq, prefix), seq.params.do_sample, seq.rng)
