"""The gRPC port (our HTTP/2 server) against hostile and broken clients, over raw sockets.

Each test checks what the client sees (GOAWAY with the right error code, a gRPC status in the
trailers, a reset stream) and that the server keeps serving well-behaved clients afterwards.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time

import numpy as np
import pytest

tg = pytest.importorskip("tritonclient.grpc")

from hpack import Decoder, Encoder  # noqa: E402

from tests.reliability._net import API_KEY, wait_closed  # noqa: E402
from tests.runtimes.conftest import running_server  # noqa: E402
from torchport.runtimes._h2client import grpc_frame, request_headers  # noqa: E402
from torchport.runtimes.server._grpc_messages import MESSAGES  # noqa: E402

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    """One HTTP/2 frame as the bytes on the wire (RFC 9113 4.1), written by hand on purpose."""
    return struct.pack(">IBI", (len(payload) << 8) | ftype, flags, sid) + payload


def request_frames(
    authority: str, path: str, message: bytes, metadata: dict[str, str] | None = None
) -> tuple[bytes, bytes, bytes]:
    """(first HEADERS payload, later HEADERS payload, DATA payload) of a unary call: the first block
    adds its fields to the server's HPACK table, later blocks name them by index."""
    encoder = Encoder()
    fields = request_headers(authority, path, metadata)
    return encoder.encode(fields), encoder.encode(fields), grpc_frame(message)


def encode_literal(name: str, value: str) -> bytes:
    """One header field as an HPACK literal without indexing (RFC 7541 6.2.2; short strings)."""
    n, v = name.encode(), value.encode()
    assert len(n) < 127 and len(v) < 127
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


_DATA, _HEADERS, _RST, _SETTINGS, _PUSH, _GOAWAY, _WINDOW, _CONT = 0, 1, 3, 4, 5, 7, 8, 9
_INFER = "/inference.GRPCInferenceService/ModelInfer"


class RawH2:
    """A raw HTTP/2 client socket: sends bytes as given, reads frames back."""

    def __init__(self, port: int, *, window: int | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.decoder = Decoder()
        settings = b"" if window is None else struct.pack(">HI", 4, window)
        self.sock.sendall(PREFACE + frame(_SETTINGS, 0, 0, settings))
        if window is not None:
            self.sock.sendall(frame(_WINDOW, 0, 0, (window - 65535).to_bytes(4, "big")))

    def read_until(self, want, timeout: float = 10.0) -> list[tuple[int, int, int, bytes]]:
        """Frames read until ``want(frame)`` is true (or the connection closes)."""
        self.sock.settimeout(timeout)
        frames = []
        while True:
            while len(self.buf) >= 9:
                lt, flags, sid = struct.unpack(">IBI", self.buf[:9])
                n = lt >> 8
                if len(self.buf) < 9 + n:
                    break
                f = (lt & 0xFF, flags, sid, self.buf[9 : 9 + n])
                self.buf = self.buf[9 + n :]
                frames.append(f)
                if want(f):
                    return frames
            chunk = self.sock.recv(65536)
            if not chunk:
                return frames
            self.buf += chunk

    def status(self, frames, sid: int) -> tuple[int, str]:
        """(grpc-status, grpc-message) from the header blocks of stream ``sid``."""
        fields = {}
        for ftype, _, s, payload in frames:
            if ftype == _HEADERS:
                block = dict(self.decoder.decode(payload))
                if s == sid:
                    fields.update(block)
        return int(fields["grpc-status"]), fields.get("grpc-message", "")


def _goaway_code(frames) -> int | None:
    for ftype, _, _, payload in frames:
        if ftype == _GOAWAY:
            return int.from_bytes(payload[4:8], "big")
    return None


def _infer_message(model: str = "add", rows: int = 1) -> bytes:
    x = np.ones((rows, 4), np.float32)
    return (
        MESSAGES["ModelInferRequest"](
            model_name=model,
            inputs=[MESSAGES["InferInputTensor"](name="x", datatype="FP32", shape=[rows, 4])],
            raw_input_contents=[x.tobytes()],
        )
    ).SerializeToString()


def _still_serves(srv) -> None:
    c = tg.InferenceServerClient(srv.grpc_url)
    inp = tg.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.ones((1, 4), np.float32))
    np.testing.assert_array_equal(c.infer("add", [inp]).as_numpy("z"), np.full((1, 4), 2, np.float32))
    c.close()


@pytest.fixture(scope="module")
def grpc_server(repo):
    with running_server(repo, grpc_port=0, max_batch_size=8) as srv:
        yield srv


def test_an_http1_request_gets_a_readable_400(grpc_server):
    s = socket.create_connection(("127.0.0.1", grpc_server.grpc_port), timeout=5)
    s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
    data = s.recv(4096)
    assert data.startswith(b"HTTP/1.1 400 ") and b"this port serves gRPC (HTTP/2" in data
    assert wait_closed(s)


@pytest.mark.parametrize(
    "frames, code",
    [
        (struct.pack(">IBI", 20000 << 8 | _DATA, 0, 1), 6),  # a frame over 16384 bytes: FRAME_SIZE_ERROR
        (frame(_HEADERS, 0x4, 1, b"\xbf"), 9),  # an index past both tables: COMPRESSION_ERROR
        (frame(_CONT, 0x4, 1, b"\x82"), 1),  # CONTINUATION with no header block open
        (frame(_PUSH, 0, 1, b"\x00\x00\x00\x02"), 1),
        (frame(_HEADERS, 0x4, 2, b"\x83"), 1),  # a client stream id must be odd
        (frame(_SETTINGS, 0, 0, b"\x00\x04\x00"), 6),
        (frame(_HEADERS, 0, 1, b"\x83") + frame(_DATA, 0, 1, b"x"), 1),  # a header block interrupted
        (frame(_WINDOW, 0, 0, b"\x00\x00\x00\x00"), 1),
    ],
    ids=[
        "oversized",
        "hpack",
        "continuation",
        "push",
        "even-stream",
        "settings-length",
        "interrupted",
        "window-0",
    ],
)
def test_protocol_violations_end_the_connection_with_goaway(grpc_server, frames, code):
    c = RawH2(grpc_server.grpc_port)
    c.sock.sendall(frames)
    got = c.read_until(lambda f: f[0] == _GOAWAY)
    assert _goaway_code(got) == code
    assert wait_closed(c.sock)
    _still_serves(grpc_server)


def test_random_garbage_after_the_preface_leaves_nothing_behind(grpc_server):
    rng = random.Random(8)
    socks = []
    for _ in range(60):
        s = socket.create_connection(("127.0.0.1", grpc_server.grpc_port), timeout=5)
        s.sendall(PREFACE + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))))
        socks.append(s)
    for s in socks[::2]:
        s.close()  # half of them vanish at once, the others stay open and silent
    _still_serves(grpc_server)
    for s in socks[1::2]:
        s.close()
    h2 = grpc_server.grpc._h2
    deadline = time.monotonic() + 10
    while h2.connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not h2.connections and h2.inflight == 0
    assert grpc_server.http.body_bytes == 0


def test_a_message_over_the_limit_is_refused_from_its_length_prefix(repo):
    with running_server(repo, grpc_port=0, max_request_bytes=4096) as srv:
        c = RawH2(srv.grpc_port)
        block, _, _ = request_frames("t", _INFER, b"")
        head = b"\x00" + (50_000_000).to_bytes(4, "big") + b"\x00" * 100  # declares 50 MB, sends 105 B
        c.sock.sendall(frame(_HEADERS, 0x4, 1, block) + frame(_DATA, 0, 1, head))
        got = c.read_until(lambda f: f[0] == _RST and f[2] == 1)
        code, message = c.status(got, 1)
        assert code == 8 and "Received message larger than max (50000000 vs." in message
        assert int.from_bytes(got[-1][3], "big") == 0  # RST_STREAM(NO_ERROR): stop sending
        _still_serves(srv)


def test_an_unauthenticated_call_is_answered_from_its_headers(repo, monkeypatch):
    monkeypatch.setenv("TP_GRPC_RAW_KEY", API_KEY)
    with running_server(repo, grpc_port=0, api_key_env="TP_GRPC_RAW_KEY") as srv:
        c = RawH2(srv.grpc_port)
        block, _, _ = request_frames("t", _INFER, b"")
        c.sock.sendall(frame(_HEADERS, 0x4, 1, block))  # no message yet, no END_STREAM
        got = c.read_until(lambda f: f[0] == _RST and f[2] == 1)
        code, message = c.status(got, 1)
        assert code == 16 and "missing or wrong API key" in message
        first, _, data = request_frames("t", _INFER, _infer_message(), {"authorization": f"Bearer {API_KEY}"})
        c.sock.sendall(frame(_HEADERS, 0x4, 3, first) + frame(_DATA, 0x1, 3, data))
        got = c.read_until(lambda f: f[0] == _HEADERS and f[1] & 0x1 and f[2] == 3)
        assert c.status(got, 3) == (0, "")


def test_grpc_timeout_is_enforced_by_the_server(repo):
    # a lone request waits up to 5 s for its batch: the deadline of 300 ms comes first
    with running_server(repo, grpc_port=0, max_batch_size=8, max_queue_delay_ms=5000) as srv:
        c = RawH2(srv.grpc_port)
        first, _, data = request_frames("t", _INFER, _infer_message(), {"grpc-timeout": "300m"})
        t0 = time.monotonic()
        c.sock.sendall(frame(_HEADERS, 0x4, 1, first) + frame(_DATA, 0x1, 1, data))
        got = c.read_until(lambda f: f[0] == _HEADERS and f[1] & 0x1)
        assert c.status(got, 1) == (4, "Deadline Exceeded")
        assert 0.25 <= time.monotonic() - t0 < 3
        client = tg.InferenceServerClient(srv.grpc_url)
        inp = tg.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(np.ones((1, 4), np.float32))
        with pytest.raises(Exception, match="Deadline Exceeded"):
            client.infer("add", [inp], client_timeout=0.3)
        client.close()


def test_too_many_concurrent_streams_are_refused(grpc_server):
    c = RawH2(grpc_server.grpc_port)
    block, _, _ = request_frames("t", _INFER, b"")
    # 129 calls whose messages never come: the 129th is over MAX_CONCURRENT_STREAMS (128)
    c.sock.sendall(b"".join(frame(_HEADERS, 0x4, 2 * i + 1, block) for i in range(129)))
    got = c.read_until(lambda f: f[0] == _RST)
    assert got[-1][2] == 257 and int.from_bytes(got[-1][3], "big") == 7  # REFUSED_STREAM
    c.sock.close()
    _still_serves(grpc_server)


def test_a_client_that_never_reads_is_dropped_and_holds_no_budget(repo):
    with running_server(repo, grpc_port=0, idle_timeout=1.0, max_batch_size=1) as srv:
        # a huge window (so the server writes), then requests for 256 KiB answers, never read
        c = RawH2(srv.grpc_port, window=(1 << 31) - 1)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        blob = b"z" * (256 * 1024)
        message = MESSAGES["ModelInferRequest"](
            model_name="bag",
            inputs=[MESSAGES["InferInputTensor"](name="s", datatype="BYTES", shape=[1])],
            raw_input_contents=[len(blob).to_bytes(4, "little") + blob],
        ).SerializeToString()
        first, later, data = request_frames("t", _INFER, message)
        h2 = srv.grpc._h2
        # the server side: did it pause reading this connection? A count, not the pause itself (it
        # lasts only the idle timeout, a window a loaded machine's polling can miss)
        pauses = h2.read_pauses

        def paused() -> bool:
            return h2.read_pauses > pauses

        deadline = time.monotonic() + 10  # accepted: a loaded server may take a while
        while not h2.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        (conn,) = h2.connections  # ours (a connection not yet accepted is not a dropped one)
        c.sock.settimeout(2)
        try:
            for i in range(64):
                sid = 2 * i + 1
                payload = frame(_HEADERS, 0x4, sid, first if i == 0 else later)
                for k in range(0, len(data), 16384):
                    flags = 0x1 if k + 16384 >= len(data) else 0
                    payload += frame(_DATA, flags, sid, data[k : k + 16384])
                c.sock.sendall(payload)
                # one request at a time: wait until it is answered (its stream is gone), so a slow
                # (loaded) server cannot read far ahead of its own answers
                deadline = time.monotonic() + 10
                while not paused() and time.monotonic() < deadline:
                    if conn not in h2.connections or (conn.last_stream_id >= sid and sid not in conn.streams):
                        break
                    time.sleep(0.01)
                if paused() or conn not in h2.connections:
                    break
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            pass  # the server stopped reading (its answers are not being read), then dropped us
        deadline = time.monotonic() + 10  # a loaded server may get there after the last request
        while not paused() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert paused(), "the server kept reading although its answers were never read"
        _still_serves(srv)
        deadline = time.monotonic() + 10
        while h2.connections and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not h2.connections, "the connection that never reads was not dropped"
        assert srv.http.body_bytes == 0
        c.sock.close()


@pytest.mark.parametrize(
    "fields, status",
    [
        ([(":method", "GET"), (":path", _INFER), ("content-type", "application/grpc")], "405"),
        ([(":method", "POST"), (":path", _INFER), ("content-type", "application/json")], "415"),
    ],
)
def test_requests_that_are_not_grpc_get_an_http_status(grpc_server, fields, status):
    c = RawH2(grpc_server.grpc_port)
    block = b"".join(encode_literal(k, v) for k, v in fields)
    c.sock.sendall(frame(_HEADERS, 0x5, 1, block))
    got = c.read_until(lambda f: f[0] in (_DATA, _HEADERS) and f[1] & 0x1)
    head = dict(c.decoder.decode(next(p for t, _, _, p in got if t == _HEADERS)))
    assert head[":status"] == status


def test_unknown_rpcs_and_bad_messages_get_grpc_statuses(grpc_server):
    c = RawH2(grpc_server.grpc_port)
    for sid, path, message, want in (
        (1, "/inference.GRPCInferenceService/Nope", b"", (12, "Method not found")),
        (3, _INFER, b"\xff\xff\xff", (3, "cannot parse the ModelInferRequest message")),
    ):
        first, _, data = request_frames("t", path, message)
        c.sock.sendall(frame(_HEADERS, 0x4, sid, first) + frame(_DATA, 0x1, sid, data))
        got = c.read_until(lambda f, sid=sid: f[0] == _HEADERS and f[1] & 0x1 and f[2] == sid)
        code, text = c.status(got, sid)
        assert code == want[0] and want[1] in text
    # a message split over many DATA frames with padding, then a compressed one (gzip)
    import gzip

    first, _, data = request_frames("t", _INFER, b"", {"grpc-encoding": "gzip"})
    packed = gzip.compress(_infer_message(rows=3))
    body = b"\x01" + len(packed).to_bytes(4, "big") + packed
    c.sock.sendall(frame(_HEADERS, 0x4, 5, first))
    for k in range(0, len(body), 7):
        chunk = body[k : k + 7]
        flags = 0x8 | (0x1 if k + 7 >= len(body) else 0)
        c.sock.sendall(frame(_DATA, flags, 5, bytes([2]) + chunk + b"\x00\x00"))
    got = c.read_until(lambda f: f[0] == _HEADERS and f[1] & 0x1 and f[2] == 5)
    assert c.status(got, 5) == (0, "")
    answer = b"".join(p for t, _, s, p in got if t == _DATA and s == 5)
    response = MESSAGES["ModelInferResponse"].FromString(answer[5:])
    assert {o.name: list(o.shape) for o in response.outputs}["z"] == [3, 4]


def test_large_messages_flow_both_ways_under_flow_control(grpc_server):
    """Answers of MBs go out as the client's windows open (several at once, interleaved)."""
    import threading

    c = tg.InferenceServerClient(grpc_server.grpc_url)
    blobs = [bytes([65 + i]) * (3 * 1024 * 1024 + i) for i in range(4)]
    results: list = [None] * len(blobs)
    done = threading.Event()

    def callback(i):
        def inner(result, error):
            results[i] = error or result
            if all(r is not None for r in results):
                done.set()

        return inner

    for i, blob in enumerate(blobs):
        inp = tg.InferInput("s", [1], "BYTES")
        inp.set_data_from_numpy(np.array([blob], dtype=object))
        c.async_infer("bag", [inp], callback=callback(i))
    assert done.wait(60)
    for blob, r in zip(blobs, results, strict=True):
        assert r.as_numpy("out")[0] == blob
    c.close()


def test_drain_sends_goaway_and_still_answers_the_call_in_progress(repo):
    """Graceful shutdown: GOAWAY(NO_ERROR) naming the last stream taken, then that call's answer."""
    with running_server(repo, grpc_port=0, max_batch_size=8, max_queue_delay_ms=1500) as srv:
        c = RawH2(srv.grpc_port)
        first, _, data = request_frames("t", _INFER, _infer_message())
        c.sock.sendall(frame(_HEADERS, 0x4, 1, first) + frame(_DATA, 0x1, 1, data))
        deadline = time.monotonic() + 10
        while srv.grpc.inflight == 0 and time.monotonic() < deadline:  # the call waits for its batch
            time.sleep(0.005)
        assert srv.grpc.inflight == 1
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        got = c.read_until(lambda f: f[0] == _HEADERS and f[1] & 0x1 and f[2] == 1, timeout=20)
        stopper.join(30)
        types = [t for t, *_ in got]
        assert _GOAWAY in types and types.index(_GOAWAY) < len(got) - 1  # GOAWAY first, then the answer
        goaway = got[types.index(_GOAWAY)][3]
        assert int.from_bytes(goaway[:4], "big") == 1 and _goaway_code(got) == 0
        assert c.status(got, 1) == (0, "")
        assert wait_closed(c.sock)


def _header_frames(sid: int, block: bytes) -> bytes:
    """``block`` as HEADERS + CONTINUATION frames of at most 16384 bytes."""
    chunks = [block[k : k + 16384] for k in range(0, len(block), 16384)]
    out = b""
    for i, chunk in enumerate(chunks):
        flags = 0x4 if i == len(chunks) - 1 else 0
        out += frame(_HEADERS if i == 0 else _CONT, flags, sid, chunk)
    return out


def test_a_header_list_over_the_limit_is_refused_on_its_stream(grpc_server):
    """20 KB of metadata (over the 16 KiB header list limit): RESOURCE_EXHAUSTED, connection kept."""
    from hpack import NeverIndexedHeaderTuple

    c = RawH2(grpc_server.grpc_port)
    fields = [*request_headers("t", _INFER), NeverIndexedHeaderTuple(b"x-big", b"v" * 20_000)]
    c.sock.sendall(_header_frames(1, Encoder().encode(fields, huffman=False)))
    got = c.read_until(lambda f: f[0] == _HEADERS and f[1] & 0x1 and f[2] == 1)
    code, message = c.status(got, 1)
    assert code == 8 and "the request headers take" in message and "the limit is 16384" in message
    first, _, data = request_frames("t", _INFER, _infer_message())
    c.sock.sendall(frame(_HEADERS, 0x4, 3, first) + frame(_DATA, 0x1, 3, data))
    got = c.read_until(lambda f: f[0] == _HEADERS and f[1] & 0x1 and f[2] == 3)
    assert c.status(got, 3) == (0, "")


def test_an_hpack_bomb_ends_the_connection(grpc_server):
    """A 4 KB table entry named 30 times by one-byte indexes (120 KB decoded from 30 bytes)."""
    c = RawH2(grpc_server.grpc_port)
    encoder = Encoder()
    first = encoder.encode([*request_headers("t", _INFER), (b"x-fill", b"f" * 3900)], huffman=False)
    c.sock.sendall(frame(_HEADERS, 0x5, 1, first))  # the entry goes into the server's table
    c.read_until(lambda f: f[0] in (_HEADERS, _DATA) and f[1] & 0x1 and f[2] == 1)
    bomb = bytes([0x80 | 62]) * 30  # index 62: the newest dynamic entry, x-fill
    c.sock.sendall(frame(_HEADERS, 0x5, 3, bomb))
    got = c.read_until(lambda f: f[0] == _GOAWAY)
    assert _goaway_code(got) == 9  # COMPRESSION_ERROR
    assert wait_closed(c.sock)
    _still_serves(grpc_server)
