"""gRPC server transports compared: the hand-written HTTP/2 framing and HPACK, the server on the
h2 library (sans-IO, in the same asyncio.Protocol), and this tree.

One ``torchport serve`` process per transport on the example CNN (batching on, max batch 32, no
queue delay), each with ``--grpc-port``, taken from the commits named by ``--servers NAME=REF``
(``.``: this tree; the first is the baseline of the ratios). Rounds are interleaved (one point on
each server in turn; median of ``--rounds``) and every round drives each server with the same
clients:

- torchport bench's generator (this tree's: the h2 library's client) over one h2c connection, and
  HTTP binary from the same generator on this tree's server (gRPC must stay >= HTTP binary at c=32);
- grpcio's asyncio client (C core: a client whose cost does not change between the rows).

Printed: requests/s, p50, p99 and the server's CPU per request (user + system of the server
process, from /proc), with the ratio current / baseline. The machine's other load moves all rows;
compare within one run only.

    python benchmarks/grpc_transport.py --duration 5 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
#: the last commit whose gRPC server used the hand-written HTTP/2 framing and HPACK, and the commit
#: whose server ran on the h2 library
DEFAULT_SERVERS = ("hand-written=e451097", "h2=087726e", "current=.")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``torchport serve PACKAGE`` with a gRPC port, from ``pythonpath`` (None: this tree)."""

    def __init__(self, package: Path, pythonpath: Path | None) -> None:
        self.port, self.grpc_port = free_port(), free_port()
        argv = [sys.executable, "-m", "torchport.cli", "serve", str(package), "--port", str(self.port)]
        argv += ["--grpc-port", str(self.grpc_port), "--max-batch-size", "32", "--max-queue-delay-ms", "0"]
        argv += ["--no-access-log"]
        env = {**os.environ, **({"PYTHONPATH": str(pythonpath)} if pythonpath else {})}
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=pythonpath or REPO_ROOT
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {' '.join(argv)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not become ready")

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def baseline_tree(ref: str, workdir: Path) -> Path:
    """``ref`` of this repository, importable as ``torchport`` from the returned folder."""
    src, shim = workdir / f"src-{ref}", workdir / f"path-{ref}"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", ref], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    (shim / "torchport").mkdir(parents=True)
    (shim / "torchport" / "__init__.py").symlink_to(src / "torchport" / "__init__.py")
    for sub in ("runtimes", "exporters", "deploy", "cli"):
        (shim / "torchport" / sub).symlink_to(src / sub)
    return shim


def make_cnn_package(dest: Path) -> Path:
    """The example CNN exported with torch.onnx.export(dynamo=True), batch dim dynamic."""
    import torch

    from torchport.exporters.examples import cnn
    from torchport.runtimes import DimRange, Manifest, TensorSpec, write_package

    program = torch.onnx.export(
        cnn.make_model(),
        cnn.example_inputs(),
        dynamo=True,
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes={"image": {0: torch.export.Dim("batch", min=1, max=64)}},
        verbose=False,
    )
    with write_package(dest) as w:
        program.save(str(w.path / "model.onnx"))
        w.commit(
            Manifest(
                name="cnn",
                inputs=[TensorSpec("image", "float32", ["batch", 3, 32, 32])],
                outputs=[TensorSpec("logits", "float32", ["batch", 10])],
                dynamic_dims={"batch": DimRange(1, 64)},
            )
        )
    return dest


def grpcio_load(address: str, request: bytes, concurrency: int, duration: float) -> dict:
    """Closed-loop load through grpcio's asyncio client."""
    from grpc import aio

    async def run() -> dict:
        lat: list[float] = []
        async with aio.insecure_channel(address) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            await call(request)
            deadline = time.perf_counter() + duration

            async def worker() -> None:
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    await call(request)
                    lat.append(time.perf_counter() - t0)

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - start
        lat.sort()
        return {
            "rps": len(lat) / elapsed,
            "p50_ms": lat[len(lat) // 2] * 1e3,
            "p99_ms": lat[int(len(lat) * 0.99)] * 1e3,
        }

    return asyncio.run(run())


def bench_load(url: str, proto: str, concurrency: int, duration: float) -> dict:
    from torchport.runtimes._loadgen import bench_server

    (r,) = bench_server(url, model="cnn", protocols=[proto], concurrency=[concurrency], duration=duration)
    if r.errors:
        raise RuntimeError(f"{r.errors} failed {proto} requests on {url}")
    return {"rps": r.rps, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "n": r.requests}


def spec_is_this_tree(specs: list[str], name: str) -> bool:
    return f"{name}=." in specs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", nargs="+", default=list(DEFAULT_SERVERS), help="NAME=REF (.: this tree)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per point")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    from torchport.runtimes._loadgen import grpc_request_bytes, request_inputs

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pkg = make_cnn_package(work / "cnn")
        servers = {}
        for spec in args.servers:
            name, ref = spec.split("=", 1)
            servers[name] = Server(pkg, None if ref == "." else baseline_tree(ref, work))
        first = next(iter(servers))
        meta = [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
        request = grpc_request_bytes("cnn", request_inputs(meta, 1, {}))
        samples: dict[tuple, list[dict]] = {}
        try:
            for c in args.concurrency:
                for _ in range(args.rounds):
                    for name, srv in servers.items():
                        runs = [
                            ("bench gRPC", bench_load, (f"grpc://127.0.0.1:{srv.grpc_port}", "grpc")),
                            ("grpcio gRPC", grpcio_load, (f"127.0.0.1:{srv.grpc_port}", request)),
                        ]
                        if spec_is_this_tree(args.servers, name):
                            runs.append(
                                ("bench HTTP binary", bench_load, (f"http://127.0.0.1:{srv.port}", "binary"))
                            )
                        for client, run, run_args in runs:
                            cpu0 = srv.cpu()
                            t0 = time.perf_counter()
                            r = run(*run_args, c, args.duration)
                            elapsed = time.perf_counter() - t0
                            r["cpu_us"] = (srv.cpu() - cpu0) / max(r["rps"] * elapsed, 1) * 1e6
                            samples.setdefault((c, client, name), []).append(r)
        finally:
            for srv in servers.values():
                srv.stop()

    med = {
        k: {f: statistics.median(r[f] for r in v) for f in ("rps", "p50_ms", "p99_ms", "cpu_us")}
        for k, v in samples.items()
    }
    header = (
        "c",
        "client",
        "server",
        "req/s",
        "p50 ms",
        "p99 ms",
        "server CPU us/req",
        f"vs {first}",
    )
    rows = []
    for (c, client, name), m in med.items():
        base = med.get((c, client, first))
        if name == first:
            vs = "1.00x"
        elif base is not None:
            vs = f"{m['rps'] / base['rps']:.2f}x req/s, {m['p50_ms'] / base['p50_ms']:.2f}x p50"
        else:
            grpc = med[(c, "bench gRPC", name)]
            vs = f"gRPC = {grpc['rps'] / m['rps']:.2f}x this"
        rows.append(
            (
                str(c),
                client,
                name,
                f"{m['rps']:.0f}",
                f"{m['p50_ms']:.3f}",
                f"{m['p99_ms']:.3f}",
                f"{m['cpu_us']:.0f}",
                vs,
            )
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))
    if args.json:
        args.json.write_text(json.dumps({f"c{c} {cl} {n}": v for (c, cl, n), v in med.items()}, indent=2))


if __name__ == "__main__":
    main()
