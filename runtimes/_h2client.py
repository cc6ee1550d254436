"""An HTTP/2 (h2c, prior knowledge) client for unary gRPC calls: the load generator's client.

The ``h2`` library (sans-IO) inside an asyncio.Protocol: a call is its header fields (built once by
:func:`request_headers`; h2's HPACK encoder indexes them, so later calls send a few bytes of
indexes, as grpc's own clients do) and its length-prefixed message (:func:`grpc_frame`); the
answers' windows are replenished and SETTINGS / PINGs acknowledged by h2. Frames written in one
loop iteration go out in one write. A call's outcome is its ``grpc-status``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection as _H2
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes, Settings
from hpack import Decoder, Encoder
from hpack.table import HeaderTable

from torchport.runtimes._errors import ServingError
from torchport.runtimes._grpc_status import INTERNAL

_WINDOW_SIZE = 16 << 20
_CONFIG = H2Configuration(
    client_side=True,
    header_encoding=None,
    validate_outbound_headers=False,  # the fields are built here
    normalize_outbound_headers=False,
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
)

Headers = list[tuple[bytes, bytes]]


def _table_state(table: HeaderTable) -> tuple[int, object, int, bool]:
    """What an HPACK block's meaning depends on: the dynamic table's length, its newest entry (by
    identity: every insertion makes a new tuple, and the caller holds the old one), its size limit
    and whether a size change is still to be signalled."""
    entries = table.dynamic_entries
    return len(entries), entries[0] if entries else None, table.maxsize, table.resized


def _same_table(a: tuple[int, object, int, bool], b: tuple[int, object, int, bool]) -> bool:
    return a[0] == b[0] and a[1] is b[1] and a[2] == b[2] and a[3] == b[3]


class _BlockEncoder(Encoder):
    """hpack's encoder, remembering the blocks it made that left its table as it was (all fields
    indexed or sent without indexing): the same fields encode to the same bytes while the table
    stays unchanged, so a call's block is encoded once, not per call (hpack's encoding of six
    fields is tens of microseconds of Python). Any block that changes the table, or a table
    resize, forgets them all."""

    def __init__(self) -> None:
        super().__init__()
        self._blocks: dict[tuple, bytes] = {}
        self._state = _table_state(self.header_table)

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        key = tuple(headers) if isinstance(headers, list) else None
        now = _table_state(self.header_table)
        if not _same_table(now, self._state):
            self._blocks.clear()
            self._state = now
        elif key is not None and (block := self._blocks.get(key)) is not None:
            return block
        block = super().encode(headers, huffman)
        after = _table_state(self.header_table)
        if not _same_table(after, now):
            self._blocks.clear()
            self._state = after
        elif key is not None:
            self._blocks[key] = block
        return block


class _BlockDecoder(Decoder):
    """hpack's decoder, remembering the fields of blocks whose decoding left its table as it was:
    while the table (and the header list limit) stay unchanged, the same bytes decode to the same
    fields, so a server's repeated response headers and trailers are decoded once. A block that
    changes the table forgets them all; a block that fails is never remembered."""

    def __init__(self) -> None:
        super().__init__()
        self._fields: dict[bytes, list] = {}
        self._state = (_table_state(self.header_table), self.max_header_list_size)

    def decode(self, data: bytes, raw: bool = False) -> Any:
        now = (_table_state(self.header_table), self.max_header_list_size)
        if not (_same_table(now[0], self._state[0]) and now[1] == self._state[1]):
            self._fields.clear()
            self._state = now
        key = (bytes(data), raw)
        fields = self._fields.get(key)  # type: ignore[call-overload]
        if fields is not None:
            return list(fields)
        fields = super().decode(data, raw)
        if _same_table(_table_state(self.header_table), now[0]):
            self._fields[key] = list(fields)  # type: ignore[index]
        else:
            self._fields.clear()
            self._state = (_table_state(self.header_table), self.max_header_list_size)
        return fields


def request_headers(authority: str, path: str, metadata: dict[str, str] | None = None) -> Headers:
    """The header fields of a unary gRPC call to ``path``."""
    fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *(metadata or {}).items(),
    ]
    return [(k.encode(), v.encode()) for k, v in fields]


def grpc_frame(message: bytes) -> bytes:
    """``message`` length-prefixed (uncompressed), as a gRPC request body carries it."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


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
        self.conn = _H2(config=_CONFIG)
        limit = self.conn.decoder.max_header_list_size
        self.conn.encoder, self.conn.decoder = _BlockEncoder(), _BlockDecoder()
        self.conn.decoder.max_header_list_size = limit
        self.conn.local_settings = Settings(
            client=True,
            initial_values={SettingCodes.ENABLE_PUSH: 0, SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW_SIZE},
        )
        self.waiting: dict[int, tuple[asyncio.Future, GrpcResult]] = {}
        #: request bytes waiting for window: stream id -> the rest of its body
        self.unsent: dict[int, memoryview] = {}
        self.error: BaseException | None = None
        self.flush_scheduled = False

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
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(_WINDOW_SIZE - 65535)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(ServingError("the server closed the gRPC connection"))

    def call(self, headers: Headers, data: bytes) -> asyncio.Future:
        """Send one call (``headers`` from :func:`request_headers`, ``data`` from :func:`grpc_frame`);
        the future gives its :class:`GrpcResult`."""
        if self.error is not None or self.transport is None:
            raise ServingError(f"the gRPC connection failed: {self.error}")
        conn = self.conn
        try:
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, headers)
        except H2Error as e:
            raise ServingError(f"cannot start a gRPC call: {e}") from None
        fut = asyncio.get_running_loop().create_future()
        self.waiting[sid] = (fut, GrpcResult())
        if not self.unsent and len(data) <= min(
            conn.local_flow_control_window(sid), conn.max_outbound_frame_size
        ):
            conn.send_data(sid, data, end_stream=True)  # the usual case: one DATA frame, no copy
        else:
            self.unsent[sid] = memoryview(data)
            self._send_body(sid)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return fut

    def _send_body(self, sid: int) -> None:
        """Send what the windows allow of stream ``sid``'s request body (END_STREAM with its last byte)."""
        conn = self.conn
        rest = self.unsent[sid]
        while True:
            n = min(len(rest), conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if n < len(rest) and n <= 0:
                break
            conn.send_data(sid, bytes(rest[:n]), end_stream=n == len(rest))
            rest = rest[n:]
            if not rest:
                del self.unsent[sid]
                return
        self.unsent[sid] = rest

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
            for event in events:
                self._event(event)
        except H2Error as e:  # a protocol error: surfaces to the waiting calls
            self._fail(ServingError(f"gRPC protocol error: {e}"))
            self._flush()
            if self.transport is not None:
                self.transport.close()
            return
        self._flush()

    def _event(self, event: Any) -> None:
        cls = type(event)
        if cls is DataReceived:
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            entry = self.waiting.get(event.stream_id)
            if entry is not None:
                entry[1].data += event.data
        elif cls is ResponseReceived or cls is TrailersReceived:
            entry = self.waiting.get(event.stream_id)
            if entry is not None:
                for name, value in event.headers:
                    if name == b"grpc-status":
                        entry[1].status = int(value)
                    elif name == b"grpc-message":
                        entry[1].message = value.decode("utf-8", "replace")
        elif cls is StreamEnded:
            self._finish(event.stream_id)
        elif cls is StreamReset:
            entry = self.waiting.get(event.stream_id)
            if entry is not None and entry[1].status is None:
                entry[1].status = INTERNAL
                entry[1].message = f"stream reset (error {int(event.error_code)})"
            self.unsent.pop(event.stream_id, None)
            self._finish(event.stream_id)
        elif cls is WindowUpdated or cls is RemoteSettingsChanged:
            for sid in list(self.unsent):
                self._send_body(sid)
        elif cls is ConnectionTerminated:  # calls above the last stream the server takes will not be answered
            text = (event.additional_data or b"").decode(errors="replace")
            self.error = ServingError(f"the server sent GOAWAY: {text}")
            last = event.last_stream_id or 0
            for sid in [s for s in self.waiting if s > last]:
                fut = self.waiting.pop(sid)[0]
                if not fut.done():
                    fut.set_exception(self.error)

    def _flush(self) -> None:
        self.flush_scheduled = False
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

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
