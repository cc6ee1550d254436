"""A lean HTTP/2 server (h2c, prior knowledge) for unary gRPC calls, on asyncio.Protocol.

It runs on the server's event loop next to the HTTP/1.1 server, so a gRPC request costs one parse
and one dispatch on that loop (no second runtime, no per-call coroutine) and batches with the
requests read in the same iteration, as on HTTP. What it speaks (RFC 9113, gRPC over HTTP/2):

- frames: SETTINGS (+ACK), PING (+ACK), WINDOW_UPDATE, RST_STREAM, GOAWAY, HEADERS + CONTINUATION,
  DATA (padding allowed), PRIORITY (ignored), unknown types (ignored);
- flow control both ways: large receive windows replenished as data is buffered, and responses
  held back while the peer's connection or stream window is exhausted;
- HPACK: the ``hpack`` library's decoder (its table kept per connection; a block of indexed
  fields only is looked up, not decoded again); we send literals never indexed only;
- gRPC: one length-prefixed request message per stream (identity, gzip or deflate), one response
  message, trailers with ``grpc-status`` / ``grpc-message``; ``grpc-timeout`` deadlines.

Limits (from :class:`HttpLimits`, shared with the HTTP server): the message size
(RESOURCE_EXHAUSTED, answered as soon as the length prefix arrives), body bytes in flight across all
connections, concurrent streams per connection (REFUSED_STREAM), the header list size, the header
and body deadlines, the idle timeout, and a client that stops reading (reading pauses; the
connection is dropped after the idle timeout). Protocol violations end the connection with GOAWAY.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from torchport.runtimes._errors import ServingError
from torchport.runtimes._grpc_status import (
    CANCELLED,
    DEADLINE_EXCEEDED,
    INTERNAL,
    OK,
    RESOURCE_EXHAUSTED,
    UNIMPLEMENTED,
)
from torchport.runtimes._h2wire import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
)

try:
    from hpack import Decoder, Encoder, HPACKError, NeverIndexedHeaderTuple, OversizedHeaderListError
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ServingError(
        "--grpc-port needs hpack: pip install 'torchport[serve]' (or pip install hpack)"
    ) from e
from torchport.runtimes.server._http import HttpLimits, Listener

log = logging.getLogger("torchport.server")

# error codes (RFC 9113 7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 6, 7, 8, 9, 11
_MAX_WINDOW = (1 << 31) - 1
#: frames we accept (SETTINGS_MAX_FRAME_SIZE, the protocol's default)
_MAX_FRAME = 16384
#: the receive window of each stream, and of the connection
_STREAM_WINDOW = 1 << 20
_CONN_WINDOW = 16 << 20
MAX_STREAMS = 128
_MAX_HEADER_LIST = 16 * 1024
#: a block decoding past this ends the connection (hpack stops mid-block: the table is out of
#: step); between _MAX_HEADER_LIST and this it is decoded and its stream refused
_HPACK_BOMB = 4 * _MAX_HEADER_LIST
#: raw header block bytes (HEADERS + CONTINUATION) one request may take
_MAX_HEADER_BLOCK = 64 * 1024
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}

#: encodes literals never indexed only, so it holds no state and the peer's table never depends on us
_LITERALS = Encoder()


def encode_literal(name: str, value: str) -> bytes:
    """One header field as an HPACK literal never indexed (a static-table name by its index)."""
    return _LITERALS.encode([NeverIndexedHeaderTuple(name, value)], huffman=False)


class HpackError(Exception):
    """A header block that cannot be decoded (a connection error: COMPRESSION_ERROR)."""


class HeaderListTooLarge(Exception):
    """The decoded header list exceeds the limit (the stream is refused; the table stays in step)."""


_RESPONSE_HEADERS = encode_literal(":status", "200") + encode_literal("content-type", "application/grpc")
_TRAILERS_OK = encode_literal("grpc-status", "0")


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


def _grpc_message(text: str) -> str:
    """Percent-encode a status message as gRPC requires (printable ASCII except '%' stays)."""
    out = []
    for b in text.encode("utf-8"):
        out.append(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}")
    return "".join(out)


def _status_block(code: int, message: str) -> bytes:
    """The header block of a trailers-only response: the response headers, then the status."""
    block = _RESPONSE_HEADERS + encode_literal("grpc-status", str(code))
    if message:
        block += encode_literal("grpc-message", _grpc_message(message[:4096]))
    return block


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
        "recv_unacked",
        "send_window",
        "state",
        "pending",
        "timer",
        "reserved",
        "phase_started",
        "encoding",
    )

    def __init__(self, sid: int, send_window: int) -> None:
        self.id = sid
        self.call: Call | None = None
        self.data: list[bytes] = []
        self.size = 0
        self.limit_checked = False
        self.recv_unacked = 0
        self.send_window = send_window
        #: receiving -> running -> sending (data held back by flow control) -> gone
        self.state = "receiving"
        self.pending: memoryview | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.reserved = 0
        self.phase_started = time.monotonic()
        self.encoding = "identity"


class _ConnectionError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class H2Protocol(asyncio.Protocol):
    """One HTTP/2 client connection carrying unary gRPC calls."""

    def __init__(self, server: H2Server) -> None:
        self.server = server
        self.service = server.service
        self.limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.preface_ok = False
        self.decoder = Decoder(max_header_list_size=_HPACK_BOMB)
        #: header block of indexed fields only -> (method, path, metadata), valid until a block of
        #: another kind (which may change the table) is decoded; metadata is shared
        #: by the calls of identical blocks and read-only
        self.head_cache: dict[bytes, tuple[str, str, dict[str, str]]] = {}
        self.streams: dict[int, _Stream] = {}
        self.last_stream_id = 0
        self.peer_max_frame = 16384
        self.peer_initial_window = 65535
        self.send_window = 65535
        self.conn_unacked = 0
        self.blocked: deque[_Stream] = deque()  # streams whose response waits for window
        self.headers_sid = 0  # a header block in progress (waiting for CONTINUATION)
        self.headers_block = bytearray()
        self.headers_end_stream = False
        self.headers_started = 0.0
        self.out = bytearray()
        self.flush_scheduled = False
        self.goaway_sent = False
        self.goaway_received = False
        self.closing = False
        self.read_paused = False
        self.write_paused_since: float | None = None
        self.last_active = time.monotonic()

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.server.connections) >= self.server.connection_cap:
            self.server.refused += 1
            self._write_settings()
            self._goaway(ENHANCE_YOUR_CALM, "too many connections; retry later")
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
            self.server.read_pauses += 1

    def resume_writing(self) -> None:
        self.write_paused_since = None
        if self.read_paused and self.transport is not None and not self.closing:
            self.transport.resume_reading()
            self.read_paused = False

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_active = time.monotonic()
        self.buf += data
        try:
            if not self.preface_ok:
                if len(self.buf) < len(PREFACE):
                    if not PREFACE.startswith(bytes(self.buf)):
                        self._not_http2()
                    return
                if not self.buf.startswith(PREFACE):
                    self._not_http2()
                    return
                del self.buf[: len(PREFACE)]
                self.preface_ok = True
                self._write_settings()
                self._write(frame(WINDOW_UPDATE, 0, 0, (_CONN_WINDOW - 65535).to_bytes(4, "big")))
            self._parse()
        except _ConnectionError as e:
            self._goaway(e.code, str(e))
            return
        self._flush()

    def eof_received(self) -> bool | None:
        return None  # a half-closed HTTP/2 connection is done

    # -- framing ----------------------------------------------------------------------------------

    def _parse(self) -> None:
        buf = self.buf
        pos, n = 0, len(buf)
        unpack = FRAME_HEADER.unpack_from
        view = memoryview(buf)  # a payload is one copy out of the buffer (a bytearray slice is one more)
        try:
            while n - pos >= 9 and not self.closing:
                lt, flags, sid = unpack(buf, pos)
                length, ftype = lt >> 8, lt & 0xFF
                sid &= 0x7FFFFFFF
                if length > _MAX_FRAME:
                    raise _ConnectionError(
                        FRAME_SIZE_ERROR, f"a frame of {length} bytes exceeds {_MAX_FRAME}"
                    )
                if n - pos < 9 + length:
                    break
                payload = bytes(view[pos + 9 : pos + 9 + length])
                pos += 9 + length
                if self.headers_sid and ftype != CONTINUATION:
                    raise _ConnectionError(PROTOCOL_ERROR, "a header block was interrupted by another frame")
                if ftype == DATA:
                    self._on_data(sid, flags, payload)
                elif ftype == HEADERS:
                    self._on_headers(sid, flags, payload)
                elif ftype == CONTINUATION:
                    self._on_continuation(sid, flags, payload)
                elif ftype == SETTINGS:
                    self._on_settings(sid, flags, payload)
                elif ftype == PING:
                    if sid or length != 8:
                        raise _ConnectionError(PROTOCOL_ERROR if sid else FRAME_SIZE_ERROR, "bad PING frame")
                    if not flags & ACK:
                        self._write(frame(PING, ACK, 0, payload))
                elif ftype == WINDOW_UPDATE:
                    self._on_window_update(sid, payload)
                elif ftype == RST_STREAM:
                    if not sid or length != 4:
                        raise _ConnectionError(PROTOCOL_ERROR, "bad RST_STREAM frame")
                    st = self.streams.get(sid)
                    if st is not None:
                        self._drop(st, CANCELLED)
                elif ftype == GOAWAY:
                    self.goaway_received = True
                    if not self.streams:
                        self._close()
                elif ftype == PUSH_PROMISE:
                    raise _ConnectionError(PROTOCOL_ERROR, "a client must not send PUSH_PROMISE")
                # PRIORITY and unknown frame types are ignored (RFC 9113 5.5)
        finally:
            view.release()  # before the buffer is resized
        del buf[:pos]

    def _on_settings(self, sid: int, flags: int, payload: bytes) -> None:
        if sid:
            raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise _ConnectionError(FRAME_SIZE_ERROR, "a SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "a SETTINGS frame of a bad length")
        for i in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, i)
            if key == 4:  # INITIAL_WINDOW_SIZE: applies to every open stream (RFC 9113 6.9.2)
                if value > _MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE above 2^31-1")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for st in self.streams.values():
                    st.send_window += delta
            elif key == 5:  # MAX_FRAME_SIZE
                if not 16384 <= value <= 16777215:
                    raise _ConnectionError(PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value} out of range")
                self.peer_max_frame = value
            elif key == 2 and value > 1:
                raise _ConnectionError(PROTOCOL_ERROR, "ENABLE_PUSH must be 0 or 1")
        self._write(frame(SETTINGS, ACK, 0, b""))
        self._send_blocked()

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "a WINDOW_UPDATE of a bad length")
        inc = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if sid == 0:
            if inc == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
            self.send_window += inc
            if self.send_window > _MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "the connection window exceeds 2^31-1")
        else:
            st = self.streams.get(sid)
            if st is None:
                return
            if inc == 0 or st.send_window + inc > _MAX_WINDOW:
                self._reset(st, PROTOCOL_ERROR if inc == 0 else FLOW_CONTROL_ERROR)
                return
            st.send_window += inc
        self._send_blocked()

    def _on_headers(self, sid: int, flags: int, payload: bytes) -> None:
        if sid == 0 or not sid & 1:
            raise _ConnectionError(PROTOCOL_ERROR, f"HEADERS on stream {sid}")
        payload = _unpad(payload, flags)
        if flags & PRIORITY_FLAG:
            payload = payload[5:]
        self.headers_end_stream = bool(flags & END_STREAM)
        if flags & END_HEADERS:
            self._header_block(sid, payload)
        else:
            self.headers_sid = sid
            self.headers_block = bytearray(payload)
            self.headers_started = time.monotonic()

    def _on_continuation(self, sid: int, flags: int, payload: bytes) -> None:
        if sid != self.headers_sid or not sid:
            raise _ConnectionError(PROTOCOL_ERROR, "CONTINUATION without a header block in progress")
        self.headers_block += payload
        if len(self.headers_block) > _MAX_HEADER_BLOCK:
            raise _ConnectionError(ENHANCE_YOUR_CALM, f"a header block exceeds {_MAX_HEADER_BLOCK} bytes")
        if flags & END_HEADERS:
            self.headers_sid = 0
            block, self.headers_block = bytes(self.headers_block), bytearray()
            self._header_block(sid, block)

    def _decode_request_head(self, block: bytes) -> tuple[str, str, dict[str, str]]:
        """(:method, :path, metadata) of a header block. A block of indexed fields only (what
        clients send once their table is warm) leaves the HPACK table as it was, so it decodes the
        same until a block of another kind is decoded: it is looked up, not decoded.

        Raises:
            HpackError: the block cannot be decoded (or decodes past the bomb limit).
            HeaderListTooLarge: it decodes to more than the header list limit.
        """
        hit = self.head_cache.get(block)
        if hit is not None:
            return hit
        try:
            fields = self.decoder.decode(block, raw=True)
        except OversizedHeaderListError:
            raise HpackError(f"a header block decodes to more than {_HPACK_BOMB} bytes") from None
        except (HPACKError, IndexError, TypeError, ValueError) as e:
            raise HpackError(f"cannot decode a header block: {e}") from None
        pseudo: dict[str, str] = {}
        metadata: dict[str, str] = {}
        size = 0
        for raw_name, raw_value in fields:
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            size += len(raw_name) + len(raw_value) + 32
            if name.startswith(":"):
                pseudo[name] = value
            else:
                metadata[name] = f"{metadata[name]},{value}" if name in metadata else value
        if size > _MAX_HEADER_LIST:
            raise HeaderListTooLarge(
                f"the request headers take {size} bytes; the limit is {_MAX_HEADER_LIST}"
            )
        head = (pseudo.get(":method", ""), pseudo.get(":path", ""), metadata)
        # indexed fields only (1xxxxxxx, one-byte indexes): the table is unchanged, the block cacheable
        if all(b > 0x80 and b != 0xFF for b in block):
            if len(self.head_cache) >= 64:
                self.head_cache.clear()
            self.head_cache[block] = head
        else:
            self.head_cache.clear()
        return head

    def _header_block(self, sid: int, block: bytes) -> None:
        try:
            method, path, metadata = self._decode_request_head(block)
            too_large = None
        except HpackError as e:
            raise _ConnectionError(COMPRESSION_ERROR, str(e)) from None
        except HeaderListTooLarge as e:
            method, path, metadata, too_large = "", "", {}, str(e)
        st = self.streams.get(sid)
        if st is not None or sid <= self.last_stream_id:
            # trailers of a request (gRPC clients send none) or frames of a stream we reset
            if st is not None and self.headers_end_stream and st.state == "receiving":
                self._complete(st)
            return
        self.last_stream_id = sid
        if self.goaway_sent or self.goaway_received:
            self._write(frame(RST_STREAM, 0, sid, REFUSED_STREAM.to_bytes(4, "big")))
            return
        if len(self.streams) >= MAX_STREAMS:
            self._write(frame(RST_STREAM, 0, sid, REFUSED_STREAM.to_bytes(4, "big")))
            return
        st = _Stream(sid, self.peer_initial_window)
        self.streams[sid] = st
        if too_large is not None:
            self._answer_error(st, RESOURCE_EXHAUSTED, too_large)
            return
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
        if self.headers_end_stream:
            self._complete(st)

    def _on_data(self, sid: int, flags: int, payload: bytes) -> None:
        if sid == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        self.conn_unacked += len(payload)  # padding counts toward flow control too
        if self.conn_unacked >= _CONN_WINDOW // 2:
            self._write(frame(WINDOW_UPDATE, 0, 0, self.conn_unacked.to_bytes(4, "big")))
            self.conn_unacked = 0
        st = self.streams.get(sid)
        if st is None:
            if sid > self.last_stream_id:
                raise _ConnectionError(PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            return  # a stream we reset or answered early: discard
        if st.state != "receiving":
            return  # answered early (an error): discard the rest of its message
        data = _unpad(payload, flags)
        if data:
            st.recv_unacked += len(payload)
            if not self._accept(st, data):
                return
            if st.recv_unacked >= _STREAM_WINDOW // 2 and not flags & END_STREAM:
                self._write(frame(WINDOW_UPDATE, 0, sid, st.recv_unacked.to_bytes(4, "big")))
                st.recv_unacked = 0
        if flags & END_STREAM:
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

            def done(
                fut: asyncio.Future, st: _Stream = st, finish: Callable[[asyncio.Future], bytes] = finish
            ) -> None:
                self._done(st, fut, finish)

            future.add_done_callback(done)

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

    def _answer(self, st: _Stream, message: bytes) -> None:
        """Headers, the length-prefixed message and OK trailers (held back by flow control if need be)."""
        payload = b"\x00" + len(message).to_bytes(4, "big") + message
        sid = st.id
        self._write(frame(HEADERS, END_HEADERS, sid, _RESPONSE_HEADERS))
        n = len(payload)
        if n <= self.send_window and n <= st.send_window and n <= self.peer_max_frame and not self.blocked:
            self.send_window -= n
            self._write(
                frame(DATA, 0, sid, payload) + frame(HEADERS, END_HEADERS | END_STREAM, sid, _TRAILERS_OK)
            )
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
        block = _status_block(code, message)
        self._write(frame(HEADERS, END_HEADERS | END_STREAM, st.id, block))
        if receiving:
            self._write(frame(RST_STREAM, 0, st.id, NO_ERROR.to_bytes(4, "big")))
        self._close_stream(st, code)

    def _answer_http(self, st: _Stream, status: int, message: str) -> None:
        block = encode_literal(":status", str(status)) + encode_literal("content-type", "text/plain")
        body = message.encode()
        fits = len(body) <= min(self.send_window, st.send_window)
        if fits:
            self.send_window -= len(body)
            self._write(frame(HEADERS, END_HEADERS, st.id, block) + frame(DATA, END_STREAM, st.id, body))
        else:  # no window for the text: the status alone
            self._write(frame(HEADERS, END_HEADERS | END_STREAM, st.id, block))
        if st.state == "receiving":  # the client may stop sending its message (RFC 9113 8.1)
            self._write(frame(RST_STREAM, 0, st.id, NO_ERROR.to_bytes(4, "big")))
        self._close_stream(st, INTERNAL)

    def _send_blocked(self) -> None:
        """Send what the windows allow of the responses waiting for flow control, in order."""
        if not self.blocked:
            return
        still: deque[_Stream] = deque()
        for st in self.blocked:
            if st.id not in self.streams or st.pending is None:
                continue
            while st.pending is not None and self.send_window > 0 and st.send_window > 0:
                n = min(len(st.pending), self.send_window, st.send_window, self.peer_max_frame)
                self._write(frame(DATA, 0, st.id, bytes(st.pending[:n])))
                self.send_window -= n
                st.send_window -= n
                st.pending = st.pending[n:] if n < len(st.pending) else None
            if st.pending is None:
                self._write(frame(HEADERS, END_HEADERS | END_STREAM, st.id, _TRAILERS_OK))
                self._close_stream(st, OK)
            else:
                still.append(st)
        self.blocked = still

    def _reset(self, st: _Stream, code: int) -> None:
        self._write(frame(RST_STREAM, 0, st.id, code.to_bytes(4, "big")))
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

    def _write(self, data: bytes) -> None:
        self.out += data

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.out and self.transport is not None:
            self.transport.write(bytes(self.out))
        self.out.clear()

    def _write_settings(self) -> None:
        settings = struct.pack(
            ">HIHIHIHI",
            2,  # ENABLE_PUSH
            0,
            3,  # MAX_CONCURRENT_STREAMS
            MAX_STREAMS,
            4,  # INITIAL_WINDOW_SIZE
            _STREAM_WINDOW,
            6,  # MAX_HEADER_LIST_SIZE
            _MAX_HEADER_LIST,
        )
        self._write(frame(SETTINGS, 0, 0, settings))

    def _goaway(self, code: int, message: str) -> None:
        """Refuse new streams; with an error, close the connection now."""
        if self.transport is None:
            return
        if not self.goaway_sent:
            self.goaway_sent = True
            payload = struct.pack(">II", self.last_stream_id, code) + message.encode()[:256]
            self._write(frame(GOAWAY, 0, 0, payload))
        if code != NO_ERROR:
            if message:
                log.info("gRPC connection closed: %s", message)
            for st in list(self.streams.values()):
                self._drop(st, CANCELLED)
            self._flush()
            self._close()
        else:
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
        if self.headers_sid and now - self.headers_started >= lim.header_timeout:
            self._goaway(PROTOCOL_ERROR, f"request headers did not arrive within {lim.header_timeout:g} s")
            return
        for st in list(self.streams.values()):
            if st.state == "receiving" and now - st.phase_started >= lim.body_timeout:
                self._answer_error(
                    st, DEADLINE_EXCEEDED, f"the request message did not arrive within {lim.body_timeout:g} s"
                )
            elif st.state == "sending" and now - st.phase_started >= lim.idle_timeout + lim.body_timeout:
                self._reset(st, CANCEL)  # the client gives no window for its answer
        if not self.streams and now - self.last_active >= lim.idle_timeout:
            self._goaway(NO_ERROR, "")
        self._flush()

    def drain(self) -> None:
        """Refuse new streams (GOAWAY), finish the ones in progress, then close."""
        if self.transport is not None and not self.goaway_sent:
            self._goaway(NO_ERROR, "")


def _unpad(payload: bytes, flags: int) -> bytes:
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise _ConnectionError(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - payload[0]]


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
        #: times a connection stopped being read because its answers were not (write buffer full)
        self.read_pauses = 0
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
