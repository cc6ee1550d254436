"""The Open Inference Protocol over gRPC (KServe v2 / Triton's ``GRPCInferenceService``).

Runs on the same event loop as the HTTP server and shares its models, dynamic batching, API key,
metrics, statistics and request size limit. Implemented rpcs: ServerLive, ServerReady, ModelReady,
ServerMetadata, ModelMetadata, ModelInfer (``raw_input_contents``/``raw_output_contents``, and
typed ``contents`` for inputs); the others answer UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from torchport.runtimes._errors import InferenceInputError, ServingError
from torchport.runtimes.server._protocol import (
    HTTPError,
    _binary_data,
    _decode_binary_tensor,
    _decode_json_tensor,
)
from torchport.runtimes.server._text_infer import TEXT

try:
    import grpc
    from grpc import aio
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ServingError(
        "--grpc-port needs grpcio: pip install 'torchport[serve]' (or pip install grpcio)"
    ) from e

from torchport.runtimes.server._grpc_messages import MESSAGES, METHODS, SERVICE

if TYPE_CHECKING:
    from torchport.runtimes.server._routes import InferenceApp

log = logging.getLogger("torchport.server")

_M = MESSAGES
_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    503: grpc.StatusCode.UNAVAILABLE,
}
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


class GrpcServer:
    """``inference.GRPCInferenceService`` for one :class:`InferenceApp`."""

    def __init__(self, app: InferenceApp) -> None:
        self.app = app
        self.inflight = 0
        self._server: aio.Server | None = None
        self._idle: asyncio.Event | None = None

    async def start(self, host: str, port: int, max_message_bytes: int) -> int:
        """Listen on ``host:port`` (0: a free port); returns the port."""
        limit = max_message_bytes + 64 * 1024  # the body limit, plus room for the message's framing
        self._server = aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),
            ]
        )
        handlers = {}
        for rpc, (req, resp) in METHODS.items():
            handlers[rpc] = grpc.unary_unary_rpc_method_handler(
                getattr(self, rpc),
                request_deserializer=_M[req].FromString,
                response_serializer=_M[resp].SerializeToString,
            )
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        try:
            bound = self._server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:  # grpcio raises on a port in use
            bound = 0
        if not bound:
            raise ServingError(
                f"cannot listen for gRPC on {host}:{port} (in use?); choose another --grpc-port"
            )
        await self._server.start()
        return bound

    async def drain(self, timeout: float) -> bool:
        if self.inflight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def close(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=1.0)

    # -- helpers ----------------------------------------------------------------------------------

    async def _check_auth(self, context: aio.ServicerContext) -> None:
        auth = self.app.auth
        if auth is None:
            return
        md = dict(context.invocation_metadata() or ())
        if not auth.allowed(md.get("authorization")):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or wrong API key: send the metadata 'authorization: Bearer <key>'",
            )

    async def _entry(self, context, name: str, version: str, *, need_ready: bool = True):
        try:
            return self.app.model_entry(name, version or None, need_ready=need_ready)
        except HTTPError as e:
            await context.abort(_STATUS.get(e.status, grpc.StatusCode.INTERNAL), e.message)

    # -- rpcs -------------------------------------------------------------------------------------

    async def ServerLive(self, request, context):
        return _M["ServerLiveResponse"](live=True)

    async def ServerReady(self, request, context):
        return _M["ServerReadyResponse"](ready=self.app.ready)

    async def ModelReady(self, request, context):
        await self._check_auth(context)
        entry = await self._entry(context, request.name, request.version, need_ready=False)
        return _M["ModelReadyResponse"](ready=entry.ready and not self.app.draining)

    async def ServerMetadata(self, request, context):
        await self._check_auth(context)
        from torchport import __version__
        from torchport.runtimes.server._extensions import EXTENSIONS

        return _M["ServerMetadataResponse"](name="torchport", version=__version__, extensions=EXTENSIONS)

    async def ModelMetadata(self, request, context):
        await self._check_auth(context)
        entry = await self._entry(context, request.name, request.version)
        md = entry.metadata(self.app.repository.versions(entry.name))
        tm = _M["TensorMetadata"]
        return _M["ModelMetadataResponse"](
            name=md["name"],
            versions=md["versions"],
            platform=md["platform"],
            inputs=[tm(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in md["inputs"]],
            outputs=[tm(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in md["outputs"]],
        )

    async def ModelInfer(self, request, context):
        started = time.perf_counter()
        name = request.model_name
        metrics = self.app.metrics
        label = name if name in self.app.repository.known else ""
        code = "OK"
        self.inflight += 1
        try:
            await self._check_auth(context)
            entry = await self._entry(context, name, request.model_version)
            if self.app.draining:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another replica"
                )
            try:
                inputs = _decode_inputs(request, entry.input_datatypes)
                outputs_wanted = [o.name for o in request.outputs]
                for o in outputs_wanted:
                    if o not in entry.output_datatypes:
                        raise HTTPError(
                            400,
                            f"unknown output {o!r}; model {name!r} has: {', '.join(entry.output_datatypes)}",
                        )
                text = entry.text
                is_text = text is not None and TEXT in inputs
                if is_text:
                    inputs = text.encode(inputs)  # checked where it is built
                else:
                    entry.session.validate_inputs(inputs)
            except (HTTPError, InferenceInputError) as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, getattr(e, "message", str(e)))
            runner = entry.runner
            rows = next(iter(inputs.values())).shape[0] if runner.batching and inputs else 1
            try:
                results, queued = await runner.submit(inputs)
            except InferenceInputError as e:
                entry.stats.request_failed(time.perf_counter() - started)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            except Exception as e:
                entry.stats.request_failed(time.perf_counter() - started)
                log.error(
                    "model %r failed on gRPC request %s: %s: %s", name, request.id or "-", type(e).__name__, e
                )
                await context.abort(
                    grpc.StatusCode.INTERNAL,
                    f"model {name!r} failed while running this request (see the server log)",
                )
            if text is not None:
                results = text.outputs(inputs, results, outputs_wanted or None, is_text=is_text)
            names = outputs_wanted or list(results)
            out_tensor = _M["InferOutputTensor"]
            response = _M["ModelInferResponse"](
                model_name=name,
                model_version=entry.version,
                id=request.id,
                outputs=[
                    out_tensor(name=n, datatype=entry.output_datatypes[n], shape=results[n].shape)
                    for n in names
                ],
                raw_output_contents=[_binary_data(results[n], entry.output_datatypes[n]) for n in names],
            )
            duration = time.perf_counter() - started
            metrics.queue_time.observe(queued, name)
            metrics.latency.observe(duration, name)
            entry.stats.request_done(duration, queued, rows)
            return response
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except BaseException:
            code = context.code().name if context.code() is not None else "INTERNAL"
            raise
        finally:
            self.inflight -= 1
            metrics.requests.inc(label, "grpc_infer", code)
            if code != "OK":
                metrics.errors.inc(label, code)
            if self._idle is not None and self.inflight == 0:
                self._idle.set()


def _decode_inputs(request: Any, expected: dict[str, str]) -> dict[str, np.ndarray]:
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
        if t.datatype != want:
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
