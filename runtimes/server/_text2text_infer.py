"""Text-to-text on ``/v2/models/{m}/infer`` (HTTP and gRPC): an encoder-decoder package that carries a
tokenizer takes a BYTES ``text`` input (``[batch]`` or ``[batch, 1]``) and answers a BYTES
``text_output`` of the same shape: each element's generated text (greedy, at most the package's
``generation_config.max_length`` new tokens, else 32), from the same generate engine as
``/generate`` (continuous batching: infer and generate requests share its batch).

The request's ``parameters`` (KServe v2 request-level parameters, HTTP JSON or gRPC
``ModelInferRequest.parameters``) take ``/generate``'s fields: ``max_tokens``, ``temperature``,
``top_p``, ``top_k``, ``seed``, ``repetition_penalty``, ``ignore_eos``, ``no_repeat_ngram_size``,
``min_length``, ``min_new_tokens``, and beam search's
``num_beams``, ``length_penalty``, ``early_stopping`` (speech also ``language``, ``task``); they apply
to every element. The protocol's own (``binary_data_output``, ``priority``, ``timeout``...) pass.

Text beyond the encoder's range, bytes that are not UTF-8, or tensor inputs are 400s naming what to
send; a failing request ends alone (the engine goes on with the others).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np

from torchport.runtimes._errors import InferenceInputError, TorchportError
from torchport.runtimes._generate import GenRequest, SamplingParams, Seq2SeqBatch, Seq2SeqSpec, is_seq2seq
from torchport.runtimes._tokenizer import TextCodec
from torchport.runtimes.server._batching import ModelRunner
from torchport.runtimes.server._generate_engine import Job
from torchport.runtimes.server._generate_routes import INFER_FIELDS, Beams, _engine, _sampling, parse_beams
from torchport.runtimes.server._protocol import HTTPError

__all__ = ["OUTPUT", "GenerationInfer", "Text2TextInfer", "Text2TextRunner"]

TEXT = "text"
OUTPUT = "text_output"
DEFAULT_NEW_TOKENS = 32
#: request parameters of the protocol or of Triton's clients, not generation settings: let through
_PROTOCOL_PARAMETERS = frozenset(
    {"binary_data_output", "priority", "timeout", "sequence_id", "sequence_start", "sequence_end", "headers"}
)


def infer_settings(parameters: Mapping[str, Any] | None, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The generation settings among an infer request's ``parameters`` (``extra``: the handler's
    own, e.g. speech's ``language``/``task``).

    Raises:
        InferenceInputError: a parameter that is neither a generation setting nor the protocol's.
    """
    accepted = INFER_FIELDS + extra
    params = dict(parameters or {})
    unknown = sorted(k for k in params if k not in accepted and k not in _PROTOCOL_PARAMETERS)
    if unknown:
        raise InferenceInputError(
            f"unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}"
        )
    return {k: v for k, v in params.items() if k in accepted}


def sampling_of(settings: Mapping[str, Any], default_new_tokens: int) -> SamplingParams:
    """:class:`SamplingParams` from infer ``settings`` (``max_tokens`` defaulting to the handler's).

    Raises:
        InferenceInputError: a bad value, named as /generate names it.
    """
    try:
        return _sampling({"max_tokens": default_new_tokens, **settings})
    except HTTPError as e:
        raise InferenceInputError(e.message) from None


def default_new_tokens(manifest: Any, spec: Seq2SeqSpec) -> int:
    """New tokens an /infer request generates unless it says: the generation config's
    ``max_length`` - 1 (else 32), within the decoder's positions."""
    settings = manifest.extra["generation"].get("generation_config") or {}
    wanted = settings.get("max_length")
    n = int(wanted) - 1 if isinstance(wanted, int) and wanted > 1 else DEFAULT_NEW_TOKENS
    return max(1, min(n, spec.max_positions - 1))


class GenerationInfer:
    """What the text-to-text and speech /infer handlers share: the model's name, its input codec,
    its generation spec and default new tokens; no tensor inputs of their own."""

    #: metadata's ``text_task``
    task = ""

    def __init__(self, name: str, codec: Any, spec: Seq2SeqSpec, max_new_tokens: int) -> None:
        self.name = name
        self.codec = codec
        self.spec = spec
        self.max_new_tokens = max_new_tokens
        self.specs: dict[str, Any] = {}
        self.token_inputs: list[str] = []


class Text2TextInfer(GenerationInfer):
    """The ``text`` input and ``text_output`` of a served text-to-text package (see the module doc)."""

    input_name = TEXT
    task = "text2text-generation"
    codec: TextCodec

    @classmethod
    def of(cls, session: Any, name: str | None = None) -> Text2TextInfer | None:
        """The text handling of a text-to-text package's session, or ``None`` for any other."""
        manifest = session.manifest
        if not is_seq2seq(manifest) or session.package is None:
            return None
        try:
            spec = Seq2SeqSpec.from_manifest(manifest)
            codec = TextCodec.from_package(session.package)
        except TorchportError:
            return None
        if spec.audio or codec is None:
            return None
        return cls(name or session.name, codec, spec, default_new_tokens(manifest, spec))

    def metadata(self) -> tuple[list[dict], list[dict]]:
        return [{"name": TEXT, "datatype": "BYTES", "shape": [-1]}], [
            {"name": OUTPUT, "datatype": "BYTES", "shape": [-1]}
        ]

    def check_declared(self, datatype: str, shape: tuple[int, ...], seen: dict[str, tuple[int, str]]) -> None:
        if datatype != "BYTES":
            raise InferenceInputError(f"input {TEXT!r} has datatype {datatype}, the model expects BYTES")
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise InferenceInputError(
                f"input {TEXT!r} has shape {list(shape)}; expected [batch] or [batch, 1]"
            )

    def check_token_input(self, name: str, seen: Mapping[str, tuple[int, str]]) -> None:
        raise InferenceInputError(f"model {self.name!r} takes a BYTES {TEXT!r} input on infer, not {name!r}")

    def output_shape(self, inputs: Mapping[str, np.ndarray]) -> tuple[int, ...]:
        """The shape of ``text_output``: the shape of ``text``."""
        return tuple(np.asarray(inputs[TEXT]).shape)

    def requests(
        self, inputs: Mapping[str, np.ndarray], detect: Any = None, settings: Mapping[str, Any] | None = None
    ) -> list[GenRequest]:
        """One request per text element (checked against the encoder's range), generating as
        ``settings`` (:func:`infer_settings`) say, greedy by default; ``detect`` is
        :class:`~torchport.runtimes.server._speech_infer.SpeechInfer`'s, unused for text.

        Raises:
            InferenceInputError: no ``text``, bytes that are not UTF-8, empty text or too long.
        """
        if set(inputs) != {TEXT}:
            raise InferenceInputError(f"model {self.name!r} takes one BYTES input {TEXT!r} on infer")
        out = []
        params = sampling_of(settings or {}, self.max_new_tokens)
        for i, item in enumerate(np.asarray(inputs[TEXT]).reshape(-1)):
            try:
                text = item.decode("utf-8") if isinstance(item, bytes | bytearray) else str(item)
            except UnicodeDecodeError as e:
                raise InferenceInputError(
                    f"text[{i}] is not valid UTF-8 ({e.reason} at byte {e.start})"
                ) from None
            ids = self.codec.encode(text)
            if not ids:
                raise InferenceInputError(f"text[{i}] is empty")
            if len(ids) > self.spec.max_seq:
                raise InferenceInputError(
                    f"text[{i}] has {len(ids)} tokens; this model's encoder takes at most {self.spec.max_seq}"
                )
            out.append(GenRequest(ids, params))
        return out

    def encode(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check the request (see :meth:`requests`); the texts go on to the runner as they are."""
        self.requests(inputs)
        return {TEXT: np.asarray(inputs[TEXT])}

    def outputs(
        self,
        feeds: Mapping[str, np.ndarray],
        results: Mapping[str, np.ndarray],
        wanted: list[str] | None,
        *,
        is_text: bool,
    ) -> dict[str, np.ndarray]:
        return {OUTPUT: results[OUTPUT]}


class Text2TextRunner(ModelRunner):
    """A runner whose requests are generations on the model's generate engine (no batch of its own:
    the engine batches every request of the model, /infer and /generate alike). It serves
    :class:`Text2TextInfer` and the speech one (``_speech_infer.SpeechInfer``) alike."""

    def __init__(self, entry: Any, session: Any, executor: Any, **kwargs: Any) -> None:
        super().__init__(session, executor, **kwargs)
        self.entry = entry
        self.batching = False
        self.max_batch_size = 1

    def run_now(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        return None

    def submit(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any] | None = None
    ) -> asyncio.Future:
        """Turn the request into generations and submit them to the engine (beam searches: to the
        executor); the future's result is ``({"text_output": texts}, seconds)``. ``parameters``: the
        request's (see the module doc). A speech handler (``prepare_off_loop``) featurizes and
        detects the language in the executor, off the event loop."""

        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        start = time.perf_counter()
        text = self.entry.text  # a Text2TextInfer or a SpeechInfer

        def failed(e: BaseException) -> None:
            if not fut.done():
                fut.set_exception(
                    e
                    if isinstance(e, InferenceInputError)
                    else InferenceInputError(str(getattr(e, "message", e)))
                )

        try:
            service = _engine(self.entry)
        except Exception as e:  # noqa: BLE001 - answered as the request's error
            failed(e)
            return fut
        engine, codec = service.engine, service.codec

        def prepare() -> tuple[tuple[int, ...], list[GenRequest], Beams | None]:
            settings = infer_settings(parameters, tuple(getattr(text, "extra_parameters", ())))
            shape = text.output_shape(inputs)
            requests = text.requests(
                inputs, detect=getattr(engine.batch, "first_logits", None), settings=settings
            )
            try:
                beams = parse_beams(settings, engine, requests[0].params) if requests else None
            except HTTPError as e:
                raise InferenceInputError(e.message) from None
            for r in requests:
                engine.check(r)
            return shape, requests, beams

        def go(shape: tuple[int, ...], requests: list[GenRequest], beams: Beams | None) -> None:
            left = [len(requests)]

            def done(exc: BaseException | None) -> None:
                if fut.done():
                    return
                if exc is not None:
                    fut.set_exception(exc)
                    return
                left[0] -= 1
                if left[0] == 0:
                    texts = np.array([codec.decode(r.tokens) for r in requests], dtype=object).reshape(shape)
                    fut.set_result(({OUTPUT: texts}, time.perf_counter() - start))

            if beams is None:
                for r in requests:
                    engine.submit(Job(r, lambda token: None, done, loop))
                return
            batch = engine.batch
            assert isinstance(batch, Seq2SeqBatch)  # parse_beams refuses any other
            for r in requests:
                search = partial(
                    batch.beam_search, r, beams.num_beams, beams.length_penalty, beams.early_stopping
                )
                loop.run_in_executor(self.executor, search).add_done_callback(lambda f: done(f.exception()))

        if not getattr(text, "prepare_off_loop", False):
            try:
                prepared = prepare()
            except Exception as e:  # noqa: BLE001 - answered as the request's error
                failed(e)
                return fut
            go(*prepared)
            return fut

        def after(cf: asyncio.Future) -> None:
            if fut.done() or cf.cancelled():
                return
            exc = cf.exception()
            if exc is not None:
                failed(exc)
                return
            go(*cf.result())

        loop.run_in_executor(self.executor, prepare).add_done_callback(after)
        return fut
