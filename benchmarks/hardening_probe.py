"""Hardening probe: measures each high-severity finding of the server hardening review on a real
`torchport serve`.

Loopback only, every probe bounded in time and size. Run it on two checkouts (before / after a fix) and
compare the tables; each probe prints what a healthy server should show.

    python benchmarks/hardening_probe.py                  # all probes, ~2 minutes
    python benchmarks/hardening_probe.py --only flood nonreader --json out.json

Probes (the server is a subprocess serving a tiny model; RSS is read from /proc/PID/status):
  flood      health-ping latency from a second client while one connection pipelines metadata GETs
  nonreader  RSS growth while one connection pipelines requests and never reads a response
  headers    a 16 MiB header value, a 16 MiB URL, 200,000 small headers: status and the pings meanwhile
  trickle    600 connections trickling header bytes at a server with 512 file descriptors: when is a
             new client served
  unauth     8 clients POST 48 MiB bodies without the API key: peak RSS growth, statuses
  bytes      (with the key) a 32 MiB BYTES tensor under an unknown input name, sent to a model whose
             inputs are unbounded (echo: BYTES [n]) and to a bounded one (add); a 48 MiB JSON FP32 body
             claiming a huge shape: RSS growth, time to answer, longest ping meanwhile
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from torchport.runtimes._table import format_table  # noqa: E402

API_KEY = "probe-key-0123456789"
MiB = 1024 * 1024


# -- the server under test ---------------------------------------------------------------------


def make_repository(dest: Path) -> Path:
    """Two tiny models: add (x float32 [batch<=64, 4] -> x + 1) and echo (text: BYTES [n], n unbounded)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from torchport.runtimes import DimRange, Manifest, TensorSpec, Variant, write_package

    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    manifest = Manifest(
        name="add",
        version="1",
        inputs=[TensorSpec("x", "float32", ["batch", 4])],
        outputs=[TensorSpec("y", "float32", ["batch", 4])],
        dynamic_dims={"batch": DimRange(1, 64)},
        variants={"fp32": Variant(file="model.onnx")},
    )
    with write_package(dest / "add") as w:
        onnx.save(model, w.path / "model.onnx")
        w.commit(manifest)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["out"])],
        "echo",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["n"])],
        [helper.make_tensor_value_info("out", TensorProto.STRING, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    manifest = Manifest(
        name="echo",
        version="1",
        inputs=[TensorSpec("text", "string", ["n"])],
        outputs=[TensorSpec("out", "string", ["n"])],
        variants={"fp32": Variant(file="model.onnx")},
    )
    with write_package(dest / "echo") as w:
        onnx.save(model, w.path / "model.onnx")
        w.commit(manifest)
    return dest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`torchport serve PKG` in a subprocess, optionally with an API key and a low fd limit."""

    def __init__(self, package: Path, *, key: bool = False, nofile: int | None = None, extra=()) -> None:
        self.port = _free_port()
        env = dict(os.environ, PROBE_KEY=API_KEY, OMP_NUM_THREADS="1")
        cmd = [
            sys.executable,
            "-c",
            "from torchport.cli import main; main()",
            "serve",
            str(package),
            "--port",
            str(self.port),
            "--no-access-log",
            "--warmup",
            "1",
            "--threads",
            "1",
            *(["--api-key-env", "PROBE_KEY"] if key else []),
            *extra,
        ]

        def limit() -> None:
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=limit
        )
        self.stderr_lines: list[bytes] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited: " + b"".join(self.stderr_lines).decode(errors="replace"))
            try:
                if ping(self.port, timeout=1.0)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("server did not become ready in 60 s")

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if len(self.stderr_lines) < 10000:
                self.stderr_lines.append(line)

    def rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def traceback_lines(self) -> int:
        return sum(1 for line in self.stderr_lines if line.startswith(b"Traceback"))

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


class RssSampler:
    """Peak RSS of the server while a probe runs (sampled every 50 ms)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.base = server.rss_mb()
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.server.rss_mb())

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return self.peak - self.base


# -- clients -----------------------------------------------------------------------------------


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Read one HTTP response (content-length framed) -> (status, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, rest[:length]


def ping(port: int, timeout: float = 2.0, path: str = "/v2/health/live") -> tuple[int, float]:
    """One GET on a fresh connection -> (status, seconds); status 0 on timeout or error."""
    t0 = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
            status, _ = _read_response(s)
    except OSError:
        return 0, time.perf_counter() - t0
    return status, time.perf_counter() - t0


class Pinger:
    """Pings /v2/health/live every 50 ms from its own thread; reports latency and failures."""

    def __init__(self, port: int, timeout: float = 2.0) -> None:
        self.port, self.timeout = port, timeout
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            status, seconds = ping(self.port, self.timeout)
            if status == 200:
                self.latencies.append(seconds)
            else:
                self.failures += 1
            self._stop.wait(0.05)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._t.join()
        lat = sorted(self.latencies) or [float("nan")]
        return {
            "ping_p50_ms": statistics.median(lat) * 1000,
            "ping_max_ms": lat[-1] * 1000,
            "ping_failures": self.failures,
            "pings": len(self.latencies) + self.failures,
        }


def _infer_request(rows: int = 1) -> bytes:
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [rows, 4], "datatype": "FP32", "data": [0.5] * (4 * rows)}]}
    ).encode()
    return (
        b"POST /v2/models/add/infer HTTP/1.1\r\nHost: probe\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


# -- probes ------------------------------------------------------------------------------------


def probe_flood(pkg: Path, seconds: float) -> dict:
    """One connection pipelines model-metadata GETs (and reads the answers) vs. pings from another client."""
    srv = Server(pkg)
    try:
        one = b"GET /v2/models/add HTTP/1.1\r\nHost: probe\r\n\r\n"
        batch = one * 2000
        stop = threading.Event()
        sent = [0]
        received = [0]

        def flooder() -> None:
            with socket.create_connection(("127.0.0.1", srv.port)) as s:
                s.settimeout(0.5)

                def reader() -> None:
                    while not stop.is_set():
                        try:
                            chunk = s.recv(1 << 20)
                        except OSError:
                            continue
                        if not chunk:
                            return
                        received[0] += chunk.count(b"HTTP/1.1 200")

                rt = threading.Thread(target=reader, daemon=True)
                rt.start()
                while not stop.is_set():
                    try:
                        s.sendall(batch)
                        sent[0] += 2000
                    except OSError:
                        time.sleep(0.01)
                rt.join(2)

        ft = threading.Thread(target=flooder, daemon=True)
        ft.start()
        time.sleep(0.5)
        pinger = Pinger(srv.port)
        time.sleep(seconds)
        out = pinger.stop()
        stop.set()
        ft.join(5)
        out["flood_answered"] = received[0]
        return out
    finally:
        srv.stop()


def probe_nonreader(pkg: Path, seconds: float) -> dict:
    """One connection pipelines metadata GETs and never reads: does the server's memory grow?"""
    srv = Server(pkg)
    try:
        base = srv.rss_mb()
        batch = b"GET /v2/models/add HTTP/1.1\r\nHost: probe\r\n\r\n" * 2000  # ~600-byte answers
        sent = 0
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            s.settimeout(0.2)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and srv.rss_mb() - base < 1500:
                try:
                    sent += s.send(batch)
                except (TimeoutError, BlockingIOError):
                    continue
                except OSError:
                    break
            time.sleep(0.5)
            grown = srv.rss_mb() - base
            pinged = ping(srv.port)
        return {
            "rss_before_mb": base,
            "rss_growth_mb": grown,
            "client_sent_mb": sent / MiB,
            "ping_after_status": pinged[0],
        }
    finally:
        srv.stop()


def _send_raw(port: int, head: bytes, tail: bytes = b"", timeout: float = 20.0) -> tuple[int, float]:
    """Send ``head`` (+ ``tail``) on one connection -> (status or 0 for no response, seconds)."""
    t0 = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            try:
                s.sendall(head)
                s.sendall(tail)
            except OSError:
                pass  # the server may answer and close before it has read everything
            try:
                status, _ = _read_response(s)
            except (OSError, ValueError, IndexError):
                status = 0
    except OSError:
        status = 0
    return status, time.perf_counter() - t0


def probe_headers(pkg: Path) -> dict:
    srv = Server(pkg)
    out: dict = {}
    try:
        cases = {
            "header_16MiB": (
                b"GET /v2/health/live HTTP/1.1\r\nHost: p\r\nX-Big: ",
                b"a" * (16 * MiB) + b"\r\n\r\n",
            ),
            "url_16MiB": (b"GET /v2/health/live?" + b"a" * (16 * MiB), b" HTTP/1.1\r\nHost: p\r\n\r\n"),
            "headers_200k": (
                b"GET /v2/health/live HTTP/1.1\r\nHost: p\r\n",
                b"X-A: b\r\n" * 200_000 + b"\r\n",
            ),
        }
        for name, (head, tail) in cases.items():
            sampler = RssSampler(srv)
            pinger = Pinger(srv.port, timeout=10.0)
            status, seconds = _send_raw(srv.port, head, tail)
            pings = pinger.stop()
            out[f"{name}_status"] = status
            out[f"{name}_seconds"] = seconds
            out[f"{name}_ping_max_ms"] = pings["ping_max_ms"]
            out[f"{name}_rss_growth_mb"] = sampler.stop()
        out["tracebacks_in_log"] = srv.traceback_lines()
        return out
    finally:
        srv.stop()


def probe_trickle(pkg: Path, seconds: float, conns: int = 600, nofile: int = 512) -> dict:
    """``conns`` connections send a header byte each second; when does a fresh client get an answer?"""
    srv = Server(pkg, nofile=nofile)
    socks: list[socket.socket] = []
    try:
        for _ in range(conns):
            try:
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=2)
                s.setblocking(False)
                s.send(b"GET /v2/health/live HTTP/1.1\r\nHost: p\r\nX-Slow: ")
                socks.append(s)
            except OSError:
                break
        t0 = time.monotonic()
        first_served = None
        statuses: dict[int, int] = {}
        while time.monotonic() - t0 < seconds:
            for s in list(socks):
                try:
                    s.send(b"a")
                except OSError:
                    socks.remove(s)
                    s.close()
            status, _ = ping(srv.port, timeout=1.0)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200 and first_served is None:
                first_served = time.monotonic() - t0
            time.sleep(0.5)
        alive = 0
        for s in socks:
            try:
                alive += s.recv(1) == b"" and 0 or 1
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
        return {
            "tricklers_opened": conns,
            "tricklers_alive_at_end": alive,
            "fresh_client_first_200_s": first_served if first_served is not None else "never",
            "fresh_client_statuses": " ".join(f"{k}:{v}" for k, v in sorted(statuses.items())),
            "window_s": seconds,
        }
    finally:
        for s in socks:
            s.close()
        srv.stop()


def probe_unauth(pkg: Path, clients: int = 8, size: int = 48 * MiB) -> dict:
    """``clients`` unauthenticated POSTs of ``size`` bytes at once: peak RSS growth, statuses."""
    srv = Server(pkg, key=True)
    try:
        sampler = RssSampler(srv)
        payload = b"0" * size
        statuses: list[int] = []
        t0 = time.perf_counter()

        def one() -> None:
            head = (
                f"POST /v2/models/add/infer HTTP/1.1\r\nHost: p\r\nContent-Length: {size}\r\n"
                "Content-Type: application/json\r\n\r\n"
            ).encode()
            statuses.append(_send_raw(srv.port, head, payload, timeout=60)[0])

        threads = [threading.Thread(target=one) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        return {
            "clients": clients,
            "body_mb_each": size / MiB,
            "peak_rss_growth_mb": sampler.stop(),
            "statuses": " ".join(str(s) for s in sorted(statuses)),
            "seconds": time.perf_counter() - t0,
        }
    finally:
        srv.stop()


def probe_bytes(pkg: Path) -> dict:
    """(authenticated) a mislabelled 32 MiB BYTES tensor and a JSON FP32 body claiming a huge shape."""
    srv = Server(pkg, key=True)
    out: dict = {}
    try:
        n = 8 * MiB  # 8M empty BYTES elements = 32 MiB of length prefixes
        blob = struct.pack("<I", 0) * n
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "nope",
                        "shape": [n],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(blob)},
                    }
                ]
            }
        ).encode()
        bytes_heads = {
            model: (
                f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer {API_KEY}\r\n"
                f"Inference-Header-Content-Length: {len(header)}\r\n"
                f"Content-Length: {len(header) + len(blob)}\r\n\r\n"
            ).encode()
            for model in ("add", "echo")
        }
        rows = 3 * MiB
        data = b"[" + b"0.5," * (rows * 4 - 1) + b"0.5]"
        body = b'{"inputs":[{"name":"x","shape":[%d,4],"datatype":"FP32","data":%s}]}' % (rows, data)
        json_head = (
            f"POST /v2/models/add/infer HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        cases = (
            ("bytes_unknown_name_to_echo", bytes_heads["echo"], header + blob),
            ("bytes_unknown_name_to_add", bytes_heads["add"], header + blob),
            ("json_huge_shape_to_add", json_head, body),
        )
        for name, head, tail in cases:
            sampler = RssSampler(srv)
            pinger = Pinger(srv.port, timeout=15.0)
            status, seconds = _send_raw(srv.port, head, tail, timeout=60)
            pings = pinger.stop()
            out[f"{name}_body_mb"] = len(tail) / MiB
            out[f"{name}_status"] = status
            out[f"{name}_seconds"] = seconds
            out[f"{name}_rss_growth_mb"] = sampler.stop()
            out[f"{name}_ping_max_ms"] = pings["ping_max_ms"]
        return out
    finally:
        srv.stop()


PROBES: dict[str, Callable[[Path, argparse.Namespace], dict]] = {
    "flood": lambda pkg, a: probe_flood(pkg, a.seconds),
    "nonreader": lambda pkg, a: probe_nonreader(pkg, a.seconds),
    "headers": lambda pkg, a: probe_headers(pkg),
    "trickle": lambda pkg, a: probe_trickle(pkg, a.trickle_seconds),
    "unauth": lambda pkg, a: probe_unauth(pkg),
    "bytes": lambda pkg, a: probe_bytes(pkg),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=sorted(PROBES), help="run only these probes")
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of the flood probes")
    ap.add_argument("--trickle-seconds", type=float, default=20.0, help="window of the trickle probe")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        pkg = make_repository(Path(tmp) / "repo")
        for name in args.only or list(PROBES):
            t0 = time.perf_counter()
            try:
                results[name] = PROBES[name](pkg, args)
            except Exception as e:  # a probe that kills the server is a finding, not a crash of the probe
                results[name] = {"probe_error": f"{type(e).__name__}: {e}"}
            print(f"[{name}] done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    rows = []
    for name, figures in results.items():
        for key, value in figures.items():
            rows.append([name, key, round(value, 1) if isinstance(value, float) else value])
    print(format_table(["probe", "measure", "value"], rows, title="hardening probe (loopback)"))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
