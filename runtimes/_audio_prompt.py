"""Whisper's decoder prompt and token suppression, as Hugging Face's ``WhisperForConditionalGeneration.generate``.

A Whisper decoder starts from a forced prompt, not from one start token:

    <|startoftranscript|> <|language|> <|transcribe|> or <|translate|> <|notimestamps|>

The language is the request's (a code such as ``"en"``, or its token ``"<|en|>"``) or, on a
multilingual model asked for none, detected: one decoder step from ``<|startoftranscript|>`` and the
most likely language token (:meth:`WhisperPrompt.detect_language`). Timestamps are off by default
(``<|notimestamps|>`` ends the prompt). At every step the generation config's ``suppress_tokens``
are masked out, and at the first generated step its ``begin_suppress_tokens`` too
(:meth:`WhisperPrompt.suppress`; with beam search, on the log-probabilities, as Hugging Face does).

The settings come from the package's ``extra["generation"]["whisper"]``, which
:func:`whisper_settings` extracts from a Hugging Face ``generation_config.json`` at export.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from torchport.runtimes._errors import InferenceInputError

__all__ = ["TASKS", "WhisperPrompt", "whisper_settings"]

TASKS = ("transcribe", "translate")

_KEYS = (
    "decoder_start_token_id",
    "lang_to_id",
    "task_to_id",
    "no_timestamps_token_id",
    "suppress_tokens",
    "begin_suppress_tokens",
    "is_multilingual",
    "forced_decoder_ids",
    "max_initial_timestamp_index",
)


def whisper_settings(generation_config: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a Whisper ``generation_config.json`` the prompt needs (for ``extra["generation"]``).

    Example:
        >>> whisper_settings({"decoder_start_token_id": 50258, "max_length": 448, "suppress_tokens": [1]})
        {'decoder_start_token_id': 50258, 'suppress_tokens': [1]}
    """
    return {k: generation_config[k] for k in _KEYS if generation_config.get(k) is not None}


@dataclass(frozen=True)
class WhisperPrompt:
    """Forced decoder prompt and suppressed tokens of one Whisper model.

    Example:
        >>> p = WhisperPrompt.from_settings({"decoder_start_token_id": 1, "lang_to_id": {"<|en|>": 2},
        ...     "task_to_id": {"transcribe": 4, "translate": 3}, "no_timestamps_token_id": 5})
        >>> p.prompt(language="en")
        [1, 2, 4, 5]
        >>> p.prompt(language="en", task="translate", timestamps=True)
        [1, 2, 3]
    """

    decoder_start_token_id: int
    lang_to_id: dict[str, int] = field(default_factory=dict)
    task_to_id: dict[str, int] = field(default_factory=dict)
    no_timestamps_token_id: int | None = None
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()
    is_multilingual: bool | None = None
    #: ``[[position, id], ...]`` of older configs, used when neither language nor task is asked for
    forced_decoder_ids: tuple[tuple[int, int | None], ...] = ()

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> WhisperPrompt:
        """From :func:`whisper_settings`'s dict (the manifest's ``extra["generation"]["whisper"]``)."""
        return cls(
            decoder_start_token_id=int(settings["decoder_start_token_id"]),
            lang_to_id={str(k): int(v) for k, v in (settings.get("lang_to_id") or {}).items()},
            task_to_id={str(k): int(v) for k, v in (settings.get("task_to_id") or {}).items()},
            no_timestamps_token_id=(
                int(settings["no_timestamps_token_id"])
                if settings.get("no_timestamps_token_id") is not None
                else None
            ),
            suppress_tokens=tuple(int(t) for t in settings.get("suppress_tokens") or ()),
            begin_suppress_tokens=tuple(int(t) for t in settings.get("begin_suppress_tokens") or ()),
            is_multilingual=settings.get("is_multilingual"),
            forced_decoder_ids=tuple(
                (int(p), None if t is None else int(t)) for p, t in settings.get("forced_decoder_ids") or ()
            ),
        )

    def language_id(self, language: str) -> int:
        """The token id of ``language`` (``"en"`` or ``"<|en|>"``).

        Raises:
            InferenceInputError: the model has no such language token, or is English-only.
        """
        if self.is_multilingual is False:
            raise InferenceInputError("this Whisper model is English-only; do not pass a language")
        key = language.strip().lower()
        token = key if key.startswith("<|") else f"<|{key}|>"
        if token not in self.lang_to_id:
            codes = ", ".join(t.strip("<|>") for t in list(self.lang_to_id)[:8])
            more = "..." if len(self.lang_to_id) > 8 else ""
            raise InferenceInputError(
                f"language {language!r} is not one of this model's {len(self.lang_to_id)} languages "
                f"(pass a code such as {codes}{more})"
            )
        return self.lang_to_id[token]

    def needs_detection(self, language: str | None, task: str | None = None) -> bool:
        """Whether the prompt waits for :meth:`detect_language` (a multilingual model, no language asked)."""
        if language is not None or not self.lang_to_id:
            return False
        if task is None and any(p == 1 and t is not None for p, t in self.forced_decoder_ids):
            return False
        return True

    def detect_language(self, logits: np.ndarray) -> list[int]:
        """The language token per row of ``logits`` ``[batch, vocab]`` (the step after the start token)."""
        ids = np.array(sorted(self.lang_to_id.values()), dtype=np.int64)
        rows = np.asarray(logits)[:, ids]
        return [int(ids[i]) for i in np.argmax(rows, axis=-1)]

    def prompt(
        self,
        *,
        language: str | None = None,
        task: str | None = None,
        timestamps: bool = False,
        detected_language_id: int | None = None,
    ) -> list[int]:
        """The forced decoder prompt for one request.

        Args:
            language: a language code or token; ``None``: ``detected_language_id`` (multilingual) or none.
            task: ``"transcribe"`` or ``"translate"``; ``None``: transcribe when a language is set.
            timestamps: leave ``<|notimestamps|>`` out.
            detected_language_id: what :meth:`detect_language` found, when :meth:`needs_detection`.

        Raises:
            InferenceInputError: an unknown language or task.
        """
        if task is not None and task not in TASKS:
            raise InferenceInputError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        if task is not None and self.is_multilingual is False:
            raise InferenceInputError("this Whisper model is English-only; do not pass a task")
        if task is not None and task not in self.task_to_id:
            raise InferenceInputError(f"this Whisper model has no {task!r} task token")
        tokens: list[int | None] = [self.decoder_start_token_id]
        if language is None and task is None:
            for position, token in sorted(self.forced_decoder_ids):
                if position != len(tokens):
                    break
                tokens.append(token)
        lang = self.language_id(language) if language is not None else detected_language_id
        if lang is not None:
            if len(tokens) > 1:
                tokens[1] = lang
            else:
                tokens.append(lang)
        task_ids = set(self.task_to_id.values())
        if task is not None:
            wanted = self.task_to_id[task]
            if any(t in task_ids for t in tokens):
                tokens = [wanted if t in task_ids else t for t in tokens]
            else:
                tokens.append(wanted)
        elif language is not None and self.task_to_id and not any(t in task_ids for t in tokens):
            tokens.append(self.task_to_id["transcribe"])
        notime = self.no_timestamps_token_id
        if notime is not None and not timestamps and tokens[-1] != notime:
            tokens.append(notime)
        elif timestamps and notime is not None and tokens[-1] == notime:
            tokens.pop()
        return [t for t in tokens if t is not None]

    def suppress(self, scores: np.ndarray, generated: int) -> np.ndarray:
        """Mask suppressed tokens to ``-inf`` in ``scores`` ``[..., vocab]`` (in place; returned).

        Args:
            scores: next-token logits (greedy, sampling) or log-probabilities (beam search).
            generated: tokens generated so far after the prompt (0 at the first step: begin-suppress).
        """
        vocab = scores.shape[-1]
        if self.suppress_tokens:
            scores[..., [t for t in self.suppress_tokens if 0 <= t < vocab]] = -np.inf
        if generated == 0 and self.begin_suppress_tokens:
            scores[..., [t for t in self.begin_suppress_tokens if 0 <= t < vocab]] = -np.inf
        return scores


def check_languages(prompt: WhisperPrompt, languages: Sequence[str | None]) -> None:
    """Raise on the first language the model does not have (before any work is queued)."""
    for language in languages:
        if language is not None:
            prompt.language_id(language)
