"""SIGTERM under keep-alive load: in-flight requests complete, later ones get 503 + connection: close,
a half-uploaded body gets an answer, and no request is lost (sent and then met by a reset)."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

from tests.reliability._net import read_response, serve_process

BODY = json.dumps(
    {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
).encode()
REQUEST = (
    f"POST /v2/models/add/infer HTTP/1.1\r\nHost: t\r\nContent-Length: {len(BODY)}\r\n\r\n".encode() + BODY
)


class Client(threading.Thread):
    """Sends infer requests on a keep-alive connection; reconnects when told to close."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.statuses: list[int] = []
        self.lost: list[str] = []
        self.refused = 0
        self.closes_on_503 = True

    def run(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            except ConnectionRefusedError:
                self.refused += 1  # nothing was sent: the client knows to go elsewhere
                return
            with sock:
                buf = bytearray()
                while True:
                    try:
                        sock.sendall(REQUEST)
                        status, headers, body = read_response(sock, buf)
                    except OSError as e:
                        self.lost.append(f"{type(e).__name__}: {e}")
                        return
                    self.statuses.append(status)
                    if status == 503:
                        self.closes_on_503 &= headers.get("connection") == "close"
                        return
                    if status != 200 or json.loads(body)["outputs"][1]["data"] != [2.0, 3.0, 4.0, 5.0]:
                        self.lost.append(f"wrong answer {status}: {body[:200]!r}")
                        return
                    if headers.get("connection") == "close":
                        break  # reconnect


def test_sigterm_under_keep_alive_load_loses_no_request(repo):
    with serve_process(repo / "add", "--threads", "2", "--drain-timeout", "20") as srv:
        clients = [Client(srv.port) for _ in range(8)]
        for c in clients:
            c.start()
        half = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
        half.sendall(REQUEST[: len(REQUEST) - 20])  # headers and most of the body
        deadline = time.monotonic() + 20
        while sum(len(c.statuses) for c in clients) < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        served_before = sum(len(c.statuses) for c in clients)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        half.sendall(REQUEST[len(REQUEST) - 20 :])  # the upload finishes after SIGTERM
        half_status, half_headers, _ = read_response(half)
        half.close()
        for c in clients:
            c.join(30)
        assert srv.proc.wait(30) == 0
    lost = [x for c in clients for x in c.lost]
    statuses = [s for c in clients for s in c.statuses]
    assert lost == [], lost
    assert served_before >= 300
    assert statuses.count(200) >= served_before
    assert set(statuses) <= {200, 503}
    assert all(c.closes_on_503 for c in clients)
    assert all(c.statuses[-1:] == [503] or c.refused for c in clients), [
        (c.statuses[-3:], c.refused, c.is_alive()) for c in clients
    ]
    assert half_status in (200, 503) and half_headers["connection"] == "close"
