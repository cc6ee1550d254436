"""One client must not starve or exhaust the server: fairness, backpressure, size limits, deadlines, caps.

Each test runs a real server on loopback and plays one hostile or careless client against it; each
is bounded in time (seconds) and in bytes (a few MiB).
"""

from __future__ import annotations

import select
import socket
import threading
import time

import pytest

from tests.reliability._net import (
    API_KEY,
    exchange,
    get,
    post,
    read_response,
    serve_process,
)
from tests.runtimes.conftest import running_server

META = b"GET /v2/models/add HTTP/1.1\r\nHost: t\r\n\r\n"


def test_a_pipelining_flooder_does_not_starve_health_pings(repo):
    """A server in its own process; one connection pipelines metadata GETs (reading the answers)."""
    with serve_process(repo / "add", "--threads", "1") as srv:
        stop = threading.Event()
        answered = [0]

        def flood() -> None:
            with socket.create_connection(("127.0.0.1", srv.port)) as s:
                s.settimeout(0.2)

                def drain() -> None:
                    while not stop.is_set():
                        try:
                            chunk = s.recv(1 << 20)
                        except OSError:
                            continue
                        if not chunk:
                            return
                        answered[0] += chunk.count(b"HTTP/1.1 200")

                reader = threading.Thread(target=drain, daemon=True)
                reader.start()
                batch = META * 4000
                while not stop.is_set():
                    try:
                        s.sendall(batch)
                    except OSError:
                        break
                reader.join(2)

        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        latencies = []
        try:
            time.sleep(1.0)
            for _ in range(10):
                t0 = time.perf_counter()
                try:
                    status = exchange(srv.port, get("/v2/health/live"), timeout=3.0)[0]
                except OSError:
                    status = 0
                latencies.append((status, round(time.perf_counter() - t0, 3)))
                time.sleep(0.05)
        finally:
            stop.set()
            flooder.join(5)
    assert answered[0] > 1000  # the flooder was being served meanwhile
    assert all(status == 200 and seconds < 1.0 for status, seconds in latencies), latencies


def test_a_client_that_never_reads_gets_no_more_than_a_buffer_of_answers(server):
    """The server stops reading from a client whose answers pile up, so its memory stays bounded."""
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.setblocking(False)
        batch = META * 2000  # each ~40-byte request gets a ~600-byte answer
        deadline = time.monotonic() + 4.0
        stalled_since = None
        while time.monotonic() < deadline and sent < 64 * 1024 * 1024:
            try:
                sent += s.send(batch)
                stalled_since = None
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 1.0:
                    break  # the server stopped reading: backpressure reached the client
                time.sleep(0.01)
        conns = list(server.http.connections)
        buffered = max(c.transport.get_write_buffer_size() for c in conns if c.transport is not None)
        queued = max(len(c.queue) for c in conns)
    assert stalled_since is not None, f"the server kept reading: {sent} bytes accepted"
    assert buffered < 1024 * 1024, f"{buffered} bytes of answers held for a client that does not read"
    assert queued < 500  # at most one 16 KiB slice of requests parsed ahead
    assert exchange(server.port, get("/v2/health/live"))[0] == 200


@pytest.mark.parametrize(
    "raw, status, message",
    [
        (
            b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n",
            431,
            "exceed 65536 bytes",
        ),
        (
            b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n" + b"X-A: b\r\n" * 101 + b"\r\n",
            431,
            "more than 100 header",
        ),
        (b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n" + b"X-A: b\r\n" * 200_000 + b"\r\n", 431, "header"),
        (
            b"GET /v2/health/live?" + b"a" * (16 << 20) + b" HTTP/1.1\r\nHost: t\r\n\r\n",
            414,
            "exceeds 8192 bytes",
        ),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414, "request URL exceeds"),
    ],
    ids=["1MiB-header", "101-headers", "200k-headers", "16MiB-url", "9KB-path"],
)
def test_oversized_heads_are_refused_while_parsing(server, raw, status, message):
    got, headers, body = exchange(server.port, raw)
    assert got == status, body
    assert message in body.decode()
    assert headers["connection"] == "close"


def test_large_but_legal_heads_still_work(server):
    raw = (
        b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nX-Big: "
        + b"a" * 60_000
        + b"\r\n"
        + b"X-A: b\r\n" * 90
        + b"\r\n"
    )
    assert exchange(server.port, raw)[0] == 200


def test_connections_beyond_the_cap_get_503(repo):
    with running_server(repo / "add", max_connections=4) as srv:
        held = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(4)]
        try:
            time.sleep(0.2)
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as extra:
                status, headers, body = read_response(extra)
            assert status == 503 and headers["connection"] == "close"
            assert b"4 open connections" in body
            held.pop().close()
            time.sleep(0.2)
            assert exchange(srv.port, get("/v2/health/live"))[0] == 200
        finally:
            for s in held:
                s.close()


def test_slowloris_headers_and_bodies_hit_their_deadlines_but_idle_keep_alive_does_not(repo):
    with running_server(repo / "add", header_timeout=0.6, body_timeout=0.6, idle_timeout=30) as srv:
        # headers trickled one byte every 0.1 s: the idle timer never fires, the header deadline does
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            t0 = time.monotonic()
            while not select.select([s], [], [], 0.1)[0] and time.monotonic() - t0 < 5:
                s.sendall(b"a")
            status, headers, body = read_response(s)
            assert status == 408 and b"request headers did not arrive within 0.6 s" in body
            assert time.monotonic() - t0 < 3
        # a body trickled after its headers
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            s.sendall(b"POST /v2/models/add/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{")
            status, _, body = read_response(s)
            assert status == 408 and b"request body did not arrive within 0.6 s" in body
        # a keep-alive connection silent between requests for longer than the deadlines stays usable
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            s.sendall(get("/v2/health/live"))
            assert read_response(s)[0] == 200
            time.sleep(1.5)
            s.sendall(get("/v2/health/live"))
            assert read_response(s)[0] == 200


def test_unauthenticated_bodies_are_refused_before_they_are_read(repo):
    with running_server(repo, api_key_env="RELIABILITY_KEY") as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            # 32 MiB announced, 1 KiB sent: the answer must come without the rest of the body
            s.sendall(
                b"POST /v2/models/add/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 33554432\r\n\r\n"
                + b"0" * 1024
            )
            status, headers, body = read_response(s)
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
        assert headers["connection"] == "close"
        # Expect: 100-continue gets no 100 without the key, and a 100 with it
        head = "POST /v2/models/add/infer HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {n}\r\n{auth}\r\n"
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            s.sendall(head.format(n=99, auth="").encode())
            assert read_response(s)[0] == 401
        body = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            s.sendall(head.format(n=len(body), auth=f"Authorization: bearer {API_KEY}\r\n").encode())
            assert s.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
            s.sendall(body)
            assert read_response(s)[0] == 200


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("RELIABILITY_KEY", API_KEY)


def test_body_bytes_in_flight_are_capped_across_connections(repo):
    with running_server(
        repo / "text", max_request_bytes=40_000, max_inflight_body_bytes=70_000, body_timeout=10
    ) as srv:
        head = b"POST /v2/models/text/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 30000\r\n\r\n"
        a = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        b = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        try:
            a.sendall(head + b"{")
            b.sendall(head + b"{")
            time.sleep(0.2)
            status, headers, body = exchange(srv.port, head + b"{" * 30000)
            assert status == 503 and headers["retry-after"] == "1"
            assert b"receiving 70000 bytes of request bodies already" in body
            a.sendall(b" " * 29999)  # a's body completes (not valid JSON: 400), its bytes are released
            assert read_response(a)[0] == 400
            assert exchange(srv.port, post("/v2/models/text/infer", b"{" * 30000))[0] == 400
            assert srv.http.body_bytes == 30000  # b's reservation
        finally:
            a.close()
            b.close()
        deadline = time.monotonic() + 3
        while srv.http.body_bytes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.http.body_bytes == 0  # a dropped connection gives its reservation back


def test_clients_dropping_mid_request_leave_nothing_behind(server):
    """300 clients drop at every stage of a request: no connection, reservation or queue is left."""
    body = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
    full = post("/v2/models/add/infer", body)
    cuts = [5, 30, len(full) - len(body) - 2, len(full) - len(body) + 10, len(full) - 1, len(full)]
    for i in range(300):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(full[: cuts[i % len(cuts)]])
    deadline = time.monotonic() + 5
    while (
        server.http.connections or server.http.body_bytes or server.http.inflight
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.http.connections
    assert server.http.body_bytes == 0 and server.http.inflight == 0
    assert exchange(server.port, full)[0] == 200
