"""Triton's generate extension for text-generation packages:

- ``POST /v2/models/{m}[/versions/{v}]/generate``: JSON ``{"text_input": ..., "max_tokens": ...}`` (or
  ``"messages": [{"role", "content"}, ...]`` instead of ``text_input``: rendered with the package's chat
  template, as transformers' ``apply_chat_template(..., add_generation_prompt=True)`` does) →
  ``{"model_name", "model_version", "text_output", "finish_reason", "usage"}`` (the generated text only,
  special tokens skipped);
- ``POST .../generate_stream``: the same request, answered as server-sent events, one
  ``data: {"text_output": <new text>, ...}`` per piece of text, the last with its ``finish_reason``.

Sampling fields may be top-level or inside ``"parameters"`` (both as Triton's extension allows):
``max_tokens``, ``temperature`` (0: greedy; sampling when > 0 or with ``top_p``/``top_k``), ``top_p``,
``top_k``, ``seed``, ``stop`` (a string or a list: generation ends before it), ``repetition_penalty``,
``ignore_eos``, ``no_repeat_ngram_size``, ``min_length``, ``min_new_tokens``, ``bad_words_ids`` (a list of
token id lists; these four default to the package's generation config); encoder-decoders also take beam search (``num_beams``, ``length_penalty``,
``early_stopping``: run in the executor, the answer sent whole) and speech packages ``audio`` (base64 WAV or
FP32 samples, decoded and featurized in the executor) with ``language`` / ``task``. Unknown fields, prompts
beyond the exported range, bad values and bodies that are not UTF-8 JSON are 400s. Requests share one decode batch per model (continuous batching, see
:mod:`torchport.runtimes.server._generate_engine`); a client that disconnects frees its row.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torchport.runtimes._audio_request import AUDIO, SpeechCodec
from torchport.runtimes._errors import InferenceInputError, UsageError
from torchport.runtimes._generate import GenRequest, SamplingParams, Seq2SeqBatch, generation_spec
from torchport.runtimes._logits import check_bad_words
from torchport.runtimes._tokenizer import IncrementalDecoder, TextCodec
from torchport.runtimes.server._generate_engine import GenerationEngine, Job
from torchport.runtimes.server._http import Deferred, Response, Stream
from torchport.runtimes.server._protocol import HTTPError, json_dumps

__all__ = ["generate_route"]

_SAMPLING = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "repetition_penalty",
    "ignore_eos",
    "no_repeat_ngram_size",
    "min_length",
    "min_new_tokens",
    "bad_words_ids",
)
_SPEECH = ("language", "task")  # speech packages: Whisper's forced prompt
_BEAM = ("num_beams", "length_penalty", "early_stopping")  # encoder-decoders: beam search
#: the fields /infer takes as request parameters: KServe parameters are scalars, so not ``stop``
#: (strings or a list) nor ``bad_words_ids`` (a list of lists)
INFER_FIELDS = tuple(k for k in _SAMPLING + _BEAM if k not in ("stop", "bad_words_ids"))
_TOP_LEVEL = frozenset(
    {"text_input", "messages", "audio", "parameters", "id", "stream", *_SAMPLING, *_SPEECH, *_BEAM}
)
_MAX_STOPS = 16


class _Generation:
    """The generation service of one served model version (``ModelEntry.services["generate"]``)."""

    def __init__(self, engine: GenerationEngine, codec: TextCodec, speech: SpeechCodec | None = None) -> None:
        self.engine = engine
        self.codec = codec
        self.speech = speech  #: speech packages: audio in (``None`` for text models)

    def retire(self) -> None:
        self.engine.retire()


def _engine(entry: Any) -> _Generation:
    """The entry's engine and tokenizer, made on its first generate request."""
    got = entry.services.get("generate")
    if got is None:
        name, session = entry.name, entry.session
        try:
            generation_spec(session.manifest)
        except UsageError:
            raise HTTPError(
                400,
                f"model {name!r} does not generate text: /generate serves packages exported with "
                "--task text-generation or text2text-generation",
            ) from None
        codec = TextCodec.from_package(session.package) if session.package is not None else None
        if codec is None:
            raise HTTPError(400, f"model {name!r} has no tokenizer in its package; /generate takes text")
        speech = SpeechCodec.from_manifest(session.manifest)
        got = entry.services["generate"] = _Generation(GenerationEngine(session), codec, speech)
        if entry.retired:  # swapped out after this request found it: serve it, then stop
            got.retire()
    return got


def _number(params: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = params.get(key, default)
    ok = (
        isinstance(value, kind) and not isinstance(value, bool)
        if kind is not bool
        else isinstance(value, bool)
    )
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok:
        raise HTTPError(400, f"{key} must be {'a number' if kind is float else kind.__name__}, got {value!r}")
    return value


@dataclass(frozen=True)
class Beams:
    """Beam search settings of a request (Hugging Face ``generate``'s)."""

    num_beams: int
    length_penalty: float = 1.0
    early_stopping: bool | str = False


@dataclass
class GenerateRequest:
    """A parsed generate request."""

    request: GenRequest
    stops: list[str] = field(default_factory=list)
    id: str | None = None
    #: beam search instead of the engine's batch (``None``: greedy or sampling in the batch)
    beams: Beams | None = None
    #: the work left before the request can run (speech: WAV decode, log-mel, language detection, the
    #: range check), for the executor: it completes ``request`` or raises :class:`HTTPError`
    prepare: Callable[[], None] | None = None


def parse_beams(merged: dict[str, Any], engine: GenerationEngine, sampling: SamplingParams) -> Beams | None:
    """``num_beams`` / ``length_penalty`` / ``early_stopping`` (400 when bad or not served)."""
    n = _number(merged, "num_beams", int, 1)
    if n < 1:
        raise HTTPError(400, f"num_beams must be an integer >= 1, got {n}")
    length_penalty = float(_number(merged, "length_penalty", float, 1.0))
    early = merged.get("early_stopping", False)
    if not isinstance(early, bool) and early != "never":
        raise HTTPError(400, f'early_stopping must be true, false or "never", got {early!r}')
    if n == 1:
        return None
    batch = engine.batch
    if not isinstance(batch, Seq2SeqBatch):
        raise HTTPError(400, "num_beams > 1 (beam search) is served for encoder-decoder packages only")
    if n > batch.spec.max_batch:
        raise HTTPError(400, f"num_beams must be at most {batch.spec.max_batch} (the model's batch range)")
    if sampling.do_sample:
        raise HTTPError(
            400, "num_beams > 1 is beam search; do not combine it with temperature, top_p or top_k"
        )
    return Beams(n, length_penalty, early)


def parse_generate(
    body: bytes, engine: GenerationEngine, codec: TextCodec, speech: SpeechCodec | None = None
) -> GenerateRequest:
    """Parse and check a generate body (every problem is an :class:`HTTPError` 400)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HTTPError(400, f"the request body is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise HTTPError(400, f"the request body is not valid JSON: {e.msg} at line {e.lineno}") from None
    if not isinstance(data, dict):
        raise HTTPError(400, "the request body must be a JSON object with text_input or messages")
    unknown = sorted(set(data) - _TOP_LEVEL)
    if unknown:
        raise HTTPError(
            400, f"unknown field(s) {', '.join(unknown)}; accepted: {', '.join(sorted(_TOP_LEVEL))}"
        )
    params = data.get("parameters") or {}
    if not isinstance(params, dict):
        raise HTTPError(400, "parameters must be a JSON object")
    bad = sorted(set(params) - set(_SAMPLING) - set(_SPEECH) - set(_BEAM) - {"stream"})
    if bad:
        raise HTTPError(
            400, f"unknown parameter(s) {', '.join(bad)}; accepted: {', '.join(_SAMPLING + _BEAM)}"
        )
    merged = {**{k: v for k, v in data.items() if k in _SAMPLING or k in _SPEECH or k in _BEAM}, **params}
    if "messages" in data and "text_input" in data:
        raise HTTPError(400, "send either text_input or messages, not both")
    chat = "messages" in data
    if speech is not None or AUDIO in data:
        return _parse_speech(data, merged, engine, speech)
    if any(k in merged for k in _SPEECH):
        raise HTTPError(400, "language and task are for speech models; this model takes text_input")
    if chat:
        try:
            prompt = codec.apply_chat_template(data["messages"])
        except InferenceInputError as e:
            raise HTTPError(400, str(e)) from None
    else:
        text_input = data.get("text_input")
        if not isinstance(text_input, str) or not text_input:
            raise HTTPError(400, "text_input must be a non-empty string")
        prompt = text_input
    stops = merged.get("stop") or []
    if isinstance(stops, str):
        stops = [stops]
    if (
        not isinstance(stops, list)
        or len(stops) > _MAX_STOPS
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise HTTPError(400, f"stop must be a non-empty string or a list of at most {_MAX_STOPS} of them")
    sampling = _sampling(merged)
    beams = parse_beams(merged, engine, sampling)
    try:
        ids = codec.encode(prompt, add_special_tokens=not chat)  # a chat template writes its own
        request = GenRequest(ids, sampling)
        engine.check(request)
    except InferenceInputError as e:
        raise HTTPError(400, str(e)) from None
    rid = data.get("id")
    return GenerateRequest(request, stops, str(rid) if rid is not None else None, beams)


def _parse_speech(
    data: dict[str, Any], merged: dict[str, Any], engine: GenerationEngine, speech: SpeechCodec | None
) -> GenerateRequest:
    """A speech request: ``audio`` (base64 WAV or FP32 samples), optional ``language`` / ``task``. The
    fields are checked here; decoding the audio, the log-mel and language detection are left to the
    request's ``prepare`` (run in the executor, off the event loop)."""
    if speech is None:
        raise HTTPError(400, "this model does not take audio; send text_input")
    if "text_input" in data or "messages" in data:
        raise HTTPError(400, "a speech model takes audio, not text_input or messages")
    if AUDIO not in data:
        raise HTTPError(400, "audio is missing: send a base64-encoded WAV file or a list of FP32 samples")
    if merged.get("stop"):
        raise HTTPError(400, "stop strings are not supported for speech models")
    sampling = _sampling(merged)
    beams = parse_beams(merged, engine, sampling)
    request = GenRequest([], sampling)
    value = data[AUDIO]

    def prepare() -> None:
        try:
            items = SpeechCodec.from_json(value)
            if len(items) != 1:
                raise InferenceInputError(f"a generate request takes one audio, got {len(items)}")
            source = speech.sources(items)[0]
            detect = getattr(engine.batch, "first_logits", None)
            request.source = source
            request.forced = speech.forced(
                merged.get("language"),
                merged.get("task"),
                detect=(lambda: detect([source])) if detect is not None else None,
            )
            engine.check(request)
        except InferenceInputError as e:
            raise HTTPError(400, str(e)) from None

    rid = data.get("id")
    return GenerateRequest(request, [], str(rid) if rid is not None else None, beams, prepare)


def _sampling(merged: dict[str, Any]) -> SamplingParams:
    temperature = float(_number(merged, "temperature", float, 0.0))
    top_p = float(_number(merged, "top_p", float, 1.0))
    top_k = int(_number(merged, "top_k", int, 0))
    sample = temperature > 0 or top_p < 1.0 or top_k > 0
    seed = merged.get("seed")
    sampling = SamplingParams(
        max_new_tokens=_number(merged, "max_tokens", int, 32),
        do_sample=sample,
        temperature=temperature if temperature > 0 else 1.0,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        ignore_eos=_number(merged, "ignore_eos", bool, False),
        repetition_penalty=float(_number(merged, "repetition_penalty", float, 1.0)),
        no_repeat_ngram_size=_optional(merged, "no_repeat_ngram_size"),
        min_length=_optional(merged, "min_length"),
        min_new_tokens=_optional(merged, "min_new_tokens"),
        bad_words_ids=_bad_words(merged.get("bad_words_ids")),
    )
    return sampling


def _optional(merged: dict[str, Any], key: str) -> int | None:
    """An integer setting that defaults to the package's generation config when absent."""
    return None if merged.get(key) is None else int(_number(merged, key, int, 0))


def _bad_words(value: Any) -> tuple[tuple[int, ...], ...] | None:
    """``bad_words_ids``: a list of token id lists (400 naming the shape otherwise)."""
    if value is None:
        return None
    try:
        return check_bad_words(value)
    except InferenceInputError as e:
        raise HTTPError(400, str(e)) from None


class _TextOut:
    """Tokens → text pieces, ending before a stop string (text that may begin one is held back)."""

    def __init__(self, codec: TextCodec, stops: list[str]) -> None:
        self.dec = IncrementalDecoder(codec)
        self.stops = stops
        self.text = ""  # everything decoded
        self.sent = 0  # characters of self.text sent
        self.stopped = False

    def push(self, token: int | None) -> str:
        if token is not None:
            self.text += self.dec.push(token)
        else:
            self.text += self.dec.flush()
        for s in self.stops:
            at = self.text.find(s, max(0, self.sent - len(s)))
            if at >= 0:
                self.stopped = True
                self.text = self.text[:at]
                break
        end = len(self.text)
        if token is not None and not self.stopped:
            for s in self.stops:  # hold back a tail that could be the start of a stop string
                for k in range(min(len(s) - 1, end - self.sent), 0, -1):
                    if self.text.endswith(s[:k]):
                        end = min(end, len(self.text) - k)
                        break
        piece = self.text[self.sent : end]
        self.sent = max(self.sent, end)
        return piece


def generate_route(
    app: Any, req: Any, name: str, version: str | None, *, stream: bool
) -> Response | Deferred | Stream:
    """Answer ``POST /v2/models/{name}/generate`` or ``/generate_stream``."""
    entry = app.model_entry(name, version, need_ready=True)
    if app.draining:
        raise HTTPError(503, "the server is shutting down; retry on another replica")
    service = _engine(entry)
    engine, codec = service.engine, service.codec
    parsed = parse_generate(app._body(req), engine, codec, service.speech)
    req.request_id = parsed.id
    out = _TextOut(codec, parsed.stops)
    loop = asyncio.get_running_loop()
    head = {"model_name": name, "model_version": entry.version}
    if parsed.id is not None:
        head["id"] = parsed.id
    seq = parsed.request
    refused: list[HTTPError] = []  # the executor's preparation refused the request (a 400)

    def finish_reason() -> str:
        return "stop" if out.stopped else (seq.finish_reason or "length")

    def usage() -> dict[str, int]:
        return {"prompt_tokens": len(seq.prompt), "completion_tokens": len(seq.tokens)}

    def run(on_token: Callable[[int | None], None], on_done: Callable[[BaseException | None], None]) -> Job:
        """Start the generation: a job in the engine's batch, or a beam search in the executor (its
        tokens delivered at the end)."""
        job = Job(seq, on_token, on_done, loop)
        beams = parsed.beams
        if beams is None:
            engine.submit(job)
            return job

        def search() -> None:
            batch = engine.batch
            assert isinstance(batch, Seq2SeqBatch)  # parse_beams refuses any other
            batch.beam_search(seq, beams.num_beams, beams.length_penalty, beams.early_stopping)

        def searched(f: asyncio.Future) -> None:
            exc = f.exception()
            if exc is None:
                for token in seq.tokens:
                    if not job.cancelled:
                        on_token(token)
                if not job.cancelled:
                    on_token(None)
            on_done(exc)

        loop.run_in_executor(None, search).add_done_callback(searched)
        return job

    def after_prepare(then: Callable[[], None], fail: Callable[[BaseException], None]) -> None:
        """``then()`` once the request is prepared (at once when nothing is left to do)."""
        if parsed.prepare is None:
            then()
            return

        def prepared(f: asyncio.Future) -> None:
            exc = f.exception()
            if isinstance(exc, HTTPError):
                refused.append(exc)
                fail(exc)
            elif exc is not None:
                fail(exc)
            else:
                then()

        loop.run_in_executor(None, parsed.prepare).add_done_callback(prepared)

    def refusal() -> Response:
        return app.error_response(refused[0].status, refused[0].message)

    if not stream:
        future: asyncio.Future = loop.create_future()
        jobs: list[Job] = []

        def on_token(token: int | None) -> None:
            if out.stopped:
                return
            out.push(token)
            if out.stopped or token is None:
                jobs[0].cancel()
                if not future.done():
                    future.set_result(None)

        def on_done(exc: BaseException | None) -> None:
            if not future.done():
                future.set_exception(exc) if exc is not None else future.set_result(None)

        after_prepare(lambda: jobs.append(run(on_token, on_done)), on_done)

        def respond(fut: asyncio.Future) -> Response:
            if refused:
                return refusal()
            if fut.exception() is not None:
                return app.error_response(500, f"model {name!r} failed while generating (see the server log)")
            return Response(
                200,
                json_dumps(
                    {**head, "text_output": out.text, "finish_reason": finish_reason(), "usage": usage()}
                ),
            )

        return Deferred(future, respond)

    sse = Stream()
    jobs_s: list[Job] = []

    def event(obj: dict[str, Any]) -> bytes:
        return b"data: " + json_dumps(obj) + b"\n\n"

    def on_token_stream(token: int | None) -> None:
        if out.stopped:
            return
        piece = out.push(token)
        last = out.stopped or token is None
        if piece or last:
            body = {**head, "text_output": piece}
            if last:
                body.update(finish_reason=finish_reason(), usage=usage())
            sse.chunks.put_nowait(event(body))
        if last:
            jobs_s[0].cancel()
            sse.chunks.put_nowait(None)

    def on_done_stream(exc: BaseException | None) -> None:
        if exc is not None and not out.stopped:
            out.stopped = True
            sse.chunks.put_nowait(event({**head, "error": f"model {name!r} failed while generating"}))
            sse.chunks.put_nowait(None)

    def start_stream() -> None:
        job = run(on_token_stream, on_done_stream)
        jobs_s.append(job)
        sse.on_disconnect = job.cancel

    if parsed.prepare is None:
        start_stream()
        return sse
    # the stream's head waits for the preparation: a refused request is still a plain 400
    ready: asyncio.Future = loop.create_future()

    def started() -> None:
        start_stream()
        ready.set_result(None)

    after_prepare(started, lambda exc: ready.set_exception(exc))

    def head_or_refusal(fut: asyncio.Future) -> Response | Stream:
        if refused:
            return refusal()
        if fut.exception() is not None:
            return app.error_response(
                500, f"model {name!r} failed while preparing the request (see the server log)"
            )
        return sse

    return Deferred(ready, head_or_refusal)
