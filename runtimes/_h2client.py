"""A minimal HTTP/2 (h2c, prior knowledge) client for unary gRPC calls: the load generator's client.

Requests are pre-encoded frames (one HEADERS with literal fields, one DATA with the length-prefixed
message) sent again and again with new stream ids, as wrk sends pre-encoded HTTP/1.1 requests; the
answers are read frame by frame, their header blocks decoded with HPACK (the server's dynamic table
included), the receive windows replenished, SETTINGS and PINGs acknowledged. A call's outcome is its
``grpc-status``.
"""

from __future__ import annotations

import asyncio
import struct

from torchport.runtimes._errors import ServingError
from torchport.runtimes._h2wire import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER,
    GOAWAY,
    HEADERS,
    INTERNAL,
    PING,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
)
from torchport.runtimes.server._hpack import Decoder, encode_literal

_WINDOW_SIZE = 16 << 20


def request_frames(
    authority: str, path: str, message: bytes, metadata: dict[str, str] | None = None
) -> tuple[bytes, bytes, bytes]:
    """(first HEADERS payload, later HEADERS payload, DATA payload) of a unary gRPC call carrying
    ``message``: the first block adds its fields to the server's HPACK table (literals with
    incremental indexing), later blocks name them by index, as grpc's own clients do."""
    fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *(metadata or {}).items(),
    ]
    first = b"".join(b"\x40" + encode_literal(k, v)[1:] for k, v in fields)
    if sum(len(k) + len(v) + 32 for k, v in fields) > 4096 or len(fields) > 60:
        later = b"".join(encode_literal(k, v) for k, v in fields)  # would not fit the default table
        first = later
    else:  # the newest entry is index 62 (RFC 7541 2.3.3)
        later = bytes(0x80 | (62 + len(fields) - 1 - i) for i in range(len(fields)))
    return first, later, b"\x00" + len(message).to_bytes(4, "big") + message


class GrpcResult:
    """One call's outcome: ``status`` (gRPC code), ``message`` (grpc-message) and the response bytes."""

    __slots__ = ("status", "message", "data")

    def __init__(self) -> None:
        self.status: int | None = None
        self.message = ""
        self.data = bytearray()


class H2Connection(asyncio.Protocol):
    """One client connection; :meth:`call` sends a unary call, the future it returns gives the outcome."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.decoder = Decoder()
        self.next_id = 1
        self.waiting: dict[int, tuple[asyncio.Future, GrpcResult]] = {}
        self.unacked = 0
        self.error: BaseException | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> H2Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(cls, host, port)
        except OSError as e:
            raise ServingError(f"cannot reach grpc://{host}:{port}: {e.strerror or e}") from None
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        settings = struct.pack(">HIHI", 2, 0, 4, _WINDOW_SIZE)  # no push; a large stream window
        # the preface goes first, before anything this connection answers to the server's frames
        self.transport.write(
            PREFACE
            + frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, (_WINDOW_SIZE - 65535).to_bytes(4, "big"))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(ServingError("the server closed the gRPC connection"))

    def call(self, headers: bytes, data: bytes) -> asyncio.Future:
        """Send one call (pre-encoded payloads from :func:`request_frames`); the future gives its
        :class:`GrpcResult`."""
        if self.error is not None or self.transport is None:
            raise ServingError(f"the gRPC connection failed: {self.error}")
        sid = self.next_id
        self.next_id += 2
        fut = asyncio.get_running_loop().create_future()
        self.waiting[sid] = (fut, GrpcResult())
        self.transport.write(frame(HEADERS, END_HEADERS, sid, headers) + frame(DATA, END_STREAM, sid, data))
        return fut

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, n = 0, len(buf)
        view = memoryview(buf)  # a payload is one copy out of the buffer (a bytearray slice is one more)
        try:
            while n - pos >= 9:
                lt, flags, sid = FRAME_HEADER.unpack_from(buf, pos)
                length = lt >> 8
                if n - pos < 9 + length:
                    break
                self._on_frame(lt & 0xFF, flags, sid & 0x7FFFFFFF, bytes(view[pos + 9 : pos + 9 + length]))
                pos += 9 + length
        except Exception as e:  # a protocol error: surfaces to the waiting calls
            self._fail(e)
            if self.transport is not None:
                self.transport.close()
        finally:
            view.release()  # before the buffer is resized
        del buf[:pos]

    def _on_frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if ftype == DATA:
            self.unacked += len(payload)
            if self.unacked >= _WINDOW_SIZE // 4:  # both windows: every stream is short-lived
                inc = self.unacked.to_bytes(4, "big")
                self.transport.write(
                    frame(WINDOW_UPDATE, 0, 0, inc)
                    + (frame(WINDOW_UPDATE, 0, sid, inc) if sid in self.waiting else b"")
                )
                self.unacked = 0
            entry = self.waiting.get(sid)
            if entry is not None:
                entry[1].data += payload
        elif ftype in (HEADERS, CONTINUATION):
            fields = self.decoder.decode(payload)  # gRPC servers send short blocks: no CONTINUATION here
            entry = self.waiting.get(sid)
            if entry is not None:
                for name, value in fields:
                    if name == "grpc-status":
                        entry[1].status = int(value)
                    elif name == "grpc-message":
                        entry[1].message = value
                if flags & END_STREAM:
                    self._finish(sid)
        elif ftype == RST_STREAM:
            entry = self.waiting.get(sid)
            if entry is not None and entry[1].status is None:
                entry[1].status = INTERNAL
                entry[1].message = f"stream reset (error {int.from_bytes(payload, 'big')})"
            self._finish(sid)
        elif ftype == SETTINGS and not flags & ACK:
            self.transport.write(frame(SETTINGS, ACK, 0, b""))
        elif ftype == PING and not flags & ACK:
            self.transport.write(frame(PING, ACK, 0, payload))
        elif ftype == GOAWAY:  # calls above the last stream the server takes will not be answered
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            self.error = ServingError(f"the server sent GOAWAY: {payload[8:].decode(errors='replace')}")
            for sid in [s for s in self.waiting if s > last]:
                fut = self.waiting.pop(sid)[0]
                if not fut.done():
                    fut.set_exception(self.error)

    def _finish(self, sid: int) -> None:
        entry = self.waiting.pop(sid, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result(entry[1])

    def _fail(self, error: BaseException) -> None:
        self.error = error
        for fut, _ in self.waiting.values():
            if not fut.done():
                fut.set_exception(error)
        self.waiting.clear()

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
