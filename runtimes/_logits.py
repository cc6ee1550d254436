"""Logits processing in numpy, as Hugging Face ``generate`` applies it, for both generate loops.

:class:`LogitsRules` holds what changes one row's next-token scores before the pick: the
processors ``generate`` builds from the request and the model's generation config, in its order
(``repetition_penalty``, ``no_repeat_ngram_size``, ``bad_words_ids``, ``min_length``,
``min_new_tokens``, forced BOS / EOS, ``suppress_tokens``, ``begin_suppress_tokens``); then
:func:`warp` (temperature, top-k, top-p: sampling only) and :func:`pick`.

Each rule reads the row's *history*: the ids ``generate`` keeps as ``input_ids`` — for a decoder the
prompt and the generated tokens, for an encoder-decoder the decoder's ids (start token, forced
prefix, generated tokens; the source text is not part of it, as in Hugging Face). Greedy and beam
search are token-for-token those of ``generate``; sampling draws from the same distribution with a
seeded ``numpy`` generator, so it is reproducible per seed but cannot match torch's random stream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchport.runtimes._errors import InferenceInputError

__all__ = ["LogitsRules", "Timestamps", "check_bad_words", "pick", "warp"]


def check_bad_words(value: Any) -> tuple[tuple[int, ...], ...]:
    """``bad_words_ids`` as a tuple of id tuples; raises :class:`InferenceInputError` when it is not
    a list of non-empty lists of ids >= 0.

    Example:
        >>> check_bad_words([[5], [7, 8]])
        ((5,), (7, 8))
    """
    ok = isinstance(value, list | tuple) and all(
        isinstance(seq, list | tuple)
        and seq
        and all(isinstance(t, int | np.integer) and not isinstance(t, bool) and t >= 0 for t in seq)
        for seq in value
    )
    if not ok:
        raise InferenceInputError(
            f"bad_words_ids must be a list of non-empty lists of token ids >= 0, got {value!r}"
        )
    return tuple(tuple(int(t) for t in seq) for seq in value)


@dataclass(frozen=True)
class Timestamps:
    """Whisper's timestamp rules (Hugging Face's ``WhisperTimeStampLogitsProcessor``), for a prompt
    without ``<|notimestamps|>``: timestamps come in pairs (except right before EOS) and never
    decrease, the first token is a timestamp (at most ``max_initial_index`` steps in), and a
    timestamp is forced when the timestamps together are likelier than any text token.

    Attributes:
        no_timestamps_token_id: ``<|notimestamps|>`` (banned); the first timestamp id follows it.
        eos_token_id: ids below it are text (banned right after a lone timestamp).
        max_initial_index: how far the first timestamp may be (``None``: anywhere).
    """

    no_timestamps_token_id: int
    eos_token_id: int
    max_initial_index: int | None = None

    def apply(self, out: np.ndarray, history: Sequence[int], begin: int) -> None:
        """Mask ``out`` (one row, in place); ``begin``: where the generated tokens start in ``history``."""
        first = self.no_timestamps_token_id + 1
        out[self.no_timestamps_token_id] = -np.inf
        seq = list(history[begin:])
        last_ts = len(seq) >= 1 and seq[-1] >= first
        before_ts = len(seq) < 2 or seq[-2] >= first
        if last_ts:
            if before_ts:  # a pair just closed: text next
                out[first:] = -np.inf
            else:  # a lone timestamp: another one (or EOS) next
                out[: self.eos_token_id] = -np.inf
        stamps = [t for t in seq if t >= first]
        lowest = first
        if stamps:
            lowest = stamps[-1] if last_ts and not before_ts else stamps[-1] + 1
        out[first:lowest] = -np.inf
        if len(history) == begin:
            out[:first] = -np.inf
            if self.max_initial_index is not None:
                out[first + self.max_initial_index + 1 :] = -np.inf
        logp = _log_softmax(out)
        text_best = np.max(logp[:first])
        stamp_mass = _logsumexp(logp[first:])
        if stamp_mass > text_best:
            out[:first] = -np.inf


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x - _logsumexp(x)


def _logsumexp(x: np.ndarray) -> np.float32:
    m = np.max(x)
    if not np.isfinite(m):
        return np.float32(m)
    return np.float32(m + np.log(np.sum(np.exp(x - m))))


@dataclass(frozen=True)
class LogitsRules:
    """The logits processors of one request, in Hugging Face ``generate``'s order.

    Attributes:
        eos_token_ids: the ids ``min_length`` / ``min_new_tokens`` hold back and ``bad_words_ids`` spares.
        repetition_penalty: > 1 divides positive / multiplies negative scores of every id in the history.
        no_repeat_ngram_size: no n-gram of this size occurs twice in the history (0: off).
        min_length: EOS is banned while the history is shorter (prompt or decoder prefix included).
        min_new_tokens: EOS is banned until this many tokens were generated.
        bad_words_ids: id sequences never generated (the last id is banned when the rest just occurred).
        suppress_tokens: ids banned at every step.
        begin_suppress_tokens: ids banned at the first free step.
        forced_bos_token_id: forced as the first token after a one-token decoder prefix.
        forced_eos_token_id: forced as the last token the length allows.
        timestamps: Whisper's timestamp rules (last, as Hugging Face's Whisper ``generate`` orders them).

    Example:
        >>> rules = LogitsRules(eos_token_ids=(2,), no_repeat_ngram_size=2, min_new_tokens=4)
        >>> scores = rules.apply(np.zeros(6, np.float32), history=[0, 3, 4, 3], prompt_len=1, max_length=9)
        >>> [int(i) for i in np.flatnonzero(np.isinf(scores))]   # 4 would repeat "3 4"; EOS too early
        [2, 4]
    """

    eos_token_ids: tuple[int, ...] = ()
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_length: int = 0
    min_new_tokens: int = 0
    bad_words_ids: tuple[tuple[int, ...], ...] = ()
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None
    timestamps: Timestamps | None = None

    @property
    def active(self) -> bool:
        """Whether any rule can change a score (otherwise greedy is a plain argmax)."""
        return bool(
            self.repetition_penalty != 1.0
            or self.no_repeat_ngram_size
            or self.min_length
            or self.min_new_tokens
            or self.bad_words_ids
            or self.suppress_tokens
            or self.begin_suppress_tokens
            or self.forced_bos_token_id is not None
            or self.forced_eos_token_id is not None
            or self.timestamps is not None
        )

    def apply(
        self, scores: np.ndarray, history: Sequence[int], prompt_len: int, max_length: int
    ) -> np.ndarray:
        """The processed scores of one row (a new float32 array; ``scores`` is not changed).

        Args:
            scores: the row's next-token logits (or log-probabilities, in beam search) ``[vocab]``.
            history: the ids generated from so far (see the module docstring).
            prompt_len: how many of them are the prompt / decoder prefix (not generated).
            max_length: the longest the history may become (prompt_len + max_new_tokens).
        """
        out = np.array(scores, dtype=np.float32, copy=True)
        if not self.active:
            return out
        vocab = out.shape[-1]
        cur = len(history)
        if self.repetition_penalty != 1.0 and cur:
            seen = np.unique(np.asarray(history, np.int64))
            seen = seen[(seen >= 0) & (seen < vocab)]
            vals = out[seen]
            p = np.float32(self.repetition_penalty)
            out[seen] = np.where(vals < 0, vals * p, vals / p)
        n = self.no_repeat_ngram_size
        if n and cur + 1 >= n:
            tail = tuple(history[cur + 1 - n :]) if n > 1 else ()
            banned = {history[i + n - 1] for i in range(cur - n + 1) if tuple(history[i : i + n - 1]) == tail}
            out[[t for t in banned if 0 <= t < vocab]] = -np.inf
        if self.bad_words_ids:
            eos = set(self.eos_token_ids)
            for seq in self.bad_words_ids:
                if len(seq) == 1:
                    if seq[0] not in eos and seq[0] < vocab:
                        out[seq[0]] = -np.inf
                    continue
                k = len(seq) - 1
                if k <= cur and tuple(history[cur - k :]) == seq[:-1] and seq[-1] < vocab:
                    out[seq[-1]] = -np.inf
        eos_ids = [t for t in self.eos_token_ids if 0 <= t < vocab]
        if eos_ids and (
            (self.min_length and cur < self.min_length)
            or (self.min_new_tokens and cur - prompt_len < self.min_new_tokens)
        ):
            out[eos_ids] = -np.inf
        forced = None
        if self.forced_bos_token_id is not None and cur == 1:
            forced = self.forced_bos_token_id
        elif self.forced_eos_token_id is not None and cur == max_length - 1:
            forced = self.forced_eos_token_id
        if forced is not None:
            out[:] = -np.inf
            out[forced] = 0
        if self.suppress_tokens:
            out[list(self.suppress_tokens)] = -np.inf
        if self.begin_suppress_tokens:
            begin = prompt_len + (1 if prompt_len == 1 and self.forced_bos_token_id is not None else 0)
            if cur == begin:
                out[list(self.begin_suppress_tokens)] = -np.inf
        if self.timestamps is not None:
            self.timestamps.apply(out, history, prompt_len)
        return out

    def with_request(self, params: Any, defaults: Mapping[str, Any] | None = None) -> LogitsRules:
        """These model rules plus a request's :class:`~torchport.runtimes.SamplingParams`; a field the
        request leaves ``None`` (or ``repetition_penalty`` 1) takes the generation config's value from
        ``defaults`` (``extra.generation.generation_config``), as ``generate`` does."""
        d = dict(defaults or {})

        def get(name: str, unset: Any = None) -> Any:
            value = getattr(params, name, None)
            return d.get(name, unset) if value is None or value == unset else value

        bad = get("bad_words_ids")
        return LogitsRules(
            eos_token_ids=self.eos_token_ids,
            repetition_penalty=float(get("repetition_penalty", 1.0) or 1.0),
            no_repeat_ngram_size=int(get("no_repeat_ngram_size") or 0),
            min_length=int(get("min_length") or 0),
            min_new_tokens=int(get("min_new_tokens") or 0),
            bad_words_ids=check_bad_words(bad) if bad else (),
            suppress_tokens=self.suppress_tokens,
            begin_suppress_tokens=self.begin_suppress_tokens,
            forced_bos_token_id=self.forced_bos_token_id,
            forced_eos_token_id=self.forced_eos_token_id,
            timestamps=self.timestamps,
        )


def warp(scores: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """Temperature, then top-k, then top-p (Hugging Face's warpers, in its order) on one row of scores;
    removed ids get ``-inf``.

    Example:
        >>> warp(np.array([1.0, 3.0, 2.0], np.float32), top_k=2).tolist()
        [-inf, 3.0, 2.0]
    """
    out = np.asarray(scores, dtype=np.float32)
    if temperature != 1.0:
        out = out / np.float32(temperature)
    if top_k and top_k < out.shape[-1]:
        kth = np.partition(out, -top_k)[-top_k]
        out = np.where(out < kth, np.float32(-np.inf), out)
    if top_p < 1.0:
        order = np.argsort(out, kind="stable")  # ascending, as Hugging Face's TopPLogitsWarper
        cum = np.cumsum(softmax(out[order]))
        remove = cum <= (1 - top_p)
        remove[-1] = False  # keep at least one token
        out = out.copy()
        out[order[remove]] = -np.inf
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    """Probabilities (float64) from one row of scores (``-inf`` → 0)."""
    x = np.asarray(x, np.float64)
    e = np.exp(x - np.max(x))
    return e / e.sum()


def pick(scores: np.ndarray, do_sample: bool, rng: np.random.Generator) -> int:
    """Argmax (greedy), or one draw from ``softmax(scores)`` with ``rng``."""
    if not do_sample:
        return int(np.argmax(scores))
    probs = softmax(scores)
    return int(rng.choice(probs.shape[-1], p=probs))
