"""Speech on ``/v2/models/{m}/infer`` (HTTP and gRPC): a Whisper package takes a BYTES ``audio`` input
(one WAV file per element, ``[batch]`` or ``[batch, 1]``; in a JSON body, where BYTES elements are
text, the WAV file's base64) or FP32 samples (``[batch, samples]``, 16 kHz)
and answers a BYTES ``text_output`` with each element's transcription (greedy, language detected as
Hugging Face does, at most the generation config's ``max_length`` decoder tokens, the start token and
forced prompt included), from the same generate engine as ``/generate``.

The interface is the text-to-text one (``_text2text_infer.Text2TextInfer``: ``metadata``,
``check_declared``, ``check_token_input``, ``requests``, ``encode``, ``outputs``), with the input named
``audio``: the runner submits :meth:`SpeechInfer.requests` to the engine.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np

from torchport.runtimes._audio_request import AUDIO, SpeechCodec
from torchport.runtimes._errors import InferenceInputError, TorchportError
from torchport.runtimes._generate import GenRequest, Seq2SeqSpec
from torchport.runtimes.server._text2text_infer import GenerationInfer, default_new_tokens, sampling_of

__all__ = ["OUTPUT", "SpeechInfer"]

OUTPUT = "text_output"


def _items(array: np.ndarray) -> list[bytes | np.ndarray]:
    """The audio items of an infer input (BYTES elements as the server holds them: ``str`` decoded with
    surrogateescape, or ``bytes``); a BYTES element that is base64 text of a WAV file (what a JSON
    body can carry) is decoded, any other goes on as it is (the codec names what is wrong)."""
    if array.dtype == object:  # the server holds BYTES as text decoded with surrogateescape
        raw_items = [
            item.encode("utf-8", "surrogateescape") if isinstance(item, str) else item
            for item in array.reshape(-1)
        ]
        array = np.empty(len(raw_items), dtype=object)
        array[:] = raw_items
    items = SpeechCodec.from_tensor(array)
    out: list[bytes | np.ndarray] = []
    for item in items:
        if isinstance(item, bytes) and item and not item.startswith(b"RIFF"):
            try:
                raw = base64.b64decode(item, validate=True)
            except (binascii.Error, ValueError):
                raw = b""
            if raw.startswith(b"RIFF"):
                item = raw
        out.append(item)
    return out


class SpeechInfer(GenerationInfer):
    """The ``audio`` input and ``text_output`` of a served speech package (see the module doc)."""

    input_name = AUDIO
    task = "automatic-speech-recognition"
    codec: SpeechCodec
    #: infer request parameters beside the generation settings: Whisper's prompt
    extra_parameters = ("language", "task")
    #: the runner builds the requests in its executor (decode, log-mel, language detection: not on the loop)
    prepare_off_loop = True
    #: datatypes the input is taken in besides metadata's BYTES (see ``InputSignature.also_takes``)
    datatypes: dict[str, tuple[str, ...]] = {AUDIO: ("FP32",)}

    @classmethod
    def of(cls, session: Any, name: str | None = None) -> SpeechInfer | None:
        """The audio handling of a speech package's session, or ``None`` for any other."""
        codec = SpeechCodec.from_manifest(session.manifest)
        if codec is None:
            return None
        try:
            spec = Seq2SeqSpec.from_manifest(session.manifest)
        except TorchportError:
            return None
        return cls(name or session.name, codec, spec, default_new_tokens(session.manifest, spec))

    def metadata(self) -> tuple[list[dict], list[dict]]:
        return [{"name": AUDIO, "datatype": "BYTES", "shape": [-1]}], [
            {"name": OUTPUT, "datatype": "BYTES", "shape": [-1]}
        ]

    def check_declared(self, datatype: str, shape: tuple[int, ...], seen: dict[str, tuple[int, str]]) -> None:
        if datatype == "BYTES":
            if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
                raise InferenceInputError(
                    f"input {AUDIO!r} has shape {list(shape)}; expected [batch] or [batch, 1]"
                )
        elif datatype == "FP32":
            if len(shape) not in (1, 2):
                raise InferenceInputError(
                    f"input {AUDIO!r} has shape {list(shape)}; FP32 audio is [batch, samples] or [samples]"
                )
        else:
            raise InferenceInputError(
                f"input {AUDIO!r} has datatype {datatype}; send BYTES (WAV files) or FP32 samples"
            )

    def check_token_input(self, name: str, seen: Mapping[str, tuple[int, str]]) -> None:
        raise InferenceInputError(f"model {self.name!r} takes a BYTES {AUDIO!r} input on infer, not {name!r}")

    def output_shape(self, inputs: Mapping[str, np.ndarray]) -> tuple[int, ...]:
        """The shape of ``text_output``: one text per WAV element, or per FP32 row."""
        array = np.asarray(inputs[AUDIO])
        if array.dtype.kind == "f":
            return (1,) if array.ndim == 1 else (array.shape[0],)
        return array.shape

    def requests(
        self, inputs: Mapping[str, np.ndarray], detect: Any = None, settings: Mapping[str, Any] | None = None
    ) -> list[GenRequest]:
        """One request per audio item (greedy by default).

        Args:
            inputs: the request's ``{"audio": array}``.
            detect: ``detect(source) -> logits [1, vocab]`` (``Seq2SeqBatch.first_logits``) for
                language detection; ``None``: no language token.
            settings: the request's generation settings (``_text2text_infer.infer_settings``), with
                ``language`` / ``task`` for Whisper's prompt.

        Raises:
            InferenceInputError: no ``audio``, an empty / non-WAV / too long item.
        """
        if set(inputs) != {AUDIO}:
            raise InferenceInputError(
                f"model {self.name!r} takes one input {AUDIO!r} (BYTES WAV or FP32) on infer"
            )
        settings = dict(settings or {})
        language, task = settings.pop("language", None), settings.pop("task", None)
        items = _items(np.asarray(inputs[AUDIO]))
        out = []
        for i, source in enumerate(self.codec.sources(items)):
            try:
                forced = self.codec.forced(
                    language, task, detect=partial(detect, [source]) if detect is not None else None
                )
            except InferenceInputError as e:
                raise InferenceInputError(f"audio[{i}]: {e}") from None
            # max_length counts the forced prompt too (as Hugging Face does for Whisper)
            params = sampling_of(settings, max(1, self.max_new_tokens - len(forced)))
            out.append(GenRequest([], params, source=source, forced=forced))
        return out

    def encode(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check the request's audio (decoded, not yet featurized); it goes on to the runner as it is."""
        if set(inputs) != {AUDIO}:
            raise InferenceInputError(
                f"model {self.name!r} takes one input {AUDIO!r} (BYTES WAV or FP32) on infer"
            )
        for item in _items(np.asarray(inputs[AUDIO])):
            self.codec.decode(item)
        return {AUDIO: np.asarray(inputs[AUDIO])}

    def outputs(
        self,
        feeds: Mapping[str, np.ndarray],
        results: Mapping[str, np.ndarray],
        wanted: list[str] | None,
        *,
        is_text: bool,
    ) -> dict[str, np.ndarray]:
        return {OUTPUT: results[OUTPUT]}
