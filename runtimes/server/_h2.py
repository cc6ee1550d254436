"""A unary gRPC server over HTTP/2 (h2c, prior knowledge): the ``h2`` library (sans-IO) driven
inside an asyncio.Protocol on the server's event loop.

It runs next to the HTTP/1.1 server, so a gRPC request costs one parse and one dispatch on that
loop (no second runtime, no per-call coroutine) and batches with the requests read in the same
iteration, as on HTTP. The framing, HPACK (``hpack``), flow-control bookkeeping and protocol
checks are h2's; what is ours is gRPC on top (one length-prefixed request message per stream:
identity, gzip or deflate; one response message; trailers with ``grpc-status`` /
``grpc-message``; ``grpc-timeout`` deadlines) and the server's limits.

Limits (from :class:`HttpLimits`, shared with the HTTP server): the message size
(RESOURCE_EXHAUSTED, answered as soon as the length prefix arrives), body bytes in flight across all
connections, concurrent streams per connection (REFUSED_STREAM), the header list size, the header
and body deadlines, the idle timeout, and a client that stops reading (reading pauses; the
connection is dropped after the idle timeout). Protocol violations end the connection with GOAWAY
(h2's error code; COMPRESSION_ERROR for a header block HPACK cannot decode).
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from torchport.runtimes._errors import ServingError

try:
    from h2.config import H2Configuration
    from h2.connection import H2Connection
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ServingError("--grpc-port needs h2: pip install 'torchport[serve]' (or pip install h2)") from e
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes
from hpack import HPACKError
from hyperframe.frame import GoAwayFrame, HeadersFrame, RstStreamFrame

from torchport.runtimes._grpc_status import (
    CANCELLED,
    DEADLINE_EXCEEDED,
    INTERNAL,
    OK,
    RESOURCE_EXHAUSTED,
    UNIMPLEMENTED,
)
from torchport.runtimes.server._http import HttpLimits, Listener

log = logging.getLogger("torchport.server")

#: the receive window of each stream, and of the connection
_STREAM_WINDOW = 1 << 20
_CONN_WINDOW = 16 << 20
MAX_STREAMS = 128
_MAX_HEADER_LIST = 16 * 1024
#: raw header block bytes (HEADERS + CONTINUATION) one request may take
_MAX_HEADER_BLOCK = 64 * 1024
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_CONFIG = H2Configuration(
    client_side=False,
    header_encoding=None,  # bytes: we decode the few fields we read
    # our own checks answer a request that is not gRPC (405, 415) on its stream, as before
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
    validate_outbound_headers=False,  # the fields we send are constants and checked values
    normalize_outbound_headers=False,
)
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_RESPONSE_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]
_TRAILERS_OK = [(b"grpc-status", b"0")]


#: an answer still being computed: a future and the function that turns it into the response
Pending = tuple[asyncio.Future, Callable[[asyncio.Future], bytes]]


class GrpcError(Exception):
    """An rpc's answer other than OK: a gRPC status code and its message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Call:
    """One unary call (one HTTP/2 stream) as the service sees it."""

    __slots__ = ("stream_id", "path", "metadata", "message", "started", "model", "endpoint")

    def __init__(self, stream_id: int, path: str, metadata: dict[str, str]) -> None:
        self.stream_id = stream_id
        self.path = path
        self.metadata = metadata
        self.message = b""
        self.started = time.perf_counter()
        #: set by the service, for metrics
        self.model = ""
        self.endpoint = ""


class Service(Protocol):
    def check(self, call: Call) -> GrpcError | None:
        """Called when a call's headers are complete: an error answers it before its message is read."""
        ...

    def handle(self, call: Call) -> bytes | Pending:
        """The serialized response, or ``(future, finish)``: ``finish(future)`` returns it once the
        future is done; either raises :class:`GrpcError`."""
        ...

    def finished(self, call: Call, code: int) -> None:
        """Called once per call with its final status (metrics)."""
        ...


def _grpc_message(text: str) -> bytes:
    """Percent-encode a status message as gRPC requires (printable ASCII except '%' stays)."""
    out = []
    for b in text.encode("utf-8"):
        out.append(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}")
    return "".join(out).encode("ascii")


def _status_fields(code: int, message: str) -> list[tuple[bytes, bytes]]:
    """The fields of a trailers-only response: the response headers, then the status."""
    fields = [*_RESPONSE_HEADERS, (b"grpc-status", str(code).encode())]
    if message:
        fields.append((b"grpc-message", _grpc_message(message[:4096])))
    return fields


def parse_timeout(value: str) -> float | None:
    """``grpc-timeout`` (``<digits><unit>``, at most 8 digits) in seconds; None when malformed."""
    if 2 <= len(value) <= 9 and value[:-1].isdigit() and value[-1] in _TIMEOUT_UNITS:
        return int(value[:-1]) * _TIMEOUT_UNITS[value[-1]]
    return None


class _Stream:
    __slots__ = (
        "id",
        "call",
        "data",
        "size",
        "limit_checked",
        "state",
        "pending",
        "timer",
        "reserved",
        "phase_started",
        "encoding",
    )

    def __init__(self, sid: int) -> None:
        self.id = sid
        self.call: Call | None = None
        self.data: list[bytes] = []
        self.size = 0
        self.limit_checked = False
        #: receiving -> running -> sending (data held back by flow control) -> gone
        self.state = "receiving"
        self.pending: memoryview | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.reserved = 0
        self.phase_started = time.monotonic()
        self.encoding = "identity"


class _FrameScan:
    """Walks the frame headers of the bytes received (length, type, flags; h2 parses the frames) to
    enforce what h2 checks only once a frame is complete, or not at all: a frame over the size we
    take (refused from its header, before its payload is buffered), a client's PUSH_PROMISE, and
    how long and how large a header block in progress (HEADERS + CONTINUATION) gets."""

    __slots__ = ("skip", "head", "block", "in_block", "block_started")

    def __init__(self) -> None:
        self.skip = 0  # payload bytes of the current frame still to pass
        self.head = b""  # a frame header split over two reads
        self.block = 0
        self.in_block = False
        self.block_started = 0.0

    def feed(self, data: bytes, max_frame: int) -> None:
        """Raises:
        _ScanError: a frame over ``max_frame`` bytes, or a header block over the limit."""
        i, n = 0, len(data)
        while True:
            if self.skip:
                step = min(self.skip, n - i)
                self.skip -= step
                i += step
                if self.skip:
                    return
            need = 9 - len(self.head)
            if n - i < need:
                self.head += data[i:]
                return
            head = self.head + data[i : i + need] if self.head else data[i : i + 9]
            i += need
            self.head = b""
            length, ftype, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
            if length > max_frame:
                raise _ScanError(
                    ErrorCodes.FRAME_SIZE_ERROR, f"a frame of {length} bytes exceeds {max_frame}"
                )
            if ftype == 0x5:  # h2 would wait for the rest of its header block first
                raise _ScanError(ErrorCodes.PROTOCOL_ERROR, "a client must not send PUSH_PROMISE")
            if ftype == 0x1 or ftype == 0x9:  # HEADERS, CONTINUATION
                if ftype == 0x1 or not self.in_block:
                    self.block, self.block_started = 0, time.monotonic()
                self.block += length
                if self.block > _MAX_HEADER_BLOCK:
                    raise _ScanError(
                        ErrorCodes.ENHANCE_YOUR_CALM, f"a header block exceeds {_MAX_HEADER_BLOCK} bytes"
                    )
                self.in_block = not flags & 0x4  # END_HEADERS
            self.skip = length


class _ScanError(Exception):
    def __init__(self, code: ErrorCodes, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Connection(H2Connection):
    """h2's server connection, refusing a stream over MAX_CONCURRENT_STREAMS with REFUSED_STREAM
    (a stream error, RFC 9113 5.1.2) where h2 would end the connection: its header block is still
    decoded, so the HPACK table stays in step with the client's."""

    refuse_new = False

    def _receive_headers_frame(self, frame: HeadersFrame) -> tuple[list[Any], list[Any]]:
        sid = frame.stream_id
        if (
            sid not in self.streams
            and sid > self.highest_inbound_stream_id
            and sid % 2
            and (self.refuse_new or self.open_inbound_streams >= MAX_STREAMS)
        ):
            try:
                self.decoder.decode(frame.data, raw=True)
            except HPACKError as e:
                raise ProtocolError(f"Error decoding header block: {e}") from e
            self.highest_inbound_stream_id = sid
            rst = RstStreamFrame(sid)
            rst.error_code = ErrorCodes.REFUSED_STREAM
            return [rst], []
        return super()._receive_headers_frame(frame)


class H2Protocol(asyncio.Protocol):
    """One HTTP/2 client connection carrying unary gRPC calls."""

    def __init__(self, server: H2Server) -> None:
        self.server = server
        self.service = server.service
        self.limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.conn = _Connection(config=_CONFIG)
        self.conn.local_settings = type(self.conn.local_settings)(
            client=False,
            initial_values={
                SettingCodes.ENABLE_PUSH: 0,
                SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
                SettingCodes.INITIAL_WINDOW_SIZE: _STREAM_WINDOW,
                SettingCodes.MAX_HEADER_LIST_SIZE: _MAX_HEADER_LIST,
            },
        )
        self.conn.decoder.max_header_list_size = _MAX_HEADER_LIST
        self.preface = bytearray()
        self.preface_ok = False
        self.streams: dict[int, _Stream] = {}
        self.blocked: deque[_Stream] = deque()  # streams whose response waits for window
        self.scan = _FrameScan()
        self.out = bytearray()
        self.flush_scheduled = False
        self.goaway_sent = False
        self.goaway_received = False
        self.closing = False
        self.read_paused = False
        self.write_paused_since: float | None = None
        self.last_active = time.monotonic()

    @property
    def last_stream_id(self) -> int:
        """The highest stream id the client opened."""
        return self.conn.highest_inbound_stream_id

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.server.connections) >= self.server.connection_cap:
            self.server.refused += 1
            self.conn.initiate_connection()
            self._goaway(ErrorCodes.ENHANCE_YOUR_CALM, "too many connections; retry later")
            return
        self.server.connections.add(self)  # our SETTINGS go out once the client's preface is in

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        self.transport = None
        for st in list(self.streams.values()):
            self._drop(st, CANCELLED)
        self.blocked.clear()

    def pause_writing(self) -> None:
        self.write_paused_since = time.monotonic()
        if not self.read_paused and self.transport is not None:
            self.transport.pause_reading()
            self.read_paused = True

    def resume_writing(self) -> None:
        self.write_paused_since = None
        if self.read_paused and self.transport is not None and not self.closing:
            self.transport.resume_reading()
            self.read_paused = False

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_active = time.monotonic()
        if not self.preface_ok:
            # h2 would answer a non-HTTP/2 client with a GOAWAY it cannot read: tell it in HTTP/1.1
            self.preface += data
            if not (_PREFACE.startswith(bytes(self.preface)) or self.preface.startswith(_PREFACE)):
                self._not_http2()
                return
            if len(self.preface) < len(_PREFACE):
                return
            data, self.preface = bytes(self.preface), bytearray()
            self.preface_ok = True
            self.conn.initiate_connection()
            self.conn.increment_flow_control_window(_CONN_WINDOW - 65535)
            frames = data[len(_PREFACE) :]
        else:
            frames = data
        try:
            self.scan.feed(frames, self.conn.max_inbound_frame_size)
            events = self.conn.receive_data(data)
        except _ScanError as e:
            self._goaway(e.code, str(e))
            return
        except ProtocolError as e:
            self._protocol_error(e)
            return
        for event in events:
            if self.closing:
                break
            self._event(event)
        self._flush()

    def eof_received(self) -> bool | None:
        return None  # a half-closed HTTP/2 connection is done

    # -- events -----------------------------------------------------------------------------------

    def _event(self, event: Any) -> None:
        cls = type(event)
        if cls is DataReceived:
            self._on_data(event)
        elif cls is RequestReceived:
            self._on_request(event.stream_id, event.headers, event.stream_ended is not None)
        elif cls is StreamEnded:
            st = self.streams.get(event.stream_id)
            if st is not None and st.state == "receiving":
                self._complete(st)
        elif cls is WindowUpdated or cls is RemoteSettingsChanged:
            self._send_blocked()
        elif cls is StreamReset:
            st = self.streams.get(event.stream_id)
            if st is not None:
                self._drop(st, CANCELLED)
        elif cls is ConnectionTerminated:
            # h2 takes no more frames after a GOAWAY: the calls in progress cannot be answered
            self.goaway_received = True
            for st in list(self.streams.values()):
                self._drop(st, CANCELLED)
            self._close()

    def _protocol_error(self, e: ProtocolError) -> None:
        """A connection error: GOAWAY with its code (h2 queued one), then close."""
        code = e.error_code
        if isinstance(e.__cause__, HPACKError):  # h2 says PROTOCOL_ERROR; RFC 9113 4.3 says this
            code = ErrorCodes.COMPRESSION_ERROR
            self.conn.clear_outbound_data_buffer()
            goaway = GoAwayFrame(0)
            goaway.last_stream_id = self.conn.highest_inbound_stream_id
            goaway.error_code = code
            self.out += goaway.serialize()
        self.goaway_sent = True
        log.info("gRPC connection closed: %s", e)
        for st in list(self.streams.values()):
            self._drop(st, CANCELLED)
        self._flush()
        self._close()

    def _on_request(self, sid: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        if self.goaway_sent:
            self._send(self.conn.reset_stream, sid, ErrorCodes.REFUSED_STREAM)
            return
        method = path = ""
        metadata: dict[str, str] = {}
        for raw_name, raw_value in headers:
            name = raw_name.decode("latin-1")
            value = raw_value.decode("latin-1")
            if name.startswith(":"):
                if name == ":method":
                    method = value
                elif name == ":path":
                    path = value
            else:
                metadata[name] = f"{metadata[name]},{value}" if name in metadata else value
        st = _Stream(sid)
        self.streams[sid] = st
        if method != "POST" or not path:
            self._answer_http(st, 405, "gRPC calls are POST requests with a :path")
            return
        if not metadata.get("content-type", "").startswith("application/grpc"):
            self._answer_http(st, 415, "content-type must be application/grpc")
            return
        call = Call(sid, path, metadata)
        st.call = call
        st.encoding = metadata.get("grpc-encoding", "identity")
        timeout = metadata.get("grpc-timeout")
        if timeout is not None:
            seconds = parse_timeout(timeout)
            if seconds is None:
                self._answer_error(st, INTERNAL, f"malformed grpc-timeout {timeout[:32]!r}")
                return
            loop = asyncio.get_running_loop()
            st.timer = loop.call_later(seconds, self._deadline, st)
        if st.encoding not in ("identity", "gzip", "deflate"):
            self._answer_error(st, UNIMPLEMENTED, f"grpc-encoding {st.encoding[:32]!r} is not supported")
            return
        error = self.service.check(call)
        if error is not None:
            self._answer_error(st, error.code, error.message)
            return
        if ended:
            self._complete(st)

    def _on_data(self, event: DataReceived) -> None:
        sid = event.stream_id
        # padding counts toward flow control too; h2 sends the WINDOW_UPDATEs
        self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
        st = self.streams.get(sid)
        if st is None or st.state != "receiving":
            return  # a stream we answered early (an error): discard the rest of its message
        if event.data and not self._accept(st, event.data):
            return
        if event.stream_ended is not None:
            self._complete(st)

    def _accept(self, st: _Stream, data: bytes) -> bool:
        """Buffer a request's bytes within the message size and the server's in-flight budget."""
        st.data.append(data)
        st.size += len(data)
        limit = self.server.max_message_bytes
        if not st.limit_checked and st.size >= 5:
            head = st.data[0] if len(st.data[0]) >= 5 else b"".join(st.data)
            declared = int.from_bytes(head[1:5], "big")
            st.limit_checked = True
            if limit is not None and declared > limit:
                self._answer_error(
                    st, RESOURCE_EXHAUSTED, f"Received message larger than max ({declared} vs. {limit})"
                )
                return False
        if limit is not None and st.size > limit + 5:
            self._answer_error(
                st, RESOURCE_EXHAUSTED, f"Received message larger than max ({st.size} vs. {limit})"
            )
            return False
        if not self.server.reserve(len(data)):
            self._answer_error(st, RESOURCE_EXHAUSTED, "the server holds too many request bytes; retry later")
            return False
        st.reserved += len(data)
        return True

    # -- calls ------------------------------------------------------------------------------------

    def _complete(self, st: _Stream) -> None:
        """The request is in: unframe its message and hand it to the service."""
        call = st.call
        assert call is not None
        body = st.data[0] if len(st.data) == 1 else b"".join(st.data)
        st.data = []
        if len(body) < 5:
            self._answer_error(st, INTERNAL, "the request has no message (a unary call needs one)")
            return
        length = int.from_bytes(body[1:5], "big")
        if len(body) != 5 + length:
            self._answer_error(st, INTERNAL, "the request is not exactly one length-prefixed message")
            return
        message = body[5:]
        if body[0] & 1:
            try:
                message = self._decompress(message, st.encoding)
            except GrpcError as e:
                self._answer_error(st, e.code, e.message)
                return
        call.message = message
        st.state = "running"
        self.server.inflight += 1
        try:
            result = self.service.handle(call)
        except GrpcError as e:
            self._finish_running(st)
            self._answer_error(st, e.code, e.message)
            return
        except Exception:
            log.exception("unhandled error in gRPC %s", call.path)
            self._finish_running(st)
            self._answer_error(st, INTERNAL, "internal server error (see the server log)")
            return
        if isinstance(result, bytes):
            self._finish_running(st)
            self._answer(st, result)
            return
        future, finish = result
        if future.done():  # ran inline (an idle runner, a tiny model): answer in this iteration
            self._done(st, future, finish, flush=False)
        else:
            future.add_done_callback(lambda fut, st=st, finish=finish: self._done(st, fut, finish))

    def _decompress(self, message: bytes, encoding: str) -> bytes:
        if encoding == "identity":
            raise GrpcError(INTERNAL, "a compressed message without grpc-encoding")
        limit = self.server.max_message_bytes or 0
        d = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)
        try:
            out = d.decompress(message, limit + 1 if limit else 0)
        except zlib.error as e:
            raise GrpcError(INTERNAL, f"cannot decompress the {encoding} message: {e}") from None
        if limit and len(out) > limit:
            raise GrpcError(RESOURCE_EXHAUSTED, f"Received message larger than max (> {limit} decompressed)")
        return out

    def _finish_running(self, st: _Stream) -> None:
        if st.state == "running":
            st.state = "answering"
            self.server.inflight -= 1
            self.server.idle_check()

    def _done(
        self, st: _Stream, fut: asyncio.Future, finish: Callable[[asyncio.Future], bytes], flush: bool = True
    ) -> None:
        if st.state != "running":
            return  # reset by the client or past its deadline: already answered
        self._finish_running(st)
        try:
            if fut.cancelled():
                raise GrpcError(CANCELLED, "cancelled")
            response = finish(fut)
        except GrpcError as e:
            self._answer_error(st, e.code, e.message)
        except Exception:
            log.exception("unhandled error in gRPC %s", st.call.path if st.call else "?")
            self._answer_error(st, INTERNAL, "internal server error (see the server log)")
        else:
            self._answer(st, response)
        if flush and not self.flush_scheduled:
            # answers finished in this loop iteration (a batch) go out in one write
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _deadline(self, st: _Stream) -> None:
        st.timer = None
        if st.id in self.streams and st.state in ("receiving", "running"):
            self._finish_running(st)
            self._answer_error(st, DEADLINE_EXCEEDED, "Deadline Exceeded")
            self._flush()

    # -- answers ----------------------------------------------------------------------------------

    def _send(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """Call an h2 send method; False when the stream is already gone (reset by the client)."""
        try:
            method(*args, **kwargs)
            return True
        except (StreamClosedError, ProtocolError):
            return False

    def _answer(self, st: _Stream, message: bytes) -> None:
        """Headers, the length-prefixed message and OK trailers (held back by flow control if need be)."""
        payload = b"\x00" + len(message).to_bytes(4, "big") + message
        sid = st.id
        conn = self.conn
        if not self._send(conn.send_headers, sid, _RESPONSE_HEADERS):
            self._close_stream(st, CANCELLED)
            return
        n = len(payload)
        if (
            not self.blocked
            and n <= conn.max_outbound_frame_size
            and n <= conn.local_flow_control_window(sid)
        ):
            conn.send_data(sid, payload)
            conn.send_headers(sid, _TRAILERS_OK, end_stream=True)
            self._close_stream(st, OK)
            return
        st.state = "sending"
        st.phase_started = time.monotonic()
        st.pending = memoryview(payload)
        self.blocked.append(st)
        self._send_blocked()

    def _answer_error(self, st: _Stream, code: int, message: str) -> None:
        """A trailers-only response; a stream still receiving is then reset (NO_ERROR) so the client
        stops sending its message."""
        if st.id not in self.streams:
            return
        receiving = st.state == "receiving"
        if (
            self._send(self.conn.send_headers, st.id, _status_fields(code, message), end_stream=True)
            and receiving
        ):
            self._send(self.conn.reset_stream, st.id, ErrorCodes.NO_ERROR)
        self._close_stream(st, code)

    def _answer_http(self, st: _Stream, status: int, message: str) -> None:
        fields = [(b":status", str(status).encode()), (b"content-type", b"text/plain")]
        body = message.encode()
        sid = st.id
        if len(body) <= min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size):
            self._send(self.conn.send_headers, sid, fields)
            self._send(self.conn.send_data, sid, body, end_stream=True)
        else:  # no window for the text: the status alone
            self._send(self.conn.send_headers, sid, fields, end_stream=True)
        if st.state == "receiving":  # the client may stop sending its message (RFC 9113 8.1)
            self._send(self.conn.reset_stream, sid, ErrorCodes.NO_ERROR)
        self._close_stream(st, INTERNAL)

    def _send_blocked(self) -> None:
        """Send what the windows allow of the responses waiting for flow control, in order."""
        if not self.blocked:
            return
        conn = self.conn
        still: deque[_Stream] = deque()
        for st in self.blocked:
            if st.id not in self.streams or st.pending is None:
                continue
            try:
                while st.pending is not None:
                    n = min(
                        len(st.pending), conn.local_flow_control_window(st.id), conn.max_outbound_frame_size
                    )
                    if n <= 0:
                        break
                    conn.send_data(st.id, bytes(st.pending[:n]))
                    st.pending = st.pending[n:] if n < len(st.pending) else None
                if st.pending is None:
                    conn.send_headers(st.id, _TRAILERS_OK, end_stream=True)
                    self._close_stream(st, OK)
                else:
                    still.append(st)
            except (StreamClosedError, ProtocolError):
                self._drop(st, CANCELLED)
        self.blocked = still

    def _reset(self, st: _Stream, code: ErrorCodes) -> None:
        self._send(self.conn.reset_stream, st.id, code)
        self._drop(st, CANCELLED)

    def _drop(self, st: _Stream, code: int) -> None:
        """The stream ends without (more of) an answer: reset by the client, or the connection closed."""
        self._finish_running(st)
        self._close_stream(st, code)

    def _close_stream(self, st: _Stream, code: int) -> None:
        if self.streams.pop(st.id, None) is None:
            return
        st.state = "gone"
        st.pending = None
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None
        if st.reserved:
            self.server.release(st.reserved)
            st.reserved = 0
        if st.call is not None:
            try:
                self.service.finished(st.call, code)
            except Exception:  # pragma: no cover - metrics must never break serving
                log.exception("gRPC metrics failed")
        if (self.goaway_sent or self.goaway_received) and not self.streams:
            self._close()

    # -- output -----------------------------------------------------------------------------------

    def _flush(self) -> None:
        self.flush_scheduled = False
        data = self.conn.data_to_send()
        if self.out:  # frames written past h2 (a graceful GOAWAY) go after what h2 queued before them
            data, self.out = data + bytes(self.out), bytearray()
        if data and self.transport is not None:
            self.transport.write(data)

    def _goaway(self, code: ErrorCodes, message: str) -> None:
        """Refuse new streams; with an error, close the connection now.

        A graceful GOAWAY (NO_ERROR) is written past h2, whose state machine would take no more
        frames after it: the streams in progress are still answered, new ones refused.
        """
        if self.transport is None:
            return
        if code != ErrorCodes.NO_ERROR:
            if not self.goaway_sent:
                self.goaway_sent = True
                self.conn.close_connection(code, message.encode()[:256])
            if message:
                log.info("gRPC connection closed: %s", message)
            for st in list(self.streams.values()):
                self._drop(st, CANCELLED)
            self._flush()
            self._close()
            return
        if not self.goaway_sent:
            self.goaway_sent = True
            self.conn.refuse_new = True
            goaway = GoAwayFrame(0)
            goaway.last_stream_id = self.conn.highest_inbound_stream_id
            goaway.error_code = code
            self._flush()
            self.out += goaway.serialize()
        self._flush()
        if not self.streams:
            self._close()

    def _not_http2(self) -> None:
        body = b"this port serves gRPC (HTTP/2 with prior knowledge); send HTTP/1.1 requests to --port\n"
        if self.transport is not None:
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\n"
                b"content-length: %d\r\n\r\n%b" % (len(body), body)
            )
        self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.closing:
            self.closing = True
            self._flush()
            self.transport.close()

    def check_timers(self, now: float) -> None:
        """Header and body deadlines, the idle timeout, and a client that stopped reading."""
        if self.transport is None or self.closing:
            return
        lim = self.limits
        if self.write_paused_since is not None and now - self.write_paused_since >= lim.idle_timeout:
            self.closing = True
            self.transport.abort()
            return
        if not self.preface_ok and now - self.last_active >= lim.header_timeout:
            self._close()
            return
        if self.scan.in_block and now - self.scan.block_started >= lim.header_timeout:
            self._goaway(
                ErrorCodes.PROTOCOL_ERROR, f"request headers did not arrive within {lim.header_timeout:g} s"
            )
            return
        for st in list(self.streams.values()):
            if st.state == "receiving" and now - st.phase_started >= lim.body_timeout:
                self._answer_error(
                    st, DEADLINE_EXCEEDED, f"the request message did not arrive within {lim.body_timeout:g} s"
                )
            elif st.state == "sending" and now - st.phase_started >= lim.idle_timeout + lim.body_timeout:
                self._reset(st, ErrorCodes.CANCEL)  # the client gives no window for its answer
        if not self.streams and now - self.last_active >= lim.idle_timeout:
            self._goaway(ErrorCodes.NO_ERROR, "")
        self._flush()

    def drain(self) -> None:
        """Refuse new streams (GOAWAY), finish the ones in progress, then close."""
        if self.transport is not None and not self.goaway_sent:
            self._goaway(ErrorCodes.NO_ERROR, "")


class H2Server(Listener):
    """Holds the listening socket and the open HTTP/2 connections of one :class:`Service`.

    Args:
        service: answers the calls.
        limits: timeouts and connection cap (shared with the HTTP server).
        max_message_bytes: the largest request message (RESOURCE_EXHAUSTED above it).
        reserve, release: the server-wide budget of request bytes in flight (shared with HTTP).
    """

    def __init__(
        self,
        service: Service,
        limits: HttpLimits,
        *,
        max_message_bytes: int | None,
        reserve: Callable[[int], bool] | None = None,
        release: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(limits)
        self.service = service
        self.max_message_bytes = max_message_bytes
        self.connections: set[H2Protocol] = set()
        self._reserve = reserve
        self._release = release
        self._idle: asyncio.Event | None = None

    def reserve(self, nbytes: int) -> bool:
        return self._reserve(nbytes) if self._reserve is not None else True

    def release(self, nbytes: int) -> None:
        if self._release is not None:
            self._release(nbytes)

    async def start(self, host: str, port: int, **kwargs: Any) -> int:
        try:
            return await self._listen(lambda: H2Protocol(self), host, port, **kwargs)
        except OSError as e:
            raise ServingError(
                f"cannot listen for gRPC on {host}:{port}: {e.strerror or e}; choose another --grpc-port"
            ) from e

    def idle_check(self) -> None:
        if self._idle is not None and self.inflight == 0:
            self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """GOAWAY to every connection; True once the calls in progress are answered (within ``timeout``)."""
        for conn in list(self.connections):
            conn.drain()
        if self.inflight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def _close_connection(self, conn: H2Protocol) -> None:
        conn.drain()
        conn._close()
