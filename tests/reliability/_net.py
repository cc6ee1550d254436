"""Helpers of the server hardening tests: a small model repository, raw HTTP over sockets, RSS."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from onnx import helper, numpy_helper

from tests.runtimes.conftest import make_add_package, make_identity_package, save_package
from torchport.runtimes import DimRange, TensorSpec

API_KEY = "reliability-key-0123"


def make_token_package(dest: Path, name: str = "tok") -> None:
    """ids int64 [batch, seq] with value range 0..9 -> emb = table[ids] (float32 [batch, seq, 2])."""
    table = numpy_helper.from_array(np.arange(20, dtype=np.float32).reshape(10, 2), "table")
    save_package(
        dest,
        name,
        [helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0)],
        [TensorSpec("ids", "int64", ["batch", "seq"], value_range=(0, 9))],
        [TensorSpec("emb", "float32", ["batch", "seq", 2])],
        initializers=[table],
        dynamic_dims={"batch": DimRange(1, 8), "seq": DimRange(1, 16)},
    )


def make_bag_package(dest: Path, name: str = "bag") -> None:
    """s: BYTES [n] with no range on n (any count of strings) -> out = s."""
    save_package(
        dest,
        name,
        [helper.make_node("Identity", ["s"], ["out"])],
        [TensorSpec("s", "string", ["n"])],
        [TensorSpec("out", "string", ["n"])],
    )


def make_repository(root: Path) -> Path:
    """add (float32 [batch<=64, 4], bounded), text (BYTES [batch<=16, 3]: no body bound), tok (token
    ids 0..9), bag (BYTES [n], n unbounded)."""
    make_add_package(root / "add")
    make_identity_package(root / "text", "string", name="text")
    make_token_package(root / "tok")
    make_bag_package(root / "bag")
    return root


def read_response(sock: socket.socket, buf: bytearray | None = None) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response (content-length framed) -> (status, lower-cased headers, body).

    ``buf`` carries bytes already read past the previous response (pipelining).
    """
    data = buf if buf is not None else bytearray()
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a full response head: {bytes(data[:200])!r}")
        data += chunk
    end = data.index(b"\r\n\r\n")
    lines = bytes(data[:end]).decode("latin-1").split("\r\n")
    del data[: end + 4]
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0"))
    while len(data) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed in the middle of a response body")
        data += chunk
    body = bytes(data[:length])
    del data[:length]
    return status, headers, body


def exchange(port: int, raw: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` on a fresh connection and read one response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(raw)
        except OSError:
            pass  # the server may answer and close before reading everything
        return read_response(s)


def get(path: str, host: bool = True, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\n{'Host: t' + chr(13) + chr(10) if host else ''}{extra}\r\n".encode()


def post(path: str, body: bytes, headers: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


def wait_closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True when the server closes ``sock`` within ``timeout`` (reading and dropping any bytes)."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except TimeoutError:
        return False
    except OSError:
        return True
    return False


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class PeakRss:
    """Peak RSS growth of this process while the block runs (sampled every 20 ms)."""

    def __enter__(self) -> PeakRss:
        self.base = self.peak = rss_mb()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.growth = self.peak - self.base


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`torchport serve` in its own process (its RSS and signals are its own)."""

    def __init__(self, proc: subprocess.Popen, port: int) -> None:
        self.proc, self.port = proc, port

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")


@contextmanager
def serve_process(path: Path, *flags: str, timeout: float = 60.0) -> Iterator[ServeProcess]:
    """Start ``torchport serve PATH --port P FLAGS`` and wait until it is ready; kill it on exit."""
    port = free_port()
    cmd = [sys.executable, "-c", "from torchport.cli import main; main()", "serve", str(path)]
    cmd += ["--port", str(port), "--no-access-log", "--warmup", "1", *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"torchport serve exited: {proc.stderr.read().decode(errors='replace')}")
            try:
                if exchange(port, get("/v2/health/ready"), timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("torchport serve did not become ready")
            time.sleep(0.1)
        yield ServeProcess(proc, port)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stderr.close()
