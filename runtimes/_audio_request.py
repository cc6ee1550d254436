"""What a speech request sends, turned into the generate loop's encoder feeds and forced prompt.

A speech package (an encoder-decoder whose encoder takes ``input_features``) answers requests that
carry ``audio``: a WAV file or FP32 samples at the model's rate (16 kHz). Over JSON a WAV travels as
a base64 string, samples as a list of numbers; over the binary tensor extension and gRPC a BYTES
tensor holds one WAV file per element and an FP32 tensor ``[batch, samples]`` (or ``[samples]``)
holds samples. Per request, ``language`` (a code such as ``"en"``) and ``task`` (``"transcribe"`` or
``"translate"``) pick Whisper's forced prompt; timestamps are off unless asked for
(``timestamps=True``: the prompt leaves ``<|notimestamps|>`` out and the batch applies Whisper's
timestamp rules, :class:`~torchport.runtimes._logits.Timestamps`).

:class:`SpeechCodec` does the conversion (WAV decoding and log-mel in :mod:`torchport.runtimes._audio`,
the prompt in :mod:`torchport.runtimes._audio_prompt`); every problem is an
:class:`~torchport.runtimes._errors.InferenceInputError` with one line, which the server answers as 400.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchport.runtimes._audio import AudioFeatures, decode_audio
from torchport.runtimes._audio_prompt import WhisperPrompt
from torchport.runtimes._errors import InferenceInputError

__all__ = ["AUDIO", "SpeechCodec", "is_speech"]

#: the request field / infer input that carries audio
AUDIO = "audio"
#: the most audio items one request may carry
MAX_ITEMS = 64


def is_speech(manifest: Any) -> bool:
    """Whether ``manifest`` is an encoder-decoder package whose encoder takes audio features."""
    extra = getattr(manifest, "extra", None) or {}
    gen = extra.get("generation")
    return (
        isinstance(gen, dict)
        and gen.get("architecture") == "encoder-decoder"
        and (gen.get("source") == "input_features" or "audio" in extra)
    )


@dataclass(frozen=True)
class SpeechCodec:
    """Audio in, encoder feeds and forced decoder ids out, for one speech package.

    Example:
        >>> codec = SpeechCodec(AudioFeatures(), WhisperPrompt(decoder_start_token_id=1,
        ...     lang_to_id={"<|en|>": 2}, task_to_id={"transcribe": 3}, no_timestamps_token_id=4))
        >>> codec.forced(language="en")
        [2, 3, 4]
        >>> codec.sources([np.zeros(1600, dtype=np.float32)])[0]["input_features"].shape
        (80, 3000)
    """

    features: AudioFeatures
    prompt: WhisperPrompt
    #: the encoder input the features feed
    input_name: str = "input_features"
    #: the model has timestamp tokens (a request may ask for them)
    timestamps: bool = False

    @classmethod
    def from_manifest(cls, manifest: Any) -> SpeechCodec | None:
        """The codec of a speech package (``None`` for any other package)."""
        if not is_speech(manifest):
            return None
        extra = manifest.extra
        gen = extra["generation"]
        settings = gen.get("whisper") or gen  # older packages: the start token and masks only
        features = AudioFeatures.from_config(extra.get("audio") or {})
        notime = settings.get("no_timestamps_token_id")
        # timestamp ids follow <|notimestamps|>; a vocabulary that ends there has none
        stamps = isinstance(notime, int) and int(gen.get("vocab") or 0) > notime + 1
        return cls(features, WhisperPrompt.from_settings(settings), timestamps=stamps)

    @property
    def max_seconds(self) -> float:
        """The longest audio a request may send (Whisper's window, 30 s)."""
        return float(self.features.chunk_length)

    def decode(self, audio: bytes | np.ndarray) -> np.ndarray:
        """Mono samples at the model's rate from one audio item (see :func:`decode_audio`)."""
        return decode_audio(audio, sampling_rate=self.features.sampling_rate, max_seconds=self.max_seconds)

    def sources(self, items: Sequence[bytes | np.ndarray]) -> list[dict[str, np.ndarray]]:
        """One encoder feed dict per audio item (``{"input_features": [n_mels, frames]}``)."""
        if not items:
            raise InferenceInputError("audio is empty; send a WAV file or FP32 samples")
        if len(items) > MAX_ITEMS:
            raise InferenceInputError(f"at most {MAX_ITEMS} audio items per request, got {len(items)}")
        feats = self.features.extract([self.decode(a) for a in items])
        return [{self.input_name: f} for f in feats]

    def forced(
        self,
        language: Any = None,
        task: Any = None,
        timestamps: Any = False,
        *,
        detect: Callable[[], np.ndarray] | None = None,
    ) -> list[int]:
        """The decoder ids forced after the start token for a request's ``language`` / ``task``.

        ``detect`` returns the first decoder step's logits ``[1, vocab]`` (``Seq2SeqBatch.first_logits``):
        called when a multilingual model is asked for no language, whose token it then picks, as
        Hugging Face's ``generate`` detects the language.

        Raises:
            InferenceInputError: a language or task the model does not have, or timestamps asked of
                a model without timestamp tokens.
        """
        if language is not None and not isinstance(language, str):
            raise InferenceInputError(f"language must be a string such as 'en', got {language!r}")
        if task is not None and not isinstance(task, str):
            raise InferenceInputError(f"task must be 'transcribe' or 'translate', got {task!r}")
        if timestamps not in (False, None, True):
            raise InferenceInputError(f"timestamps must be true or false, got {timestamps!r}")
        if timestamps and not self.timestamps:
            raise InferenceInputError(
                "this model has no timestamp tokens; leave timestamps off (the default)"
            )
        if language is not None and not self.prompt.lang_to_id:
            raise InferenceInputError(
                "this package does not record Whisper's language tokens; send audio without language "
                "(or re-export it with this torchport)"
            )
        detected = None
        if detect is not None and self.prompt.needs_detection(language, task):
            detected = self.prompt.detect_language(detect())[0]
        return self.prompt.prompt(
            language=language, task=task, timestamps=bool(timestamps), detected_language_id=detected
        )[1:]

    @staticmethod
    def from_json(value: Any) -> list[bytes | np.ndarray]:
        """Audio items from a JSON ``audio`` field: a base64 WAV string, a list of numbers, or a list of those."""
        many = isinstance(value, list) and value and isinstance(value[0], str | list)
        items = value if many else [value]
        out: list[bytes | np.ndarray] = []
        for item in items:
            if isinstance(item, str):
                try:
                    out.append(base64.b64decode(item, validate=True))
                except (binascii.Error, ValueError):
                    raise InferenceInputError(
                        "audio in JSON must be a base64-encoded WAV file or a list of FP32 samples"
                    ) from None
            elif isinstance(item, list) and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in item
            ):
                out.append(np.asarray(item, dtype=np.float32))
            else:
                raise InferenceInputError(
                    "audio in JSON must be a base64-encoded WAV file or a list of FP32 samples"
                )
        return out

    @staticmethod
    def from_tensor(array: np.ndarray) -> list[bytes | np.ndarray]:
        """Audio items from an infer input: BYTES (one WAV per element) or FP32 ``[batch, samples]`` / ``[samples]``."""
        if array.dtype == object or array.dtype.kind in "SU":
            items: list[bytes | np.ndarray] = []
            for item in array.reshape(-1):
                if isinstance(item, str):
                    item = item.encode("latin-1", errors="strict")
                if not isinstance(item, bytes | bytearray):
                    raise InferenceInputError("a BYTES audio input holds one WAV file per element")
                items.append(bytes(item))
            return items
        if array.dtype.kind != "f":
            raise InferenceInputError(f"audio must be BYTES (WAV files) or FP32 samples, got {array.dtype}")
        if array.ndim == 1:
            return [array]
        if array.ndim == 2:
            return list(array)
        raise InferenceInputError(
            f"FP32 audio must be [batch, samples] or [samples], got shape {list(array.shape)}"
        )
