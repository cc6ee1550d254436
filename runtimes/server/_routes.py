"""Routes and handlers of the Open Inference Protocol v2 (plus /metrics and the repository index).

Deliberate HTTP errors (:class:`HTTPError`, :class:`InferenceInputError`) go out with their status
and message; anything else is logged with its traceback and answered with a generic 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from torchport.runtimes._errors import InferenceInputError, first_line
from torchport.runtimes.server._accesslog import log_access
from torchport.runtimes.server._auth import OPEN_PATHS, ApiKeyAuth
from torchport.runtimes.server._extensions import (
    EXTENSIONS,
    config_response,
    repository_action,
    stats_response,
)
from torchport.runtimes.server._http import Deferred, Request, Response, Stream
from torchport.runtimes.server._metrics import ServerMetrics
from torchport.runtimes.server._protocol import (
    HEADER_LENGTH,
    HTTPError,
    InferRequest,
    decode_infer_request,
    encode_infer_response,
    json_dumps,
)
from torchport.runtimes.server._repository import LOADING, ModelEntry, ModelRepository
from torchport.runtimes.server._signature import InputSignature

if TYPE_CHECKING:
    from torchport.runtimes.server._control import ModelControl

log = logging.getLogger("torchport.server")

_JSON = "application/json"
_MODELS = "/v2/models/"
_REPOSITORY_MODELS = "/v2/repository/models/"
#: bodies larger than this are decoded on a worker thread, one at a time, not on the event loop
_DECODE_INLINE_BYTES = 64 * 1024
#: status codes as metric label values
_STATUS_TEXT = {code: str(code) for code in range(100, 600)}
_UNAUTHORIZED = "missing or wrong API key: send the header 'Authorization: Bearer <key>'"


def _json(status: int, obj: Any) -> Response:
    return Response(status, json_dumps(obj))


@lru_cache(maxsize=256)
def _parse_model_path(rest: str) -> tuple[str, str | None, tuple[str, ...]]:
    """``name[/versions/v][/tail...]`` -> (name, version or None, tail parts); cached, as a server
    sees the same few paths over and over."""
    parts = rest.split("/")
    name = unquote(parts[0]) if "%" in parts[0] else parts[0]
    version = None
    tail = tuple(parts[1:])
    if len(tail) >= 2 and tail[0] == "versions":
        version = unquote(tail[1])
        tail = tail[2:]
    return name, version, tail


class InferenceApp:
    """Answers requests for one :class:`ModelRepository`."""

    def __init__(
        self,
        repository: ModelRepository,
        *,
        metrics: ServerMetrics | None = None,
        auth: ApiKeyAuth | None = None,
        max_request_bytes: int | None = None,
        server_name: str = "torchport",
        server_version: str = "0",
    ) -> None:
        self.repository = repository
        self.metrics = metrics or ServerMetrics()
        self.auth = auth
        self.max_request_bytes = max_request_bytes
        self.loaded = False  # every model's load was attempted
        self.draining = False
        #: readiness needs every (model, version) of ``expected`` ready, not just one
        self.strict_readiness = False
        self.expected: set[tuple[str, str]] = set()
        #: /metrics answers without the API key
        self.metrics_public = False
        #: loads and unloads models (None: --model-control none)
        self.control: ModelControl | None = None
        self.model_control = "none"
        self._decoder: ThreadPoolExecutor | None = None
        self._metadata = json_dumps(
            {"name": server_name, "version": server_version, "extensions": EXTENSIONS}
        )

    # -- plumbing ---------------------------------------------------------------------------------

    def check_head(self, req: Request) -> Response | None:
        """Answer a request from its head alone, before its body is read: a missing API key (401),
        or an infer body larger than any valid request for the model (413)."""
        if req.path in OPEN_PATHS or (req.path == "/metrics" and self.metrics_public):
            return None
        if self.auth is not None and not self.auth.allowed(req.headers.get("authorization")):
            req.endpoint = "unauthorized"
            resp = self.error_response(401, _UNAUTHORIZED)
            resp.headers.append(("www-authenticate", 'Bearer realm="torchport"'))
            return resp
        length = req.headers.get("content-length", "")
        if not (req.path.startswith(_MODELS) and req.path.endswith("/infer")):
            return None
        name, version, tail = _parse_model_path(req.path[len(_MODELS) :])
        entry = self.repository.get(name, version)
        if tail != ("infer",) or entry is None or not entry.ready or entry.signature is None:
            return None  # the route answers it with its own status
        req.route = (name, version)  # handle() goes straight to the infer route
        cap = entry.signature.max_body_bytes
        req.max_body = cap  # also bounds a chunked body as it arrives
        if cap is not None and length.isdigit() and int(length) > cap:
            req.model, req.endpoint = name, "infer"
            return self.error_response(
                413,
                f"request body of {length} bytes is larger than any valid request for model {name!r} "
                f"(at most {cap} bytes at its largest input shapes)",
            )
        return None

    def error_response(self, status: int, message: str) -> Response:
        return Response(status, json_dumps({"error": message}))

    def on_response(self, req: Request, resp: Response, nbytes: int) -> None:
        duration = time.perf_counter() - req.started
        # label values are bounded: unknown model names and paths are not echoed into metrics
        model = req.model if req.model in self.repository.known else ""
        endpoint = req.endpoint or "unknown"
        code = resp.status
        status = _STATUS_TEXT.get(code) or str(code)
        m = self.metrics
        m.requests.inc(model, endpoint, status)
        if code >= 400:
            m.errors.inc(model, status)
        elif model and endpoint == "infer":
            m.latency.observe(duration, model)
        log_access(
            client=req.client,
            method=req.method,
            path=req.path,
            status=code,
            duration=duration,
            bytes_in=len(req.body),
            bytes_out=nbytes,
            model=req.model,
            request_id=req.request_id or req.headers.get("x-request-id"),
        )

    @property
    def ready(self) -> bool:
        if not self.loaded or self.draining:
            return False
        if self.strict_readiness:
            served = {(e.name, e.version) for e in self.repository.entries if e.ready}
            return bool(served) and self.expected <= served
        return any(e.ready for e in self.repository.entries)

    # -- routing ----------------------------------------------------------------------------------

    def handle(self, req: Request) -> Response | Deferred | Stream:
        try:
            if req.route is not None:  # an infer request of a served model, authorized by check_head
                name, version = req.route
                req.model, req.endpoint = name, "infer"
                self._method(req, "POST")
                return self._infer(req, name, version)
            return self._route(req)
        except HTTPError as e:
            resp = self.error_response(e.status, e.message)
            resp.headers.extend(e.headers)
            return resp

    def _route(self, req: Request) -> Response | Deferred | Stream:
        path = req.path
        if path in OPEN_PATHS:
            req.endpoint = path.rsplit("/", 1)[-1]
            self._method(req, "GET", "HEAD")
            if path.endswith("/live"):
                return _json(200, {"live": True})
            ready = self.ready
            return _json(200 if ready else 503, {"ready": ready})
        if path == "/metrics" and self.metrics_public:
            return self._metrics(req)
        if self.auth is not None and not self.auth.allowed(req.headers.get("authorization")):
            raise HTTPError(401, _UNAUTHORIZED, [("www-authenticate", 'Bearer realm="torchport"')])
        if path == "/v2/models/stats":
            req.endpoint = "stats"
            self._method(req, "GET")
            return stats_response(self, None, None)
        if path.startswith(_MODELS):
            return self._model_route(req, path[len(_MODELS) :])
        if path in ("/v2", "/v2/"):
            req.endpoint = "server_metadata"
            self._method(req, "GET", "HEAD")
            return Response(200, self._metadata)
        if path == "/metrics":
            return self._metrics(req)
        if path == "/v2/repository/index":
            req.endpoint = "repository_index"
            self._method(req, "POST", "GET")
            return _json(200, self.repository.index())
        if path.startswith(_REPOSITORY_MODELS):
            name, _, action = path[len(_REPOSITORY_MODELS) :].partition("/")
            if action in ("load", "unload") and name:
                req.endpoint = f"repository_{action}"
                req.model = unquote(name)
                self._method(req, "POST")
                return repository_action(self, req.model, action)
        raise HTTPError(404, f"no such endpoint: {req.method} {path}")

    def _metrics(self, req: Request) -> Response:
        req.endpoint = "metrics"
        self._method(req, "GET", "HEAD")
        return Response(200, self.metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")

    @staticmethod
    def _method(req: Request, *allowed: str) -> None:
        if req.method not in allowed:
            raise HTTPError(
                405,
                f"{req.path} accepts {' or '.join(allowed)}, not {req.method}",
                [("allow", ", ".join(allowed))],
            )

    def _model_route(self, req: Request, rest: str) -> Response | Deferred | Stream:
        name, version, tail = _parse_model_path(rest)
        req.model = name
        req.endpoint = tail[0] if tail and tail[0] in ("ready", "infer", "config", "stats") else "metadata"
        if not tail or tail == ("",):
            self._method(req, "GET", "HEAD")
            entry = self._entry(name, version, need_ready=True)
            return _json(200, entry.metadata(self.repository.versions(name)))
        if tail == ("ready",):
            self._method(req, "GET", "HEAD")
            entry = self._entry(name, version, need_ready=False)
            ready = entry.ready and not self.draining
            return _json(200 if ready else 503, {"name": name, "version": entry.version, "ready": ready})
        if tail == ("infer",):
            self._method(req, "POST")
            return self._infer(req, name, version)
        if tail == ("config",):
            self._method(req, "GET")
            return config_response(self, name, version)
        if tail == ("stats",):
            self._method(req, "GET")
            return stats_response(self, name, version)
        if tail in (("generate",), ("generate_stream",)):
            from torchport.runtimes.server._generate_routes import generate_route

            self._method(req, "POST")
            req.endpoint = tail[0]
            return generate_route(self, req, name, version, stream=tail[0] == "generate_stream")
        raise HTTPError(404, f"no such endpoint: {req.method} {req.path}")

    def model_entry(self, name: str, version: str | None, *, need_ready: bool) -> ModelEntry:
        """The served entry, or the HTTPError (404 unknown, 503 not ready) to answer with."""
        return self._entry(name, version, need_ready=need_ready)

    def _entry(self, name: str, version: str | None, *, need_ready: bool) -> ModelEntry:
        entry = self.repository.get(name, version)
        if entry is None:
            if self.repository.versions(name):
                raise HTTPError(
                    404,
                    f"model {name!r} has no version {version!r}; versions: {', '.join(self.repository.versions(name))}",
                )
            if name in self.repository.known:
                raise HTTPError(
                    503, f"model {name!r} is not loaded (load it with POST /v2/repository/models/{name}/load)"
                )
            known = ", ".join(self.repository.names()) or "none"
            raise HTTPError(404, f"unknown model {name!r}; this server serves: {known}")
        if need_ready and not entry.ready:
            if entry.state == LOADING:
                raise HTTPError(503, f"model {name!r} is loading; retry when /v2/models/{name}/ready says so")
            raise HTTPError(503, entry.reason or f"model {name!r} is not available")
        return entry

    # -- infer ------------------------------------------------------------------------------------

    def _infer(self, req: Request, name: str, version: str | None) -> Response | Deferred:
        entry = self._entry(name, version, need_ready=True)
        if self.draining:
            raise HTTPError(503, "the server is shutting down; retry on another replica")
        runner = entry.runner
        signature = entry.signature
        assert entry.session is not None and runner is not None and signature is not None
        hl = req.headers.get(HEADER_LENGTH)
        header_length = None
        if hl is not None:
            try:
                header_length = int(hl)
            except ValueError:
                raise HTTPError(
                    400, f"Inference-Header-Content-Length must be an integer, got {hl[:64]!r}"
                ) from None
        if len(req.body) > _DECODE_INLINE_BYTES:
            decoded: list[InferRequest] = []
            decode = partial(self._decode, req, entry, signature, header_length)
            future = self._decode_then_run(req, decode, decoded, runner.submit)
            return Deferred(
                future, lambda fut: self._finish(req, entry, decoded[0] if decoded else None, fut)
            )
        ireq = self._decode(req, entry, signature, header_length)
        req.request_id = ireq.id
        try:
            # an idle runner and a tiny model: run now, no future and no thread (concurrency 1)
            outputs = runner.run_now(ireq.inputs)
        except Exception as e:
            return self._failed(req, entry, e)
        if outputs is not None:
            return self._respond(req, entry, ireq, outputs, 0.0)
        future = runner.submit(ireq.inputs, ireq.parameters)
        if future.done():
            return self._finish(req, entry, ireq, future)
        return Deferred(future, partial(self._finish, req, entry, ireq))

    def _decode(
        self, req: Request, entry: ModelEntry, signature: InputSignature, header_length: int | None
    ) -> InferRequest:
        """Decode and check an infer body (HTTPError 400/413/415 when it is refused); a ``text``
        input of a text model becomes its token inputs here."""
        body = self._body(req, signature.max_body_bytes)
        ireq = decode_infer_request(body, header_length, entry.input_datatypes, signature=signature)
        assert req.model is not None  # an infer route names its model
        # decoding checked names, datatypes and shapes; what may be left (a missing input, value
        # ranges, text) is the session's full check
        ireq.inputs, ireq.text = entry.request_inputs(
            req.model,
            ireq.inputs,
            [o.name for o in ireq.outputs or ()],
            checked=signature.complete(ireq.inputs),
        )
        return ireq

    def _finish(
        self, req: Request, entry: ModelEntry, ireq: InferRequest | None, fut: asyncio.Future
    ) -> Response:
        """The response of a request that waited for a batch (or for the decoder thread)."""
        exc = fut.exception()
        if exc is not None or ireq is None:
            return self._failed(req, entry, exc)
        outputs, queued = fut.result()
        return self._respond(req, entry, ireq, outputs, queued)

    def _failed(self, req: Request, entry: ModelEntry, exc: BaseException | None) -> Response:
        if isinstance(exc, HTTPError):  # the body, decoded off the loop, was refused
            resp = self.error_response(exc.status, exc.message)
            resp.headers.extend(exc.headers)
            return resp
        entry.stats.request_failed(time.perf_counter() - req.started)
        if isinstance(exc, InferenceInputError):
            return self.error_response(400, str(exc))
        name = req.model
        log.error(
            "model %r failed on request %s: %s: %s",
            name,
            req.request_id or "-",
            type(exc).__name__,
            first_line(exc or ""),
            exc_info=exc,
        )
        return self.error_response(
            500, f"model {name!r} failed while running this request (see the server log)"
        )

    def _respond(
        self, req: Request, entry: ModelEntry, ireq: InferRequest, outputs: dict, queued: float
    ) -> Response:
        name, runner = req.model, entry.runner
        assert name is not None and runner is not None  # a served model answered this request
        self.metrics.queue_time.observe(queued, name)
        inputs = ireq.inputs
        rows = next(iter(inputs.values())).shape[0] if runner.batching and inputs else 1
        entry.stats.request_done(time.perf_counter() - req.started, queued, rows)
        requested = ireq.outputs
        wanted = [o.name for o in requested] if requested is not None else None
        results = entry.answer_outputs(inputs, outputs, wanted, is_text=ireq.text)
        body, hlen = encode_infer_response(
            name, entry.version, ireq.id, results, entry.output_datatypes, requested, ireq.binary_output
        )
        if hlen is None:
            return Response(200, body)
        return Response(200, body, "application/octet-stream", [(HEADER_LENGTH, str(hlen))])

    def _decode_then_run(
        self,
        req: Request,
        decode: Callable[[], InferRequest],
        decoded: list[InferRequest],
        submit: Callable[[dict, dict | None], asyncio.Future],
    ) -> asyncio.Future:
        """Decode a large body on the decoder thread (one at a time: bounds the memory of decoding),
        then submit it to the model; the returned future has the model's result or the error."""
        loop = asyncio.get_running_loop()
        if self._decoder is None:
            self._decoder = ThreadPoolExecutor(1, thread_name_prefix="torchport-decode")
        outer = loop.create_future()

        def ran(fut: asyncio.Future) -> None:
            if not outer.done():
                exc = fut.exception()
                outer.set_exception(exc) if exc is not None else outer.set_result(fut.result())

        def after_decode(fut: asyncio.Future) -> None:
            if outer.done():
                return
            exc = fut.exception()
            if exc is not None:
                outer.set_exception(exc)
                return
            ireq = fut.result()
            req.request_id = ireq.id
            decoded.append(ireq)
            submit(ireq.inputs, ireq.parameters).add_done_callback(ran)

        loop.run_in_executor(self._decoder, decode).add_done_callback(after_decode)
        return outer

    def _body(self, req: Request, model_cap: int | None = None) -> bytes:
        encoding = req.headers.get("content-encoding", "").lower()
        if not encoding or encoding == "identity":
            return req.body
        if encoding not in ("gzip", "deflate"):
            raise HTTPError(415, f"unsupported Content-Encoding {encoding[:64]!r}; use gzip, deflate or none")
        limit = min(x for x in (self.max_request_bytes, model_cap, 1 << 62) if x)
        try:
            d = zlib.decompressobj(zlib.MAX_WBITS | 32 if encoding == "gzip" else zlib.MAX_WBITS)
            out = d.decompress(req.body, limit + 1 if limit else 0)
        except zlib.error as e:
            raise HTTPError(400, f"cannot decompress the {encoding} body: {e}") from None
        if limit and len(out) > limit:
            raise HTTPError(413, f"decompressed request body exceeds the limit of {limit} bytes")
        return out


def on_batch_metrics(
    metrics: ServerMetrics, model: str, entry: ModelEntry | None = None
) -> Callable[[int, int, float], None]:
    """A runner's ``on_batch`` callback: the batch metrics of ``model`` and, with ``entry``, its
    statistics (looked up at each call: a reload may hand the entry its predecessor's)."""

    def record(rows: int, requests: int, compute: float) -> None:
        metrics.batch_size.observe(rows, model)
        metrics.requests_per_batch.observe(requests, model)
        metrics.compute_time.observe(compute, model)
        if entry is not None:
            entry.stats.batch_done(rows, requests, compute)

    return record
