"""A lean HTTP/1.1 server on asyncio.Protocol + httptools: keep-alive, pipelining, size limits.

The application object answers each request with a :class:`Response`, or with a
:class:`Deferred` (an asyncio future plus a function that turns its result into a Response) so
that model runs do not need a coroutine per request. Responses on one connection go out in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol

from torchport.runtimes._errors import ServingError

try:
    import httptools
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ServingError(
        "the server needs httptools: pip install 'torchport[serve]' (or pip install httptools)"
    ) from e

log = logging.getLogger("torchport.server")

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_MAX_PIPELINE = 64


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool
    client: str
    started: float
    #: filled in by the application for the access log
    model: str | None = None
    endpoint: str | None = None
    request_id: str | None = None


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False


@dataclass
class Deferred:
    """A response that will be ready when ``future`` is done; ``finish(future)`` builds it."""

    future: asyncio.Future
    finish: Callable[[asyncio.Future], Response]


class Application(Protocol):
    def handle(self, request: Request) -> Response | Deferred: ...

    def error_response(self, status: int, message: str) -> Response: ...

    def on_response(self, request: Request, response: Response, nbytes: int) -> None: ...


def _head(status: int, resp: Response, length: int, keep_alive: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n",
        f"content-type: {resp.content_type}\r\ncontent-length: {length}\r\n",
    ]
    for k, v in resp.headers:
        lines.append(f"{k}: {v}\r\n")
    if not keep_alive:
        lines.append("connection: close\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    __slots__ = (
        "app",
        "server",
        "transport",
        "parser",
        "url",
        "headers",
        "body",
        "body_size",
        "too_large",
        "queue",
        "busy",
        "closing",
        "client",
        "started",
        "paused",
        "pending_error",
        "last_active",
    )

    def __init__(self, app: Application, server: HttpServer) -> None:
        self.app = app
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.body_size = 0
        self.too_large = False
        self.queue: deque[Request] = deque()
        self.busy = False
        self.closing = False
        self.paused = False
        self.client = ""
        self.started = 0.0
        self.pending_error: tuple[Request, Response] | None = None
        self.last_active = time.monotonic()

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_active = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as e:
            if not self.too_large:
                self._fail(400, f"malformed HTTP request: {e}")

    # -- httptools callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body = []
        self.body_size = 0
        self.started = time.perf_counter()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        limit = self.server.max_request_bytes
        length = self.headers.get("content-length")
        if limit and length is not None and length.isdigit() and int(length) > limit:
            self._fail(413, f"request body of {length} bytes exceeds the limit of {limit} bytes")
            return
        if self.headers.get("expect", "").lower() == "100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.too_large:
            return
        self.body_size += len(body)
        limit = self.server.max_request_bytes
        if limit and self.body_size > limit:
            self._fail(413, f"request body exceeds the limit of {limit} bytes")
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.too_large or self.closing:
            return
        parsed = httptools.parse_url(self.url)
        req = Request(
            method=self.parser.get_method().decode("latin-1"),
            path=parsed.path.decode("latin-1"),
            query=(parsed.query or b"").decode("latin-1"),
            headers=self.headers,
            body=self.body[0] if len(self.body) == 1 else b"".join(self.body),
            keep_alive=self.parser.should_keep_alive(),
            client=self.client,
            started=self.started,
        )
        self.queue.append(req)
        if len(self.queue) > _MAX_PIPELINE and not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        if not self.busy:
            self._next()

    # -- request processing -----------------------------------------------------------------------

    def _next(self) -> None:
        while self.queue and not self.busy and not self.closing:
            req = self.queue.popleft()
            try:
                result = self.app.handle(req)
            except Exception:
                log.exception("unhandled error in %s %s", req.method, req.path)
                result = self.app.error_response(500, "internal server error (see the server log)")
            if isinstance(result, Deferred):
                self.busy = True
                self.server.inflight += 1
                result.future.add_done_callback(lambda f, req=req, d=result: self._deferred_done(req, d))
                return
            self._send(req, result)
        if self.paused and len(self.queue) < _MAX_PIPELINE // 2 and self.transport is not None:
            self.transport.resume_reading()
            self.paused = False

    def _deferred_done(self, req: Request, deferred: Deferred) -> None:
        self.server.inflight -= 1
        self.busy = False
        try:
            resp = deferred.finish(deferred.future)
        except Exception:
            log.exception("unhandled error finishing %s %s", req.method, req.path)
            resp = self.app.error_response(500, "internal server error (see the server log)")
        self._send(req, resp)
        if self.pending_error is not None:
            self._send(*self.pending_error)
            self.pending_error = None
        self._next()
        self.server.maybe_drained()

    def _send(self, req: Request, resp: Response) -> None:
        keep_alive = req.keep_alive and not resp.close and not self.server.closing_connections
        if self.transport is not None and not self.closing:
            body = resp.body
            head = _head(resp.status, resp, len(body), keep_alive)
            self.transport.write(head if req.method == "HEAD" else head + body)
            if not keep_alive:
                self.closing = True
                self.transport.close()
        try:
            self.app.on_response(req, resp, len(resp.body))
        except Exception:  # pragma: no cover - logging must never break serving
            log.exception("access log failed")

    def _fail(self, status: int, message: str) -> None:
        """Answer an unparseable or oversized request and close the connection."""
        self.too_large = True
        resp = self.app.error_response(status, message)
        resp.close = True
        req = Request(
            method=(self.parser.get_method() or b"?").decode("latin-1") if status == 413 else "?",
            path=httptools.parse_url(self.url).path.decode("latin-1") if self.url else "?",
            query="",
            headers=self.headers,
            body=b"",
            keep_alive=False,
            client=self.client,
            started=self.started or time.perf_counter(),
        )
        self.queue.clear()
        if self.busy:  # the in-flight response goes first, then this one, then close
            self.pending_error = (req, resp)
            return
        self._send(req, resp)

    def close_if_idle(self, idle_for: float = 0.0) -> None:
        if (
            not self.busy
            and not self.queue
            and self.transport is not None
            and time.monotonic() - self.last_active >= idle_for
        ):
            self.closing = True
            self.transport.close()


class HttpServer:
    """Holds the listening socket and the open connections."""

    def __init__(
        self, app: Application, *, max_request_bytes: int | None = None, idle_timeout: float = 75.0
    ) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.idle_timeout = idle_timeout
        self._sweeper: asyncio.TimerHandle | None = None
        self.connections: set[HttpProtocol] = set()
        self.inflight = 0
        self.closing_connections = False
        self._server: asyncio.base_events.Server | None = None
        self._drained: asyncio.Event | None = None

    async def start(self, host: str, port: int, **kwargs: Any) -> int:
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: HttpProtocol(self.app, self), host, port, reuse_address=True, backlog=1024, **kwargs
            )
        except OSError as e:
            raise ServingError(
                f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port or --host"
            ) from e
        self._sweeper = loop.call_later(min(5.0, self.idle_timeout), self._sweep)
        sock = self._server.sockets[0]
        return sock.getsockname()[1]

    def _sweep(self) -> None:
        """Close connections idle for longer than ``idle_timeout`` (keep-alive or stalled mid-request)."""
        for conn in list(self.connections):
            conn.close_if_idle(self.idle_timeout)
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(min(5.0, self.idle_timeout), self._sweep)

    def maybe_drained(self) -> None:
        if self._drained is not None and self.inflight == 0:
            self._drained.set()

    async def drain(self, timeout: float) -> bool:
        """Wait until no request is in flight (at most ``timeout`` s); True when drained."""
        self._drained = asyncio.Event()
        self.maybe_drained()
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def close(self) -> None:
        self.closing_connections = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            except asyncio.TimeoutError:
                pass
