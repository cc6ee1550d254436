"""A lean HTTP/1.1 server on asyncio.Protocol + httptools: keep-alive, pipelining, limits, backpressure.

The application object answers each request with a :class:`Response`, or with a
:class:`Deferred` (an asyncio future plus a function that turns its result into a Response) so
that model runs do not need a coroutine per request. Responses on one connection go out in order.

What keeps one client from hurting the others (see :class:`HttpLimits`):

- fairness: a connection handles at most a few requests per event-loop turn, then yields; bytes are
  parsed in slices, and reading pauses while requests are queued, so one pipelining client cannot
  monopolize the loop;
- backpressure: reading pauses while the transport's write buffer is full (``pause_writing``), so a
  client that never reads its responses holds at most one buffer of them;
- size limits checked while parsing: the URL (414), the header block and header count (431), the body
  (413, also against a cap of body bytes in flight across all connections: 503);
- deadlines: a request's headers and its body must each arrive within a deadline (408), besides the
  keep-alive idle timeout; connections beyond a cap get a 503 and are closed;
- the application looks at each request's head before its body is read (``check_head``): an
  unauthenticated or oversized request is answered without reading its body, and
  ``Expect: 100-continue`` is only answered once the head is accepted;
- errors answer every request parsed before the bad one, in order, then the error, then close.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol, cast

from torchport.runtimes._errors import ServingError

try:
    import httptools
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ServingError(
        "the server needs httptools: pip install 'torchport[serve]' (or pip install httptools)"
    ) from e

log = logging.getLogger("torchport.server")

_REASONS = {s.value: s.phrase for s in HTTPStatus}
#: requests handled per connection before yielding to the event loop
_TURN_BUDGET = 8
#: bytes fed to the parser at a time (bounds the requests one read can queue)
_FEED_SLICE = 16 * 1024
#: queued requests per connection above which parsing and reading pause
_MAX_QUEUED = 16
#: how long a connection closed after an error keeps reading (and discarding) so the client sees
#: the response instead of a reset
_LINGER = 2.0
#: while draining, a keep-alive connection silent this long between requests is closed
_DRAIN_GRACE = 0.5
#: a drain ends after this long without an open connection
_DRAIN_QUIET = 0.2


@dataclass
class HttpLimits:
    """Limits of the HTTP layer (each one answers with its own status).

    Attributes:
        max_request_bytes: largest request body (413).
        max_inflight_body_bytes: body bytes being received or processed across all connections;
            a request that would exceed it gets 503 and ``retry-after`` (``None``: no cap).
        max_url_bytes: longest request target (414).
        max_header_bytes: largest header block (431).
        max_headers: most header fields in one request (431).
        max_connections: open connections; more get 503 and are closed (``None``: from the file
            descriptor limit).
        header_timeout: seconds for a request's whole header block, from its first byte (408).
        body_timeout: seconds for a request's whole body, from the end of its headers (408).
        idle_timeout: seconds a connection may stay silent (keep-alive, or stalled mid-request).
    """

    max_request_bytes: int | None = 64 * 1024 * 1024
    max_inflight_body_bytes: int | None = 256 * 1024 * 1024
    max_url_bytes: int = 8 * 1024
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_connections: int | None = None
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    idle_timeout: float = 75.0

    def connection_cap(self) -> int:
        """``max_connections``, or what the process's file descriptor limit leaves room for."""
        if self.max_connections is not None:
            return self.max_connections
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return 10_000
        return max(16, min(10_000, soft - 100))


@dataclass(slots=True)
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
    #: body bytes counted against the in-flight cap until the response is sent
    reserved: int = 0
    #: a tighter body limit the application set in ``check_head`` (413 above it, chunked bodies too)
    max_body: int | None = None
    #: what the application's ``check_head`` resolved from the head, for its ``handle``
    route: Any = None


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False


@dataclass
class Deferred:
    """A response that will be ready when ``future`` is done; ``finish(future)`` builds it (a
    :class:`Stream` too: its head goes out then)."""

    future: asyncio.Future
    finish: Callable[[asyncio.Future], Response | Stream]


@dataclass
class Stream:
    """A chunked response (server-sent events): the head goes out at once, then each ``bytes`` put on
    ``chunks`` as one chunk; ``None`` ends it. ``on_disconnect`` runs if the client goes away first."""

    status: int = 200
    content_type: str = "text/event-stream"
    chunks: asyncio.Queue = field(default_factory=asyncio.Queue)
    on_disconnect: Callable[[], None] | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)


class Application(Protocol):
    """What :class:`HttpServer` serves. Optionally also ``check_head(request) -> Response | None``
    (the metrics-only app has none): called when a request's headers are complete, before its body
    is read; a Response answers the request now (and the connection closes), ``None`` lets it
    proceed."""

    def handle(self, request: Request) -> Response | Deferred | Stream: ...

    def error_response(self, status: int, message: str) -> Response: ...

    def on_response(self, request: Request, response: Response, nbytes: int) -> None: ...


#: the first lines of a response head, up to ``content-length: ``, by (status, content type)
_HEAD_STARTS: dict[tuple[int, str], bytes] = {}


def _head(status: int, resp: Response, length: int, keep_alive: bool) -> bytes:
    start = _HEAD_STARTS.get((status, resp.content_type))
    if start is None:
        if len(_HEAD_STARTS) >= 256:
            _HEAD_STARTS.clear()
        start = _HEAD_STARTS[(status, resp.content_type)] = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
            f"content-type: {resp.content_type}\r\ncontent-length: "
        ).encode("latin-1")
    if not resp.headers and keep_alive:
        return b"%b%d\r\n\r\n" % (start, length)
    lines = [f"{length}\r\n"]
    for k, v in resp.headers:
        lines.append(f"{k}: {v}\r\n")
    if not keep_alive:
        lines.append("connection: close\r\n")
    lines.append("\r\n")
    return start + "".join(lines).encode("latin-1")


#: lower-case text of header names seen so far (clients send the same few)
_HEADER_NAMES: dict[bytes, str] = {}
#: ``(path, query)`` of recently seen request targets (a server sees the same few URLs over and over)
_TARGETS: dict[bytes, tuple[str, str]] = {}


class _Abort(Exception):
    """Raised inside a parser callback to stop parsing (the answer is already queued)."""


_IDLE, _HEADERS, _BODY = 0, 1, 2


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, app: Application, server: HttpServer) -> None:
        self.app = app
        self.server = server
        self.limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url: list[bytes] = []
        self.url_size = 0
        self.headers: dict[str, str] = {}
        self.header_count = 0
        self.header_bytes = 0
        self.raw_header_bytes = 0  # bytes of header chunks fed whole (a lower bound of the head's size)
        self.began_in_feed = False
        self.body: list[bytes] = []
        self.body_size = 0
        self.reserved = 0  # in-flight body bytes of the message being received
        self.current: Request | None = None  # the message being received, once its head is accepted
        self.queue: deque[tuple[Request, Response | None]] = deque()
        self.backlog: memoryview | None = None  # received bytes not fed to the parser yet
        self.phase = _IDLE
        self.phase_started = time.monotonic()
        self.busy = False
        self.failed = False  # parsing stopped: the error is queued, the connection closes after it
        self.closing = False
        self.lingering = False
        self.eof = False
        self.read_paused = False
        self.write_paused_since: float | None = None
        self.turn_scheduled = False
        self.client = ""
        self.started = 0.0
        self.last_active = time.monotonic()
        self.stream: Stream | None = None  # the streamed response being sent
        #: optional (the metrics-only app has none)
        self.check_head: Callable[[Request], Response | None] | None = getattr(app, "check_head", None)

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        if len(self.server.connections) >= self.server.connection_cap:
            self.server.refused += 1
            resp = self.app.error_response(
                503, f"the server has {self.server.connection_cap} open connections; retry later"
            )
            resp.headers.append(("retry-after", "1"))
            cast(asyncio.Transport, transport).write(_head(503, resp, len(resp.body), False) + resp.body)
            self._linger_close()
            return
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        self.transport = None
        self.server.release(self.reserved + sum(req.reserved for req, _ in self.queue))
        self.reserved = 0
        self.queue.clear()
        self.backlog = None
        if self.stream is not None:
            self.stream.chunks.put_nowait(None)  # wakes the pump, which sees the transport gone

    def pause_writing(self) -> None:
        self.write_paused_since = time.monotonic()
        self._pause_reading()

    def resume_writing(self) -> None:
        self.write_paused_since = None
        self._schedule_turn()

    def eof_received(self) -> bool | None:
        if self.lingering:
            self._abort()
            return None
        # a half-closed client may still read the answers to what it sent
        self.eof = True
        return True if (self.busy or self.queue or self.backlog) else None

    def data_received(self, data: bytes) -> None:
        if self.closing or self.failed:
            return  # closing after an error: discard what the client still sends
        self.last_active = time.monotonic()
        if self.backlog is None and len(data) <= _FEED_SLICE and len(self.queue) < _MAX_QUEUED:
            self._feed_chunk(data)  # the common case: one slice, fed at once
            if self.read_paused and not self.failed:
                self._maybe_resume_reading()
        else:
            if self.backlog is not None:  # only while reading is paused; keep the order anyway
                self.backlog = memoryview(bytes(self.backlog) + data)
            else:
                self.backlog = memoryview(data)
            self._feed()
        self._turn()

    # -- parsing ----------------------------------------------------------------------------------

    def _feed(self) -> None:
        """Feed the backlog to the parser in slices while few requests are queued."""
        while self.backlog is not None and not self.failed and not self.closing:
            if len(self.queue) >= _MAX_QUEUED:
                self._pause_reading()
                return
            chunk = self.backlog[:_FEED_SLICE]
            rest = self.backlog[_FEED_SLICE:]
            self.backlog = rest if len(rest) else None
            self._feed_chunk(chunk)
        if self.backlog is None and not self.failed:
            self._maybe_resume_reading()

    def _feed_chunk(self, chunk: memoryview | bytes) -> None:
        self.began_in_feed = False
        try:
            self.parser.feed_data(chunk)
        except httptools.HttpParserUpgrade:
            if self.failed:
                return
            if self.queue and self.queue[-1][1] is None:
                # no protocol switch: answer the request as plain HTTP, then close (what follows
                # would be in the other protocol)
                self.queue[-1][0].keep_alive = False
                self.failed = True
                self.backlog = None
            else:
                self._fail(400, "protocol upgrades are not supported")
            return
        except httptools.HttpParserCallbackError as e:
            if self.failed:
                return  # _Abort: the answer is queued
            log.error("HTTP parser callback failed: %s: %s", type(e.__context__).__name__, e.__context__)
            self._fail(500, "internal server error (see the server log)")
            return
        except httptools.HttpParserError as e:
            if not self.failed:
                self._fail(400, f"malformed HTTP request: {e}")
            return
        if self.phase == _HEADERS and not self.began_in_feed:
            # httptools hands a header over only when it is complete: count raw bytes as they come
            self.raw_header_bytes += len(chunk)
            if self.raw_header_bytes > self.limits.max_header_bytes:
                self._fail(431, f"request headers exceed {self.limits.max_header_bytes} bytes")

    # -- httptools callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = []
        self.url_size = 0
        self.headers = {}
        self.header_count = 0
        self.header_bytes = 0
        self.raw_header_bytes = 0
        self.body = []
        self.body_size = 0
        self.current = None
        self.began_in_feed = True
        self.phase = _HEADERS
        self.phase_started = time.monotonic()
        self.started = time.perf_counter()

    def on_url(self, url: bytes) -> None:
        self.url_size += len(url)
        if self.url_size > self.limits.max_url_bytes:
            self._fail(414, f"request URL exceeds {self.limits.max_url_bytes} bytes")
            raise _Abort
        self.url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        count = self.header_count = self.header_count + 1
        size = self.header_bytes = self.header_bytes + len(name) + len(value) + 4
        limits = self.limits
        if count > limits.max_headers:
            self._fail(431, f"request has more than {limits.max_headers} header fields")
            raise _Abort
        if size > limits.max_header_bytes:
            self._fail(431, f"request headers exceed {limits.max_header_bytes} bytes")
            raise _Abort
        key = _HEADER_NAMES.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_HEADER_NAMES) < 256:
                _HEADER_NAMES[name] = key
        text = value.decode("latin-1")
        headers = self.headers
        # repeated fields join with a comma (RFC 9110 5.3); Content-Length duplicates are refused by the parser
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        self.phase = _BODY
        self.phase_started = time.monotonic()
        req = self._request_head()
        if req is None:
            raise _Abort
        limit = self.limits.max_request_bytes
        length = self.headers.get("content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        if limit and declared is not None and declared > limit:
            self._fail(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes", req)
            raise _Abort
        check_head = self.check_head
        try:
            early = check_head(req) if check_head is not None else None
        except Exception:
            log.exception("unhandled error checking %s %s", req.method, req.path)
            early = self.app.error_response(500, "internal server error (see the server log)")
        if early is not None:
            self._reject(req, early)
            raise _Abort
        if declared and not self._reserve(declared, req):
            raise _Abort
        self.current = req
        expect = self.headers.get("expect")
        if (
            expect is not None
            and expect.lower() == "100-continue"
            and self.transport is not None
            and not self._pending()
        ):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        limit = self.limits.max_request_bytes
        if limit and self.body_size > limit:
            self._fail(413, f"request body exceeds the limit of {limit} bytes", self.current)
            raise _Abort
        cap = self.current.max_body if self.current is not None else None
        if cap is not None and self.body_size > cap:
            self._fail(
                413, f"request body exceeds {cap} bytes, the most a valid request can take here", self.current
            )
            raise _Abort
        if self.body_size > self.reserved and not self._reserve(self.body_size - self.reserved, self.current):
            raise _Abort
        self.body.append(body)

    def on_message_complete(self) -> None:
        req = self.current
        self.current = None
        self.phase = _IDLE
        self.phase_started = time.monotonic()
        if req is None:
            raise _Abort
        req.body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        req.keep_alive = self.parser.should_keep_alive()
        req.reserved, self.reserved = self.reserved, 0
        self.body = []
        self.queue.append((req, None))

    # -- request heads and body accounting --------------------------------------------------------

    def _request_head(self) -> Request | None:
        """The request being received, without its body; ``None`` after answering a bad head."""
        url = self.url[0] if len(self.url) == 1 else b"".join(self.url)
        req = self._placeholder()  # its path and query are set once the target is checked
        if req.method == "CONNECT":
            self._fail(400, "CONNECT is not supported: this is not a proxy", req)
            return None
        if not url.startswith(b"/"):
            self._fail(400, "the request target must be a path (origin-form, e.g. /v2/health/ready)", req)
            return None
        target = _TARGETS.get(url)
        if target is None:
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                self._fail(400, "malformed request URL", req)
                return None
            if len(_TARGETS) >= 256:
                _TARGETS.clear()
            target = _TARGETS[url] = (
                (parsed.path or b"/").decode("latin-1"),
                (parsed.query or b"").decode("latin-1"),
            )
        req.path, req.query = target
        if self.parser.get_http_version() == "1.1" and "host" not in self.headers:
            self._fail(400, "HTTP/1.1 requests must have a Host header", req)
            return None
        return req

    def _reserve(self, nbytes: int, req: Request | None) -> bool:
        """Count ``nbytes`` of body against the server-wide cap; answers 503 and returns False past it."""
        if self.server.reserve(nbytes):
            self.reserved += nbytes
            return True
        cap = self.limits.max_inflight_body_bytes
        resp = self.app.error_response(
            503, f"the server is receiving {cap} bytes of request bodies already; retry shortly"
        )
        resp.headers.append(("retry-after", "1"))
        self._reject(req or self._placeholder(), resp)
        return False

    # -- request processing -----------------------------------------------------------------------

    def _pending(self) -> bool:
        return self.busy or bool(self.queue)

    def _schedule_turn(self) -> None:
        if not self.turn_scheduled and not self.closing:
            self.turn_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_turn)

    def _scheduled_turn(self) -> None:
        self.turn_scheduled = False
        self._turn()

    def _turn(self) -> None:
        """Answer up to a few queued requests, then yield to the loop (and other connections)."""
        budget = _TURN_BUDGET
        while self.queue and not self.busy and not self.closing and self.write_paused_since is None:
            if budget == 0:
                self._schedule_turn()
                return
            budget -= 1
            req, resp = self.queue.popleft()
            if resp is None:
                try:
                    result = self.app.handle(req)
                except Exception:
                    log.exception("unhandled error in %s %s", req.method, req.path)
                    result = self.app.error_response(500, "internal server error (see the server log)")
                if isinstance(result, Deferred):
                    self.busy = True
                    self.server.inflight += 1

                    def done(_f: object, req: Request = req, d: Deferred = result) -> None:
                        self._deferred_done(req, d)

                    result.future.add_done_callback(done)
                    return
                if isinstance(result, Stream):
                    self.busy = True
                    self.server.inflight += 1
                    self.stream = result
                    asyncio.ensure_future(self._pump(req, result))
                    return
                resp = result
            self._send(req, resp)
        if self.closing or self.busy or self.write_paused_since is not None:
            return
        if self.backlog is not None:
            self._feed()
            if self.queue:
                self._schedule_turn()
        elif self.eof and not self.queue and self.transport is not None:
            self.closing = True
            self.transport.close()  # the client half-closed and has every answer
        else:
            self._maybe_resume_reading()

    def _deferred_done(self, req: Request, deferred: Deferred) -> None:
        self.server.inflight -= 1
        self.busy = False
        try:
            resp = deferred.finish(deferred.future)
        except Exception:
            log.exception("unhandled error finishing %s %s", req.method, req.path)
            resp = self.app.error_response(500, "internal server error (see the server log)")
        if isinstance(resp, Stream):  # a stream whose head waited for the future (e.g. its 400 check)
            self.busy = True
            self.server.inflight += 1
            self.stream = resp
            asyncio.ensure_future(self._pump(req, resp))
            return
        self._send(req, resp)
        self._turn()

    async def _pump(self, req: Request, stream: Stream) -> None:
        """Send a :class:`Stream` as chunked transfer encoding until its ``None``."""
        self.server.release(req.reserved)
        req.reserved = 0
        finished, nbytes = False, 0
        try:
            if self.transport is not None and not self.closing:
                head = [f"HTTP/1.1 {stream.status} {_REASONS.get(stream.status, 'Unknown')}\r\n"]
                head.append(f"content-type: {stream.content_type}\r\ntransfer-encoding: chunked\r\n")
                head.append("cache-control: no-cache\r\n")
                head += [f"{k}: {v}\r\n" for k, v in stream.headers]
                self.transport.write("".join(head + ["\r\n"]).encode("latin-1"))
                while True:
                    chunk = await stream.chunks.get()
                    if self.transport is None or self.closing:
                        break
                    if chunk is None:
                        self.transport.write(b"0\r\n\r\n")
                        finished = True
                        break
                    if chunk:
                        self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                        nbytes += len(chunk)
        finally:
            self.stream = None
            self.server.inflight -= 1
            self.busy = False
            if not finished and stream.on_disconnect is not None:
                stream.on_disconnect()
            try:
                self.app.on_response(req, Response(stream.status, b"", stream.content_type), nbytes)
            except Exception:  # pragma: no cover - logging must never break serving
                log.exception("access log failed")
            if self.transport is not None and not self.closing:
                self._turn()

    def _send(self, req: Request, resp: Response) -> None:
        keep_alive = (
            req.keep_alive
            and not resp.close
            and not self.server.closing_connections
            and not getattr(self.app, "draining", False)  # from the moment SIGTERM arrives
        )
        self.server.release(req.reserved)
        req.reserved = 0
        self.last_active = time.monotonic()  # the idle timer runs from the last answer too
        if self.transport is not None and not self.closing:
            body = resp.body
            head = _head(resp.status, resp, len(body), keep_alive)
            self.transport.write(head if req.method == "HEAD" else head + body)
            if not keep_alive:
                self._linger_close()
        try:
            self.app.on_response(req, resp, len(resp.body))
        except Exception:  # pragma: no cover - logging must never break serving
            log.exception("access log failed")

    def _placeholder(self) -> Request:
        """The request being received (or a stand-in between requests) for an answer and its log line."""
        return Request(
            method=(self.parser.get_method() or b"?").decode("latin-1") if self.phase != _IDLE else "?",
            path="?",
            query="",
            headers=self.headers,
            body=b"",
            keep_alive=False,
            client=self.client,
            started=self.started or time.perf_counter(),
        )

    def _reject(self, req: Request, resp: Response) -> None:
        """Answer ``req`` with ``resp`` after the requests queued before it, then close."""
        self.failed = True
        self.backlog = None
        resp.close = True
        req.keep_alive = False
        self.current = None
        self.server.release(self.reserved)
        self.reserved = 0
        self.queue.append((req, resp))
        if self.transport is not None and not self.closing:
            self._schedule_turn()

    def _fail(self, status: int, message: str, req: Request | None = None) -> None:
        """Answer an unparseable, oversized or late request (in order) and close the connection."""
        if self.failed:
            return
        if req is None:
            req = self._placeholder()
            if self.url and self.url_size <= self.limits.max_url_bytes:
                try:
                    req.path = (httptools.parse_url(b"".join(self.url)).path or b"?").decode("latin-1")
                except httptools.HttpParserInvalidURLError:
                    pass
        self._reject(req, self.app.error_response(status, message))

    # -- flow control and closing -----------------------------------------------------------------

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None and not self.closing:
            self.transport.pause_reading()
            self.read_paused = True

    def _maybe_resume_reading(self) -> None:
        if (
            self.read_paused
            and self.transport is not None
            and not self.closing
            and self.write_paused_since is None
            and self.backlog is None
            and len(self.queue) < _MAX_QUEUED // 2
        ):
            self.transport.resume_reading()
            self.read_paused = False

    def _linger_close(self) -> None:
        """Close after the last response: stop writing, read and discard for a moment, then close.

        Closing a socket with unread input makes the kernel send a reset, which can destroy the
        response before the client reads it.
        """
        transport = self.transport
        self.closing = True
        self.queue.clear()
        self.backlog = None
        if transport is None:
            return
        if not transport.can_write_eof():
            transport.close()
            return
        self.lingering = True
        transport.write_eof()
        if self.read_paused:
            transport.resume_reading()
            self.read_paused = False
        asyncio.get_running_loop().call_later(_LINGER, self._abort)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def has_work(self) -> bool:
        """A request is being received, queued, running, or waiting to be written."""
        return self.phase != _IDLE or self._pending() or self.backlog is not None

    def check_timers(self, now: float) -> None:
        """Enforce the header and body deadlines, the idle timeout, and the stalled-reader limit."""
        if self.transport is None or self.lingering:
            return
        lim = self.limits
        if self.write_paused_since is not None and now - self.write_paused_since >= lim.idle_timeout:
            self.closing = True
            self.transport.abort()  # the client has not read its responses for idle_timeout
            return
        if not self.failed:
            if self.phase == _HEADERS and now - self.phase_started >= lim.header_timeout:
                self._fail(408, f"request headers did not arrive within {lim.header_timeout:g} s")
                self._turn()
                return
            if self.phase == _BODY and now - self.phase_started >= lim.body_timeout:
                self._fail(408, f"request body did not arrive within {lim.body_timeout:g} s", self.current)
                self._turn()
                return
        self.close_if_idle(lim.idle_timeout, now)

    def close_if_idle(
        self, idle_for: float = 0.0, now: float | None = None, *, between_requests: bool = False
    ) -> None:
        """Close when silent for ``idle_for`` s with nothing to answer (``between_requests``: and no
        request partly received)."""
        if (
            not self.busy
            and not self.queue
            and not (between_requests and self.phase != _IDLE)
            and self.transport is not None
            and not self.lingering
            and (now if now is not None else time.monotonic()) - self.last_active >= idle_for
        ):
            self.closing = True
            self.transport.close()


class Listener:
    """A listening socket and its open connections, for the HTTP and the gRPC server alike: the
    connection cap, the sweep that enforces each connection's deadlines (``check_timers``), and the
    shutdown (each connection's own way of closing is :meth:`_close_connection`).

    Args:
        limits: timeouts and the connection cap.
    """

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.connection_cap = limits.connection_cap()
        self.connections: set[Any] = set()
        self.inflight = 0
        self.refused = 0
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def _listen(
        self, protocol: Callable[[], asyncio.Protocol], host: str, port: int, **kwargs: Any
    ) -> int:
        """Listen on ``host:port`` (0: a free port) and start the sweep; returns the port.

        Raises:
            OSError: the port cannot be bound (the caller says which option to change).
        """
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            protocol, host, port, reuse_address=True, backlog=1024, **kwargs
        )
        self._sweeper = loop.call_later(self._sweep_interval(), self._sweep)
        return self._server.sockets[0].getsockname()[1]

    def _sweep_interval(self) -> float:
        lim = self.limits
        return max(0.05, min(1.0, lim.idle_timeout / 2, lim.header_timeout / 2, lim.body_timeout / 2))

    def _sweep(self) -> None:
        """Enforce each connection's deadlines and idle timeout."""
        now = time.monotonic()
        for conn in list(self.connections):
            conn.check_timers(now)
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(self._sweep_interval(), self._sweep)

    def _close_connection(self, conn: Any) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Stop listening and close every connection (waits up to 2 s for the socket to close)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            self._close_connection(conn)
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            except asyncio.TimeoutError:
                pass


class HttpServer(Listener):
    """Holds the listening socket, the open connections and the server-wide counters."""

    def __init__(
        self,
        app: Application,
        *,
        max_request_bytes: int | None = None,
        idle_timeout: float = 75.0,
        limits: HttpLimits | None = None,
    ) -> None:
        super().__init__(limits or HttpLimits(max_request_bytes=max_request_bytes, idle_timeout=idle_timeout))
        self.app = app
        self.connections: set[HttpProtocol] = set()
        self.body_bytes = 0
        self.closing_connections = False

    @property
    def max_request_bytes(self) -> int | None:
        return self.limits.max_request_bytes

    @property
    def idle_timeout(self) -> float:
        return self.limits.idle_timeout

    async def start(self, host: str, port: int, **kwargs: Any) -> int:
        try:
            return await self._listen(lambda: HttpProtocol(self.app, self), host, port, **kwargs)
        except OSError as e:
            raise ServingError(
                f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port or --host"
            ) from e

    def reserve(self, nbytes: int) -> bool:
        cap = self.limits.max_inflight_body_bytes
        if cap is not None and self.body_bytes + nbytes > cap:
            return False
        self.body_bytes += nbytes
        return True

    def release(self, nbytes: int) -> None:
        self.body_bytes -= nbytes

    async def drain(self, timeout: float) -> bool:
        """Finish what clients sent, answer new requests with ``connection: close``; True when done.

        Every response from now on closes its connection; requests being received are read to the
        end and answered; keep-alive connections are closed once silent for a moment between
        requests (so a request already on its way is answered, not reset). Returns once every
        connection is closed or closing (at most ``timeout`` seconds).
        """
        self.closing_connections = True
        grace = min(_DRAIN_GRACE, self.limits.idle_timeout)
        deadline = time.monotonic() + timeout
        quiet_since = None
        while time.monotonic() < deadline:
            now = time.monotonic()
            open_ = [c for c in self.connections if not c.lingering and not c.closing]
            if self.inflight == 0 and not open_:
                # done once it stays so for a moment: a client told to close may be reconnecting
                # right now, and its request deserves a 503 rather than a reset
                quiet_since = quiet_since or now
                if now - quiet_since >= _DRAIN_QUIET:
                    return True
            else:
                quiet_since = None
            for conn in open_:
                conn.close_if_idle(grace, now, between_requests=True)
            await asyncio.sleep(0.02)
        return False

    def _close_connection(self, conn: HttpProtocol) -> None:
        conn.close_if_idle()

    async def close(self) -> None:
        self.closing_connections = True
        await super().close()
