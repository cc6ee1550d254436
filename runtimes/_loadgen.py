"""Closed-loop load on a running Open Inference Protocol server: HTTP JSON, HTTP binary, gRPC.

``concurrency`` connections (or in-flight gRPC calls) each send the same pre-encoded request again
as soon as the previous answer arrives, for ``duration`` seconds, on one asyncio loop (uvloop when
installed). A non-2xx answer or a gRPC error counts as an error, never as a latency.

With ``processes`` > 1 the load comes from that many generator processes started together (the
concurrency split between them; for gRPC one HTTP/2 connection each), so that a generator that
costs more per request than the server (the ``h2`` client is Python per frame) is not what is
measured. With ``cpus`` the generator (its processes, or the thread running the load in this
process) runs only on those CPUs (``os.sched_setaffinity``), so that a server pinned to the other
CPUs of the same machine is measured as if the load came from another machine.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import numpy as np

from torchport.runtimes._bench import BenchResult, random_array, summarize
from torchport.runtimes._errors import ServingError, UsageError
from torchport.runtimes._grpc_status import STATUS_NAMES
from torchport.runtimes.server._protocol import _binary_data

PROTOCOLS = ("json", "binary", "grpc")
_SERVICE = "inference.GRPCInferenceService"
T = TypeVar("T")


@dataclass
class Target:
    """Where to send load: ``http://host:port[/v2/models/NAME]`` or ``grpc://host:port``."""

    scheme: str
    host: str
    port: int
    model: str | None

    @classmethod
    def parse(cls, url: str, model: str | None = None) -> Target:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "grpc") or not parts.hostname or not parts.port:
            raise UsageError(
                f"{url!r} is not a server URL: use http://HOST:PORT[/v2/models/NAME] or grpc://HOST:PORT"
            )
        path = parts.path.rstrip("/")
        if path.startswith("/v2/models/"):
            model = model or path[len("/v2/models/") :].split("/")[0]
        return cls(parts.scheme, parts.hostname, parts.port, model)

    @property
    def http_base(self) -> str:
        return f"http://{self.host}:{self.port}"


def _get_json(url: str, headers: dict[str, str]) -> Any:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise ServingError(f"GET {url}: {e.code} {e.read().decode(errors='replace')[:300]}") from None
    except OSError as e:
        raise ServingError(f"cannot reach {url}: {e}") from None


def http_model_inputs(target: Target, headers: dict[str, str]) -> tuple[str, list[dict]]:
    """(model name, input metadata) from the server: the only ready model when none is named."""
    model = target.model
    if model is None:
        index = _get_json(f"{target.http_base}/v2/repository/index", headers)
        ready = sorted({m["name"] for m in index if m.get("state") == "READY"})
        if len(ready) != 1:
            raise UsageError(f"name the model with --model (ready models: {', '.join(ready) or 'none'})")
        model = ready[0]
    md = _get_json(f"{target.http_base}/v2/models/{model}", headers)
    return model, md["inputs"]


def _require_grpc_client() -> None:
    """gRPC load needs h2 and hpack (the HTTP/2 client and its header coding) and protobuf; HTTP
    load needs neither, so they are imported only here and in the gRPC functions after this check.

    Raises:
        ServingError: one of them is not installed (says what to install).
    """
    for module, package in (("hpack", "hpack"), ("h2.connection", "h2"), ("google.protobuf", "protobuf")):
        try:
            importlib.import_module(module)
        except ImportError:
            raise ServingError(
                f"gRPC load (a grpc:// URL) needs {package}: pip install 'torchport[serve]' "
                f"(or pip install {package})"
            ) from None


def grpc_model_inputs(target: Target, headers: dict[str, str]) -> tuple[str, list[dict]]:
    _require_grpc_client()
    from torchport.runtimes._h2client import H2Connection, grpc_frame, request_headers
    from torchport.runtimes.server._grpc_messages import MESSAGES

    if target.model is None:
        raise UsageError("name the model with --model for a grpc:// URL")
    request = MESSAGES["ModelMetadataRequest"](name=target.model).SerializeToString()

    async def ask() -> Any:
        conn = await H2Connection.open(target.host, target.port)
        try:
            fields = request_headers(f"{target.host}:{target.port}", f"/{_SERVICE}/ModelMetadata", headers)
            return await asyncio.wait_for(conn.call(fields, grpc_frame(request)), 30)
        finally:
            await conn.close()

    result = _run(ask())
    if result.status != 0:
        name = STATUS_NAMES.get(result.status, str(result.status))
        raise ServingError(f"gRPC ModelMetadata({target.model!r}): {name}: {unquote(result.message)}")
    md = MESSAGES["ModelMetadataResponse"].FromString(bytes(memoryview(result.data)[5:]))
    return target.model, [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in md.inputs]


def request_inputs(
    meta: list[dict], batch: int, dims: dict[str, int], seed: int = 0
) -> dict[str, tuple[str, np.ndarray]]:
    """Random inputs for the served signature: dim 0 of -1 is the batch, other -1 dims ``dims['*']`` or 1."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in meta:
        shape = [int(d) for d in t["shape"]]
        shape = [
            batch if (i == 0 and d < 0) else (dims.get("*", 1) if d < 0 else d) for i, d in enumerate(shape)
        ]
        out[t["name"]] = (t["datatype"], random_array(t["datatype"], shape, rng))
    return out


def http_request_bytes(
    target: Target,
    model: str,
    inputs: dict[str, tuple[str, np.ndarray]],
    binary: bool,
    headers: dict[str, str],
) -> bytes:
    """One complete HTTP/1.1 infer request (JSON tensors, or the binary tensor extension both ways)."""
    tensors, blobs = [], []
    for name, (datatype, arr) in inputs.items():
        t: dict[str, Any] = {"name": name, "shape": list(arr.shape), "datatype": datatype}
        if binary:
            blob = _binary_data(arr, datatype)
            t["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            data = arr.reshape(-1)
            t["data"] = (
                [b.decode() for b in data]
                if datatype == "BYTES"
                else data.astype(np.float32 if datatype in ("FP16", "BF16") else data.dtype).tolist()
            )
        tensors.append(t)
    body_obj: dict[str, Any] = {"inputs": tensors}
    if binary:
        body_obj["parameters"] = {"binary_data_output": True}
    header = json.dumps(body_obj, separators=(",", ":")).encode()
    body = header + b"".join(blobs)
    lines = [
        f"POST /v2/models/{model}/infer HTTP/1.1",
        f"Host: {target.host}:{target.port}",
        "Content-Type: " + ("application/octet-stream" if binary else "application/json"),
        f"Content-Length: {len(body)}",
    ]
    if binary:
        lines.append(f"Inference-Header-Content-Length: {len(header)}")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def grpc_request_bytes(model: str, inputs: dict[str, tuple[str, np.ndarray]]) -> bytes:
    from torchport.runtimes.server._grpc_messages import MESSAGES

    tensor = MESSAGES["InferInputTensor"]
    req = MESSAGES["ModelInferRequest"](
        model_name=model,
        inputs=[tensor(name=n, datatype=dt, shape=list(a.shape)) for n, (dt, a) in inputs.items()],
        raw_input_contents=[_binary_data(a, dt) for dt, a in inputs.values()],
    )
    return req.SerializeToString()


async def _http_worker(
    host: str, port: int, request: bytes, deadline: float, lat: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:  # at least one request, however late this worker got its connection
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            if head[9:10] != b"2":
                errors[0] += 1
            else:
                lat.append(time.perf_counter() - t0)
            if time.perf_counter() >= deadline:
                break
            if b"connection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


async def _grpc_load(
    host: str, port: int, request: bytes, headers: dict[str, str], concurrency: int, duration: float
) -> tuple[list[float], float, int]:
    """``concurrency`` calls in flight on one HTTP/2 connection (as one gRPC channel carries them)."""
    from torchport.runtimes._h2client import H2Connection, grpc_frame, request_headers

    lat: list[float] = []
    errors = [0]
    conn = await H2Connection.open(host, port)
    try:
        fields = request_headers(f"{host}:{port}", f"/{_SERVICE}/ModelInfer", headers)
        data = grpc_frame(request)
        await conn.call(fields, data)  # connects and fills the server's header table before the clock starts
        deadline = time.perf_counter() + duration

        async def worker() -> None:
            while True:  # at least one call each
                t0 = time.perf_counter()
                result = await conn.call(fields, data)
                if result.status != 0:
                    errors[0] += 1
                else:
                    lat.append(time.perf_counter() - t0)
                if time.perf_counter() >= deadline:
                    break

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return lat, time.perf_counter() - start, errors[0]
    finally:
        await conn.close()


async def _http_load(
    target: Target, request: bytes, concurrency: int, duration: float
) -> tuple[list[float], float, int]:
    lat: list[float] = []
    errors = [0]
    deadline = time.perf_counter() + duration
    start = time.perf_counter()
    await asyncio.gather(
        *(_http_worker(target.host, target.port, request, deadline, lat, errors) for _ in range(concurrency))
    )
    return lat, time.perf_counter() - start, errors[0]


def _load(
    target: Target, proto: str, request: bytes, headers: dict[str, str], concurrency: int, duration: float
) -> tuple[list[float], float, int]:
    if proto == "grpc":
        return _run(_grpc_load(target.host, target.port, request, headers, concurrency, duration))
    return _run(_http_load(target, request, concurrency, duration))


def parse_cpus(value: str | Sequence[int]) -> list[int]:
    """CPU numbers from ``"0,2"``, ``"0-3"`` (ranges and lists mix) or a sequence of ints, each one
    this process may run on.

    Example:
        >>> parse_cpus("0")
        [0]

    Raises:
        UsageError: not a CPU list, or a CPU this process cannot run on.
    """
    if isinstance(value, str):
        text = value
        try:
            out: set[int] = set()
            for part in (p.strip() for p in value.split(",")):
                first, _, last = part.partition("-")
                lo, hi = int(first), int(last or first)
                if lo < 0 or hi < lo:
                    raise ValueError(part)
                out |= set(range(lo, hi + 1))
        except ValueError:
            raise UsageError(f"--cpus {value!r}: expected CPU numbers, e.g. 1 or 0,2 or 2-3") from None
    else:
        text = ",".join(map(str, value))
        out = {int(c) for c in value}
        if not out or min(out) < 0:
            raise UsageError(f"--cpus {text!r}: expected CPU numbers, e.g. 1 or 0,2 or 2-3")
    allowed = os.sched_getaffinity(0)
    missing = sorted(out - allowed)
    if missing:
        raise UsageError(
            f"--cpus {text}: CPU {','.join(map(str, missing))} is not available to this process; "
            f"available: {','.join(map(str, sorted(allowed)))}"
        )
    return sorted(out)


def _child_main() -> None:
    """A generator process (see :func:`_load_in_processes`): reads its share and where to put its
    result from stdin, says it is ready, waits for the go, then writes (latencies, elapsed, errors)
    to that file, pickled (a file, not stdout, so nothing else a library may print there mixes in)."""
    import pickle
    import sys

    args, result_path = pickle.load(sys.stdin.buffer)
    cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    sys.stdout.buffer.write(f"R {cpus}\n".encode())  # ready, and where it runs
    sys.stdout.buffer.flush()
    sys.stdin.buffer.readline()  # the go: every generator starts its clock together
    try:
        out: tuple[str, Any] = ("ok", _load(*args))
    except Exception as e:  # reported to the parent, which raises it
        out = ("error", f"{type(e).__name__}: {e}")
    with open(result_path, "wb") as f:
        pickle.dump(out, f)


def _load_in_processes(
    target: Target,
    proto: str,
    request: bytes,
    headers: dict[str, str],
    concurrency: int,
    duration: float,
    processes: int,
    cpus: list[int] | None = None,
) -> tuple[list[float], float, int]:
    """The load of :func:`_load` from ``processes`` generator processes (each at least one request
    in flight; plain ``python -c`` children, so no ``__main__`` guard is needed by the caller):
    latencies of all, the longest elapsed time, errors summed. With ``cpus``, every generator runs
    only on those CPUs (checked: each child reports where it runs before the go)."""
    import pickle
    import subprocess
    import sys
    import tempfile

    n = min(processes, concurrency)
    if n <= 1:
        if cpus is None:
            return _load(target, proto, request, headers, concurrency, duration)
        before = os.sched_getaffinity(0)  # this thread's; the load runs on it
        os.sched_setaffinity(0, cpus)
        try:
            return _load(target, proto, request, headers, concurrency, duration)
        finally:
            os.sched_setaffinity(0, before)
    shares = [concurrency // n + (i < concurrency % n) for i in range(n)]
    code = "from torchport.runtimes._loadgen import _child_main; _child_main()"
    lat: list[float] = []
    elapsed, errors = 0.0, 0
    with tempfile.TemporaryDirectory(prefix="torchport-load-") as tmp:
        results = [f"{tmp}/{i}.pickle" for i in range(n)]
        children = []
        for i in range(n):
            with open(f"{tmp}/{i}.err", "wb") as err:  # a file: a chatty child never blocks on it
                children.append(
                    subprocess.Popen(
                        [sys.executable, "-c", code],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=err,
                        # pinned before it starts: every thread it makes inherits the set
                        preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
                    )
                )

        def failed(child: subprocess.Popen) -> ServingError:
            child.kill()
            child.wait()
            with open(f"{tmp}/{children.index(child)}.err", "rb") as f:
                lines = f.read().decode(errors="replace").strip().splitlines()
            why = lines[-1] if lines else f"exit code {child.returncode}"
            return ServingError(f"a load generator process failed: {why}")

        try:
            for child, share, path in zip(children, shares, results):
                assert child.stdin is not None
                child.stdin.write(pickle.dumps(((target, proto, request, headers, share, duration), path)))
                child.stdin.flush()
            want = None if cpus is None else ",".join(map(str, cpus))
            for child in children:
                assert child.stdout is not None
                while not (line := child.stdout.readline()).startswith(b"R "):  # others: skipped
                    if not line:
                        raise failed(child)
                runs_on = line[2:].strip().decode()
                if want is not None and runs_on != want:
                    raise ServingError(f"a load generator process runs on CPUs {runs_on}, not {want}")
            for child in children:
                assert child.stdin is not None
                child.stdin.write(b"G\n")
                child.stdin.close()
            for child, path in zip(children, results):
                try:
                    child.wait(duration + 120)
                except subprocess.TimeoutExpired:
                    raise failed(child) from None
                try:
                    with open(path, "rb") as f:
                        kind, value = pickle.load(f)
                except (OSError, EOFError, pickle.UnpicklingError):
                    raise failed(child) from None
                if kind != "ok":
                    raise ServingError(f"a load generator process failed: {value}")
                lat += value[0]
                elapsed = max(elapsed, value[1])
                errors += value[2]
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
                for stream in (child.stdin, child.stdout):
                    if stream is not None and not stream.closed:
                        stream.close()
    return lat, elapsed, errors


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop  # type: ignore[import-not-found]

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is optional
        return asyncio.run(coro)


def bench_server(
    url: str,
    *,
    model: str | None = None,
    protocols: Sequence[str] | None = None,
    batches: Sequence[int] = (1,),
    concurrency: Sequence[int] = (1,),
    duration: float = 5.0,
    dims: dict[str, int] | None = None,
    api_key: str | None = None,
    processes: int = 1,
    cpus: str | Sequence[int] | None = None,
) -> BenchResult:
    """Put closed-loop load on a running server and measure each (protocol, batch, concurrency).

    ``url`` is ``http://HOST:PORT`` (protocols ``json`` and ``binary``) or ``grpc://HOST:PORT``
    (protocol ``grpc``); the model is ``--model``, the URL's ``/v2/models/NAME``, or the only one.
    ``processes`` generator processes share each point's concurrency (at most one per request in
    flight; gRPC: one connection each), started together. ``cpus`` (``"1"``, ``"0,2"``, ``"2-3"``
    or a list of ints) pins the generator to those CPUs: pin the server to the others (``taskset``)
    and the server, not the shared cores, is measured.

    Example:
        >>> print(bench_server("http://127.0.0.1:8000", concurrency=[1, 32], duration=5))  # doctest: +SKIP

    Raises:
        UsageError: a bad URL or protocol for it. ServingError: the server cannot be reached.
    """
    target = Target.parse(url, model)
    if processes < 1:
        raise UsageError(f"--processes {processes}: expected 1 or more load generator processes")
    pinned = None if cpus is None else parse_cpus(cpus)
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    allowed = ("grpc",) if target.scheme == "grpc" else ("json", "binary")
    protos = list(protocols or allowed)
    for p in protos:
        if p not in allowed:
            raise UsageError(f"--protocol {p} does not go to {url}; with this URL use: {', '.join(allowed)}")
    if target.scheme == "grpc":
        name, meta = grpc_model_inputs(target, headers)
    else:
        name, meta = http_model_inputs(target, headers)
    result = BenchResult()
    for proto in protos:
        for batch in batches:
            inputs = request_inputs(meta, batch, dims or {})
            for c in concurrency:
                if proto == "grpc":
                    req = grpc_request_bytes(name, inputs)
                else:
                    req = http_request_bytes(target, name, inputs, proto == "binary", headers)
                lat, elapsed, errors = _load_in_processes(
                    target, proto, req, headers, c, duration, processes, pinned
                )
                result.append(
                    summarize(
                        lat, elapsed, errors, target=url, model=name, mode=proto, batch=batch, concurrency=c
                    )
                )
    return result
