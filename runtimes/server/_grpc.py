"""The Open Inference Protocol over gRPC (KServe v2 / Triton's ``GRPCInferenceService``).

Served by the HTTP/2 server of :mod:`._h2` (the ``h2`` library inside an asyncio.Protocol) on the same event loop as the HTTP server: it shares
the models, dynamic batching (gRPC and HTTP requests merge into the same batches), API key,
metrics, statistics and request size limit. Unary rpcs: ServerLive, ServerReady, ModelReady,
ServerMetadata, ModelMetadata, ModelInfer (``raw_input_contents``/``raw_output_contents``, and
typed ``contents`` for inputs), ModelConfig, ModelStatistics, RepositoryIndex,
RepositoryModelLoad and RepositoryModelUnload (the handlers of the HTTP endpoints, answered as
protobuf). grpcio is not needed to serve (clients use it); protobuf and h2 are.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from torchport.runtimes._errors import InferenceInputError, ServingError, TorchportError, first_line
from torchport.runtimes._grpc_status import (
    INTERNAL,
    INVALID_ARGUMENT,
    NOT_FOUND,
    OK,
    RESOURCE_EXHAUSTED,
    STATUS_NAMES,
    UNAUTHENTICATED,
    UNAVAILABLE,
    UNIMPLEMENTED,
)
from torchport.runtimes.server._extensions import (
    EXTENSIONS,
    model_config,
    model_stats,
    start_repository_action,
)
from torchport.runtimes.server._grpc_messages import MESSAGES, METHODS, SERVICE
from torchport.runtimes.server._h2 import Call, GrpcError, H2Server, Pending
from torchport.runtimes.server._http import HttpLimits
from torchport.runtimes.server._protocol import (
    HTTPError,
    _binary_data,
    _decode_binary_tensor,
    _decode_json_tensor,
)
from torchport.runtimes.server._repository import READY

if TYPE_CHECKING:
    from torchport.runtimes.server._repository import ModelEntry
    from torchport.runtimes.server._routes import InferenceApp

try:
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ServingError(
        "--grpc-port needs protobuf: pip install 'torchport[serve]' (or pip install protobuf)"
    ) from e

log = logging.getLogger("torchport.server")

_M = MESSAGES
_STATUS = {
    400: INVALID_ARGUMENT,
    401: UNAUTHENTICATED,
    404: NOT_FOUND,
    413: RESOURCE_EXHAUSTED,
    503: UNAVAILABLE,
}
_UNAUTHORIZED = "missing or wrong API key: send the metadata 'authorization: Bearer <key>'"
#: rpcs answered without the API key (orchestrator probes, as /v2/health on HTTP)
_OPEN = frozenset({"ServerLive", "ServerReady"})
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP16": "fp32_contents",
    "FP32": "fp32_contents",
    "BF16": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _snake(rpc: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", rpc).lower()


class GrpcService:
    """``inference.GRPCInferenceService`` for one :class:`InferenceApp` (the :class:`._h2.Service`)."""

    def __init__(self, app: InferenceApp) -> None:
        self.app = app
        #: path -> (rpc name, request class, handler, metrics endpoint)
        self._rpcs: dict[str, tuple[str, Any, Callable[[Call, Any], bytes | Pending], str]] = {
            f"/{SERVICE}/{rpc}": (rpc, _M[req], getattr(self, rpc), f"grpc_{_snake(rpc)}")
            for rpc, (req, _) in METHODS.items()
        }
        self._rpcs[f"/{SERVICE}/ModelInfer"] = (*self._rpcs[f"/{SERVICE}/ModelInfer"][:3], "grpc_infer")

    # -- the Service protocol ---------------------------------------------------------------------

    def check(self, call: Call) -> GrpcError | None:
        rpc = self._rpcs.get(call.path)
        if rpc is None:
            call.endpoint = "grpc_unknown"
            return GrpcError(UNIMPLEMENTED, f"Method not found: {call.path[:200]}")
        call.endpoint = rpc[3]
        auth = self.app.auth
        if auth is not None and rpc[0] not in _OPEN and not auth.allowed(call.metadata.get("authorization")):
            return GrpcError(UNAUTHENTICATED, _UNAUTHORIZED)
        return None

    def handle(self, call: Call) -> bytes | Pending:
        _, request_type, handler, _ = self._rpcs[call.path]
        try:
            request = request_type.FromString(call.message)
        except DecodeError:
            raise GrpcError(INVALID_ARGUMENT, f"cannot parse the {request_type.__name__} message") from None
        try:
            return handler(call, request)
        except HTTPError as e:  # the HTTP endpoints' handlers and checks, shared by the rpcs
            raise GrpcError(_STATUS.get(e.status, INTERNAL), e.message) from None

    def finished(self, call: Call, code: int) -> None:
        metrics = self.app.metrics
        label = call.model if call.model in self.app.repository.known else ""
        name = STATUS_NAMES.get(code, "UNKNOWN")
        metrics.requests.inc(label, call.endpoint or "grpc_unknown", name)
        if code != OK:
            metrics.errors.inc(label, name)

    # -- helpers ----------------------------------------------------------------------------------

    def _entry(self, name: str, version: str, *, need_ready: bool = True) -> ModelEntry:
        return self.app.model_entry(name, version or None, need_ready=need_ready)

    @staticmethod
    def _from_json(message: str, obj: dict) -> bytes:
        return json_format.ParseDict(obj, _M[message](), ignore_unknown_fields=True).SerializeToString()

    # -- rpcs -------------------------------------------------------------------------------------

    def ServerLive(self, call: Call, request: Any) -> bytes:
        return _M["ServerLiveResponse"](live=True).SerializeToString()

    def ServerReady(self, call: Call, request: Any) -> bytes:
        return _M["ServerReadyResponse"](ready=self.app.ready).SerializeToString()

    def ModelReady(self, call: Call, request: Any) -> bytes:
        call.model = request.name
        try:
            entry = self._entry(request.name, request.version, need_ready=False)
        except HTTPError as e:
            if e.status != 503:
                raise
            ready = False  # known but not loaded: not ready, as in Triton
        else:
            ready = entry.ready and not self.app.draining
        return _M["ModelReadyResponse"](ready=ready).SerializeToString()

    def ServerMetadata(self, call: Call, request: Any) -> bytes:
        from torchport import __version__

        return _M["ServerMetadataResponse"](
            name="torchport", version=__version__, extensions=EXTENSIONS
        ).SerializeToString()

    def ModelMetadata(self, call: Call, request: Any) -> bytes:
        call.model = request.name
        entry = self._entry(request.name, request.version)
        md = entry.metadata(self.app.repository.versions(entry.name))
        tm = _M["TensorMetadata"]
        return _M["ModelMetadataResponse"](
            name=md["name"],
            versions=md["versions"],
            platform=md["platform"],
            inputs=[tm(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in md["inputs"]],
            outputs=[tm(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in md["outputs"]],
        ).SerializeToString()

    def ModelConfig(self, call: Call, request: Any) -> bytes:
        call.model = request.name
        entry = self._entry(request.name, request.version)
        return self._from_json("ModelConfigResponse", {"config": model_config(entry)})

    def ModelStatistics(self, call: Call, request: Any) -> bytes:
        call.model = request.name
        stats = model_stats(self.app, request.name or None, request.version or None)
        return self._from_json("ModelStatisticsResponse", stats)

    def RepositoryIndex(self, call: Call, request: Any) -> bytes:
        models = self.app.repository.index()
        if request.ready:
            models = [m for m in models if m.get("state") == READY]
        return self._from_json("RepositoryIndexResponse", {"models": models})

    def RepositoryModelLoad(self, call: Call, request: Any) -> Pending:
        return self._repository_action(call, request.model_name, "load", "RepositoryModelLoadResponse")

    def RepositoryModelUnload(self, call: Call, request: Any) -> Pending:
        return self._repository_action(call, request.model_name, "unload", "RepositoryModelUnloadResponse")

    def _repository_action(self, call: Call, name: str, action: str, response: str) -> Pending:
        call.model = name
        task = start_repository_action(self.app, name, action)

        def finish(fut: asyncio.Future) -> bytes:
            exc = fut.exception()
            if isinstance(exc, TorchportError):
                raise GrpcError(INVALID_ARGUMENT, str(exc))
            if exc is not None:
                raise exc
            return _M[response]().SerializeToString()

        return task, finish

    def ModelInfer(self, call: Call, request: Any) -> Pending:
        app = self.app
        name = request.model_name
        call.model = name
        entry = self._entry(name, request.model_version)
        if app.draining:
            raise GrpcError(UNAVAILABLE, "the server is shutting down; retry on another replica")
        datatypes = entry.output_datatypes
        wanted = [o.name for o in request.outputs]
        also = getattr(entry.text, "datatypes", None)  # a speech model's audio: BYTES or FP32
        inputs, is_text = entry.request_inputs(
            name, _decode_inputs(request, entry.input_datatypes, also), wanted
        )
        runner = entry.runner
        assert runner is not None  # a READY entry has its runner
        rows = next(iter(inputs.values())).shape[0] if runner.batching and inputs else 1
        request_id = request.id

        def finish(fut: asyncio.Future) -> bytes:
            exc = fut.exception()
            if exc is not None:
                entry.stats.request_failed(time.perf_counter() - call.started)
                if isinstance(exc, InferenceInputError):
                    raise GrpcError(INVALID_ARGUMENT, str(exc))
                log.error(
                    "model %r failed on gRPC request %s: %s: %s",
                    name,
                    request_id or "-",
                    type(exc).__name__,
                    first_line(exc),
                    exc_info=exc,
                )
                raise GrpcError(
                    INTERNAL, f"model {name!r} failed while running this request (see the server log)"
                )
            results, queued = fut.result()
            results = entry.answer_outputs(inputs, results, wanted or None, is_text=is_text)
            names = list(results)
            out_tensor = _M["InferOutputTensor"]
            response = _M["ModelInferResponse"](
                model_name=name,
                model_version=entry.version,
                id=request_id,
                outputs=[out_tensor(name=n, datatype=datatypes[n], shape=results[n].shape) for n in names],
                raw_output_contents=[_binary_data(results[n], datatypes[n]) for n in names],
            ).SerializeToString()
            duration = time.perf_counter() - call.started
            app.metrics.queue_time.observe(queued, name)
            app.metrics.latency.observe(duration, name)
            entry.stats.request_done(duration, queued, rows)
            return response

        return runner.submit(inputs, _parameters(request)), finish


def _parameters(request: Any) -> dict[str, Any] | None:
    """A ModelInferRequest's request-level ``parameters`` as Python values (``None``: none sent)."""
    out: dict[str, Any] = {}
    for key, param in request.parameters.items():
        which = param.WhichOneof("parameter_choice")
        out[key] = getattr(param, which) if which else None
    return out or None


def _decode_inputs(
    request: Any, expected: dict[str, str], also: Mapping[str, tuple[str, ...]] | None = None
) -> dict[str, np.ndarray]:
    """The request's input tensors; ``also``: other datatypes an input is taken in (besides ``expected``)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise HTTPError(
            400,
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; send one per input",
        )
    inputs: dict[str, np.ndarray] = {}
    for i, t in enumerate(request.inputs):
        want = expected.get(t.name)
        if want is None:
            raise HTTPError(400, f"unknown input {t.name!r}; the model takes: {', '.join(expected)}")
        if t.datatype != want and t.datatype not in (also or {}).get(t.name, ()):
            raise HTTPError(400, f"input {t.name!r} has datatype {want}, the request says {t.datatype}")
        shape = tuple(int(d) for d in t.shape)
        if any(d < 0 for d in shape):
            raise HTTPError(400, f"input {t.name!r}: shape {list(shape)} has a negative dim")
        if raw:
            inputs[t.name] = _decode_binary_tensor(t.name, t.datatype, shape, memoryview(raw[i]))
        else:
            values = list(getattr(t.contents, _CONTENTS[t.datatype]))
            inputs[t.name] = _decode_json_tensor(t.name, t.datatype, shape, values)
    return inputs


class GrpcServer:
    """The gRPC endpoint: a :class:`GrpcService` behind an :class:`H2Server`.

    Args:
        app: the application whose models, limits, auth and metrics the endpoint shares.
        limits: the HTTP server's limits (deadlines, idle timeout, connection cap).
        reserve, release: the HTTP server's budget of request bytes in flight.
    """

    def __init__(
        self,
        app: InferenceApp,
        limits: HttpLimits | None = None,
        reserve: Callable[[int], bool] | None = None,
        release: Callable[[int], None] | None = None,
    ) -> None:
        self.app = app
        self.service = GrpcService(app)
        self.limits = limits or HttpLimits()
        self._reserve, self._release = reserve, release
        self._h2: H2Server | None = None

    @property
    def inflight(self) -> int:
        return self._h2.inflight if self._h2 is not None else 0

    async def start(self, host: str, port: int, max_message_bytes: int | None) -> int:
        """Listen on ``host:port`` (0: a free port); returns the port.

        Raises:
            ServingError: the port cannot be bound.
        """
        self._h2 = H2Server(
            self.service,
            self.limits,
            # the body limit, plus room for the message's own framing
            max_message_bytes=None if max_message_bytes is None else max_message_bytes + 64 * 1024,
            reserve=self._reserve,
            release=self._release,
        )
        return await self._h2.start(host, port)

    async def drain(self, timeout: float) -> bool:
        return await self._h2.drain(timeout) if self._h2 is not None else True

    async def close(self) -> None:
        if self._h2 is not None:
            await self._h2.close()
