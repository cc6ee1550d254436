"""Soak: 60 s at concurrency 32, mixed JSON and binary tensors, every answer checked, RSS flat.

``TORCHPORT_SOAK_SECONDS`` shortens it (e.g. 10 for a quick look). Prints requests served, p50/p99
latency and RSS after warm-up and at the end.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.reliability._net import make_repository, read_response, serve_process

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("TORCHPORT_SOAK_SECONDS", "60"))
WARMUP = min(10.0, SECONDS / 4)
CONCURRENCY = 32


def _weights(pkg: Path) -> tuple[np.ndarray, np.ndarray]:
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(pkg / "model.onnx").graph.initializer}
    return inits["W"], inits["B"]


def _json_request(x: np.ndarray) -> bytes:
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    ).encode()
    return (
        f"POST /v2/models/add/infer HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def _binary_request(x: np.ndarray) -> bytes:
    blob = x.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return (
        (
            f"POST /v2/models/add/infer HTTP/1.1\r\nHost: t\r\nInference-Header-Content-Length: {len(header)}\r\n"
            f"Content-Length: {len(header) + len(blob)}\r\n\r\n"
        ).encode()
        + header
        + blob
    )


def _outputs(headers: dict[str, str], body: bytes) -> dict[str, np.ndarray]:
    hl = headers.get("inference-header-content-length")
    if hl is None:
        return {
            o["name"]: np.array(o["data"], np.float32).reshape(o["shape"])
            for o in json.loads(body)["outputs"]
        }
    meta = json.loads(body[: int(hl)])
    out, pos = {}, int(hl)
    for o in meta["outputs"]:
        size = o["parameters"]["binary_data_size"]
        out[o["name"]] = np.frombuffer(body[pos : pos + size], "<f4").reshape(o["shape"])
        pos += size
    return out


class Worker(threading.Thread):
    def __init__(self, port: int, seed: int, w: np.ndarray, b: np.ndarray, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.rng, self.w, self.b, self.stop = port, np.random.default_rng(seed), w, b, stop
        self.latencies: list[tuple[float, float]] = []  # (finished at, seconds)
        self.errors: list[str] = []
        self.kinds = {"json": 0, "binary": 0}

    def run(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        buf = bytearray()
        try:
            while not self.stop.is_set() and len(self.errors) < 5:
                x = self.rng.standard_normal((int(self.rng.integers(1, 5)), 4)).astype(np.float32)
                kind = "binary" if self.rng.integers(0, 2) else "json"
                raw = _binary_request(x) if kind == "binary" else _json_request(x)
                t0 = time.perf_counter()
                try:
                    sock.sendall(raw)
                    status, headers, body = read_response(sock, buf)
                except OSError as e:
                    self.errors.append(f"{type(e).__name__}: {e}")
                    sock.close()
                    sock, buf = socket.create_connection(("127.0.0.1", self.port), timeout=30), bytearray()
                    continue
                self.latencies.append((time.monotonic(), time.perf_counter() - t0))
                self.kinds[kind] += 1
                if status != 200:
                    self.errors.append(f"{status}: {body[:200]!r}")
                    continue
                out = _outputs(headers, body)
                if not np.array_equal(out["z"], x + np.float32(1)) or not np.allclose(
                    out["y"], np.maximum(x @ self.w + self.b, 0), rtol=1e-5, atol=1e-5
                ):
                    self.errors.append(f"wrong answer for {x.tolist()}: {out}")
        finally:
            sock.close()


def test_soak_mixed_json_and_binary_at_concurrency_32(tmp_path):
    repo = make_repository(tmp_path / "repo")
    w, b = _weights(repo / "add")
    with serve_process(repo / "add", "--threads", "2") as srv:
        stop = threading.Event()
        workers = [Worker(srv.port, i, w, b, stop) for i in range(CONCURRENCY)]
        started = time.monotonic()
        for wk in workers:
            wk.start()
        rss: list[tuple[float, float]] = []
        while time.monotonic() - started < SECONDS:
            time.sleep(1.0)
            rss.append((time.monotonic() - started, srv.rss_mb()))
        stop.set()
        for wk in workers:
            wk.join(30)
    errors = [e for wk in workers for e in wk.errors]
    served = sum(len(wk.latencies) for wk in workers)
    measured = sorted(s for wk in workers for t, s in wk.latencies if t - started >= WARMUP)
    p50 = statistics.median(measured) * 1000
    p99 = measured[int(len(measured) * 0.99)] * 1000
    after_warmup = next(r for t, r in rss if t >= WARMUP)
    end, peak = rss[-1][1], max(r for t, r in rss if t >= WARMUP)
    kinds = {k: sum(wk.kinds[k] for wk in workers) for k in ("json", "binary")}
    print(
        f"\nsoak {SECONDS:.0f} s, concurrency {CONCURRENCY}: {served} requests ({kinds}), {len(errors)} errors, "
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, RSS after warm-up {after_warmup:.1f} MB, peak {peak:.1f} MB, "
        f"end {end:.1f} MB"
    )
    assert errors == [], errors[:5]
    assert served > 0 and kinds["json"] and kinds["binary"]
    assert peak <= after_warmup * 1.10, rss
