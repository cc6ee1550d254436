"""Serving benchmark: torchport's v2 server vs in-process ONNX Runtime vs a naive FastAPI + eager PyTorch server.

Prints one table:
  (1) p50/p99 latency of a tiny model through the server (JSON and binary tensors) vs session.run in-process;
  (2) throughput of the example CNN (3x32x32) at concurrency 1, 8, 32, JSON and binary, with and without
      dynamic batching;
  (3) the same CNN behind a naive FastAPI + uvicorn server that parses the JSON and runs the eager PyTorch
      model per request, same load. Ratios are against (3) at the same concurrency;
  (4) the concurrency-1 latency floor: the tiny model through torchport vs a bare httptools server that
      answers the same request with the same response bytes, head and body (ratio of p50s, target <= 1.3),
      and vs that echo also running the model once per request; with --baseline-ref REF, torchport at
      another commit too (c=1 p50, and c=32 req/s as a ratio);
  (5) gRPC (Triton's GRPCInferenceService) vs HTTP binary tensors on the CNN, both driven by `torchport
      bench`'s load generator (pre-encoded requests; ratio of req/s, target >= 1 at c=32), interleaved
      rounds, with the server's CPU per request and the mean batch; plus one row through grpcio's client;
  (6) a hot reload under c=32 load: a new version lands in a --model-control poll repository mid-run;
      requests lost must be 0;
  (7) the breakdown of one c=1 request: each step timed in process (the rest of (4)'s gap is glue:
      request objects, routing, the event loop and its syscalls);
  (8) the CNN at c=1 and c=32 through torchport and the servers users pick instead, same model and
      ONNX Runtime settings: Triton's own server (the tritonserver PyTriton bundles, HTTP and gRPC),
      KServe's ModelServer, MLServer, and the bare echo as the floor; JSON and binary, interleaved
      rounds, ratios against torchport. Each peer runs from its own virtualenv (.venv-NAME, made by
      `bash scripts/bench_peers.sh`); one not installed is skipped with the reason (see PEERS).
In-process numbers come from `torchport bench` (torchport.runtimes._bench.bench_package).

Load comes from wrk (Debian package `wrk`) on loopback for a fixed duration; without wrk, a Python asyncio
generator sends a fixed number of requests (slower: it competes for the same cores).

With --split-cores (the default on a machine with 2 or more CPUs) every server under test (torchport,
PyTriton's Python process and the tritonserver and stubs it starts, KServe, MLServer, the echo, the
naive server) runs on one half of the CPUs and every load generator (wrk, `torchport bench`'s
processes, the grpcio client, this script's own process, so the in-process reference rows too) on the
other half, as if the load came from another machine; every row gets the same treatment, so the
ratios stay fair. --no-split-cores shares all CPUs between them (on 2 cores the generator then takes
CPU from the server it measures).

    python benchmarks/serve.py                  # ~2 minutes
    python benchmarks/serve.py --repeat 3 --delays 0 2   # median of 3, batching also with a 2 ms queue delay
    python benchmarks/serve.py --duration 3 --concurrency 1 32
    python benchmarks/serve.py --sections floor breakdown --repeat 3 --baseline-ref main~10   # before/after
    python benchmarks/serve.py --sections peers --concurrency 1 32 --repeat 3   # vs Triton, KServe, MLServer
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
# --split-cores: the CPUs servers run on and the CPUs load generators run on (None: not pinned)
PIN: dict[str, list[int] | None] = {"server": None, "generator": None}


def _pinned(role: str):
    """A ``preexec_fn`` pinning a child (and every process and thread it starts) to ``role``'s CPUs."""
    cpus = PIN[role]
    return None if cpus is None else lambda: os.sched_setaffinity(0, cpus)


def split_cpus() -> tuple[list[int], list[int]]:
    """(server CPUs, generator CPUs): the CPUs this process may use, halved (the server the larger half)."""
    cpus = sorted(os.sched_getaffinity(0))
    half = (len(cpus) + 1) // 2
    return cpus[:half], cpus[half:]


sys.path.insert(0, str(REPO_ROOT))

from torchport.runtimes._table import format_table  # noqa: E402

LUA = """
wrk.method = "POST"
local f = io.open(os.getenv("BODY_FILE"), "rb"); wrk.body = f:read("*a"); f:close()
wrk.headers["Content-Type"] = "application/json"
local hl = os.getenv("HEADER_LEN")
if hl and hl ~= "" then
  wrk.headers["Inference-Header-Content-Length"] = hl
  wrk.headers["Content-Type"] = "application/octet-stream"  -- JSON header + raw tensor bytes
end
"""

NAIVE_APP = """
import os

import torch
from fastapi import FastAPI, Request
from torchport.exporters.examples import cnn

torch.set_grad_enabled(False)
if os.environ.get("NAIVE_TORCH_THREADS"):
    torch.set_num_threads(int(os.environ["NAIVE_TORCH_THREADS"]))
model = cnn.make_model()
app = FastAPI()


@app.post("/v2/models/cnn/infer")
async def infer(request: Request):
    req = await request.json()
    inp = req["inputs"][0]
    x = torch.tensor(inp["data"], dtype=torch.float32).reshape(inp["shape"])
    y = model(x)
    return {
        "model_name": "cnn",
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": list(y.shape), "data": y.flatten().tolist()}],
    }


@app.get("/v2/health/ready")
def ready():
    return {"ready": True}
"""


KSERVE_APP = """
import sys

import onnxruntime as ort
from kserve import Model, ModelServer
from kserve.protocol.infer_type import InferOutput, InferResponse


class Cnn(Model):
    def __init__(self):
        super().__init__("cnn")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.sess = ort.InferenceSession(sys.argv[2], opts, providers=["CPUExecutionProvider"])
        self.input = self.sess.get_inputs()[0].name
        self.ready = True

    def predict(self, payload, headers=None, response_headers=None):
        (y,) = self.sess.run(None, {self.input: payload.inputs[0].as_numpy()})
        out = InferOutput(name="logits", shape=list(y.shape), datatype="FP32")
        binary = payload.use_binary_outputs  # the request's binary_data_output
        out.set_data_from_numpy(y, binary_data=binary)
        return InferResponse(
            model_name="cnn", infer_outputs=[out], response_id=payload.id or "0", use_binary_outputs=binary
        )


ModelServer(http_port=int(sys.argv[1]), enable_grpc=False, enable_latency_logging=False).start([Cnn()])
"""


PYTRITON_APP = """
import sys

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

http_port, grpc_port, metrics_port, model = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name


@batch
def infer(image):
    (y,) = sess.run(None, {name: image})
    return {"logits": y}


config = TritonConfig(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, log_verbose=0)
with Triton(config=config) as triton:
    triton.bind(
        model_name="cnn",
        infer_func=infer,
        inputs=[Tensor(name="image", dtype=np.float32, shape=(3, 32, 32))],
        outputs=[Tensor(name="logits", dtype=np.float32, shape=(10,))],
        config=ModelConfig(max_batch_size=32),
    )
    triton.serve()
"""


MLSERVER_RUNTIME = """
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxCnn(MLModel):
    async def load(self) -> bool:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.sess = ort.InferenceSession(self.settings.parameters.uri, opts, providers=["CPUExecutionProvider"])
        self.input = self.sess.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        (y,) = self.sess.run(None, {self.input: x})
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("logits", y)])
"""


ECHO_APP = """
import asyncio, sys

import httptools, uvloop

BODY = open(sys.argv[2], "rb").read()
ANSWER = f"HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: {len(BODY)}\\r\\n\\r\\n".encode() + BODY
RUN = None
if len(sys.argv) > 3:  # also run this ONNX model once per request (its answer is not used)
    import numpy as np, onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(sys.argv[3], opts, providers=["CPUExecutionProvider"])
    feed = {i.name: np.ones([1] + i.shape[1:], np.float32) for i in sess.get_inputs()}
    RUN = lambda: sess.run(None, feed)


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data):
        self.parser.feed_data(data)

    def on_message_complete(self):
        if RUN is not None:
            RUN()
        self.transport.write(ANSWER)


async def main():
    server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()


uvloop.run(main())
"""


# -- model packages ------------------------------------------------------------------------------


def make_tiny_package(dest: Path) -> Path:
    """y = relu(x @ W + b), x float32 [batch, 4] (built with onnx.helper)."""
    import onnx
    from onnx import helper, numpy_helper

    from torchport.runtimes import DimRange, Manifest, TensorSpec, write_package

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 3])],
        initializer=[
            numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W"),
            numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    with write_package(dest) as w:
        onnx.save(model, w.path / "model.onnx")
        w.commit(
            Manifest(
                name="tiny",
                inputs=[TensorSpec("x", "float32", ["batch", 4])],
                outputs=[TensorSpec("y", "float32", ["batch", 3])],
                dynamic_dims={"batch": DimRange(1, 64)},
            )
        )
    return dest


def make_cnn_package(dest: Path) -> Path:
    """The example CNN exported with torch.onnx.export(dynamo=True), batch dim dynamic."""
    import torch

    from torchport.exporters.examples import cnn
    from torchport.runtimes import DimRange, Manifest, TensorSpec, write_package

    model = cnn.make_model()
    program = torch.onnx.export(
        model,
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


# -- request bodies ------------------------------------------------------------------------------


def json_body(name: str, x: np.ndarray) -> tuple[bytes, str]:
    body = {
        "inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    }
    return json.dumps(body).encode(), ""


def binary_body(name: str, x: np.ndarray) -> tuple[bytes, str]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + x.tobytes(), str(len(header))


# -- servers -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(
        self, argv: list[str], port: int, ready_path: str, env: dict | None = None, cwd: Path | None = None
    ) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            preexec_fn=_pinned("server"),  # before exec: what it starts inherits the CPUs
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {' '.join(argv)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not become ready: {' '.join(argv)}")

    def post(self, path: str, body: bytes, header_len: str = "") -> bytes:
        """POST and return the JSON part of the response."""
        headers = {"Content-Type": "application/json"}
        if header_len:
            headers["Inference-Header-Content-Length"] = header_len
            headers["Content-Type"] = "application/octet-stream"
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, headers=headers)
        with urllib.request.urlopen(req, timeout=30) as r:
            data = r.read()
            hlen = r.headers.get("Inference-Header-Content-Length")
            return data[: int(hlen)] if hlen else data  # the JSON part

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def torchport_server(
    package: Path,
    *,
    batching: bool,
    delay_ms: float = 0.0,
    threads: int | None = None,
    extra: tuple[str, ...] = (),
    pythonpath: Path | None = None,
) -> ServerProcess:
    """``torchport serve`` in a subprocess (with ``pythonpath``: the torchport found there, see
    :func:`baseline_tree`)."""
    port = free_port()
    argv = [sys.executable, "-m", "torchport.cli", "serve", str(package), "--port", str(port)]
    argv += ["--max-batch-size", "32" if batching else "1", "--max-queue-delay-ms", f"{delay_ms:g}"]
    if threads:
        argv += ["--threads", str(threads)]
    env = {"PYTHONPATH": str(pythonpath)} if pythonpath is not None else None
    # run from that folder: ``python -m`` puts the working directory first on sys.path
    return ServerProcess(argv + list(extra), port, "/v2/health/ready", env=env, cwd=pythonpath)


def baseline_tree(ref: str, workdir: Path) -> Path:
    """Another commit of this repository, importable as ``torchport`` from the returned folder
    (``git archive`` plus the package layout the editable install maps), to compare in one run."""
    src = workdir / "baseline-src"
    shim = workdir / "baseline-path"
    if shim.exists():  # already made (and checked) by another section of this run
        return shim
    src.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", ref], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    (shim / "torchport").mkdir(parents=True)
    (shim / "torchport" / "__init__.py").symlink_to(src / "torchport" / "__init__.py")
    for sub in ("runtimes", "exporters", "deploy", "cli"):
        (shim / "torchport" / sub).symlink_to(src / sub)
    where = subprocess.run(
        [sys.executable, "-c", "import torchport.runtimes.server as m; print(m.__file__)"],
        capture_output=True,
        text=True,
        cwd=shim,
        env={**os.environ, "PYTHONPATH": str(shim)},
    ).stdout.strip()
    if not where.startswith(str(shim)):  # never compare this tree with itself by mistake
        raise RuntimeError(f"the baseline tree imports torchport from {where!r}, not from {shim}")
    return shim


#: where a peer server's Python lives when it is not importable here: its own virtual environment
#: (its dependencies clash with torchport's), ``.venv-NAME``, made by ``bash scripts/bench_peers.sh``;
#: TORCHPORT_BENCH_<NAME>_PYTHON names the one interpreter to use instead
PEERS = {
    "kserve": ("kserve", "kserve"),
    "pytriton": ("pytriton.triton", "nvidia-pytriton"),
    "mlserver": ("mlserver", "mlserver"),
}


def peer_python(name: str) -> tuple[str | None, str]:
    """The interpreter that can run peer ``name`` (this one, its ``.venv-NAME`` or the one
    TORCHPORT_BENCH_<NAME>_PYTHON names), or None and the reason it is skipped."""
    module, package = PEERS[name]
    named = os.environ.get(f"TORCHPORT_BENCH_{name.upper()}_PYTHON")
    candidates = [named] if named else [sys.executable, str(REPO_ROOT / f".venv-{name}" / "bin" / "python")]
    for python in candidates:
        if not python or not Path(python).exists():
            continue
        probe = subprocess.run(
            [python, "-c", f"import {module}, onnxruntime"], capture_output=True, timeout=120
        )
        if probe.returncode == 0:
            return python, ""
    where = f"in {named}" if named else f"here nor in .venv-{name}"
    return None, f"{package} is not installed {where} (bash scripts/bench_peers.sh {name})"


def kserve_server(workdir: Path, package: Path) -> ServerProcess | None:
    """KServe's Python ModelServer running the package's ONNX model with ONNX Runtime (None without kserve)."""
    python, _ = peer_python("kserve")
    if python is None:
        return None
    (workdir / "kserve_app.py").write_text(KSERVE_APP)
    port = free_port()
    argv = [python, str(workdir / "kserve_app.py"), str(port), str(package / "model.onnx")]
    return ServerProcess(argv, port, "/v2/health/ready")


def pytriton_server(workdir: Path, package: Path, python: str) -> tuple[ServerProcess, int]:
    """Triton Inference Server (the tritonserver PyTriton bundles) serving the package's ONNX model
    through a PyTriton Python model running ONNX Runtime (1 intra-op thread, dynamic batching up to
    32); returns the server and its gRPC port."""
    (workdir / "pytriton_app.py").write_text(PYTRITON_APP)
    port, gport, mport = free_port(), free_port(), free_port()
    argv = [
        python,
        str(workdir / "pytriton_app.py"),
        str(port),
        str(gport),
        str(mport),
        str(package / "model.onnx"),
    ]
    # the Python backend's stub links libpython by soname: the interpreter's own library must come
    # first (a system libpython of another patch release breaks the stub's multiprocessing)
    libdir = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env = {"LD_LIBRARY_PATH": ":".join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))}
    return ServerProcess(argv, port, "/v2/models/cnn/ready", env=env, cwd=workdir), gport


def mlserver_server(workdir: Path, package: Path, python: str) -> ServerProcess:
    """Seldon's MLServer serving the package's ONNX model through a custom runtime running ONNX
    Runtime (1 intra-op thread), in the server's own process (parallel_workers 0, as KServe)."""
    folder = workdir / "mlserver"
    folder.mkdir(exist_ok=True)
    (folder / "runtime.py").write_text(MLSERVER_RUNTIME)
    port, gport, mport = free_port(), free_port(), free_port()
    settings = {"http_port": port, "grpc_port": gport, "metrics_port": mport, "parallel_workers": 0}
    (folder / "settings.json").write_text(json.dumps(settings))
    model = {
        "name": "cnn",
        "implementation": "runtime.OnnxCnn",
        "parameters": {"uri": str(package / "model.onnx")},
    }
    (folder / "model-settings.json").write_text(json.dumps(model))
    mlserver = str(Path(python).parent / "mlserver")
    return ServerProcess([mlserver, "start", str(folder)], port, "/v2/models/cnn/ready", cwd=folder)


def kserve_baseline(
    package: Path, body: bytes, expected: np.ndarray, args, workdir: Path, results: dict
) -> list:
    """(3) the CNN behind KServe's own Python server (when `pip install kserve` worked), same load."""
    srv = kserve_server(workdir, package)
    if srv is None:
        print(
            "kserve is not installed: no KServe baseline rows (pip install kserve to add them)",
            file=sys.stderr,
        )
        return []
    out = []
    try:
        got = np.array(json.loads(srv.post("/v2/models/cnn/infer", body))["outputs"][0]["data"])
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)  # same model, same answer
        for c in args.concurrency:
            r = load(srv, "/v2/models/cnn/infer", body, "", c, args, workdir)
            results.setdefault("kserve", {})[f"c{c}"] = r
            out.append((c, r))
    finally:
        srv.stop()
    return out


def echo_server(workdir: Path, response: bytes, model: Path | None = None) -> ServerProcess:
    """A bare httptools + uvloop server answering every request with ``response`` (the c=1 floor);
    with ``model``, it also runs that ONNX model once per request (ONNX Runtime, one thread)."""
    (workdir / "echo_app.py").write_text(ECHO_APP)
    (workdir / "echo_response.json").write_bytes(response)
    port = free_port()
    argv = [sys.executable, str(workdir / "echo_app.py"), str(port), str(workdir / "echo_response.json")]
    if model is not None:
        argv.append(str(model))
    return ServerProcess(argv, port, "/")


def raw_response(port: int, path: str, body: bytes) -> bytes:
    """The whole HTTP response (head and body) to one JSON POST, as bytes."""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
        while len(rest) < length:
            rest += sock.recv(65536)
    return head + b"\r\n\r\n" + rest


def naive_server(workdir: Path, torch_threads: int | None = None) -> ServerProcess:
    (workdir / "naive_app.py").write_text(textwrap.dedent(NAIVE_APP))
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "naive_app:app", "--port", str(port), "--log-level", "warning"]
    argv += ["--app-dir", str(workdir), "--no-access-log"]
    env = {"PYTHONPATH": str(REPO_ROOT)}
    if torch_threads:
        env["NAIVE_TORCH_THREADS"] = str(torch_threads)
    return ServerProcess(argv, port, "/v2/health/ready", env=env)


# -- load generation -----------------------------------------------------------------------------


def _seconds(value: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)", value)
    assert m, value
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(2)]


def run_wrk(url: str, body: bytes, header_len: str, concurrency: int, duration: float, workdir: Path) -> dict:
    body_file = workdir / f"body-{abs(hash(body))}.bin"
    body_file.write_bytes(body)
    script = workdir / "post.lua"
    script.write_text(LUA)
    proc = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "BODY_FILE": str(body_file), "HEADER_LEN": header_len},
        timeout=duration + 60,
        preexec_fn=_pinned("generator"),
    )
    out = proc.stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out}{proc.stderr}")
    rps = float(m.group(1))
    p50 = _seconds(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _seconds(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise RuntimeError(f"load run had failed requests:\n{out}")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": rps,
        "p50": p50,
        "p99": p99,
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
    }


async def _py_load(port: int, path: str, body: bytes, header_len: str, concurrency: int, total: int) -> dict:
    kind = "application/octet-stream" if header_len else "application/json"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
    )
    if header_len:
        head += f"Inference-Header-Content-Length: {header_len}\r\n"
    request = head.encode() + b"\r\n" + body
    latencies: list[float] = []
    remaining = [total]

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while remaining[0] > 0:
            remaining[0] -= 1
            t0 = time.perf_counter()
            writer.write(request)
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if b" 200 " not in status:
                raise RuntimeError(f"status {status!r}")
            latencies.append(time.perf_counter() - t0)
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def load(
    server: ServerProcess, path: str, body: bytes, header_len: str, concurrency: int, args, workdir: Path
) -> dict:
    """One load point; with --repeat N, the run with the median throughput of N runs."""
    runs = []
    for _ in range(max(1, args.repeat)):
        if args.generator == "wrk":
            url = f"http://127.0.0.1:{server.port}{path}"
            runs.append(run_wrk(url, body, header_len, concurrency, args.duration, workdir))
        else:
            total = max(concurrency * 20, int(args.requests))
            runs.append(asyncio.run(_py_load(server.port, path, body, header_len, concurrency, total)))
    runs.sort(key=lambda r: r["rps"])
    return runs[len(runs) // 2]


# -- in-process reference ------------------------------------------------------------------------


def in_process_latency(package: Path, seconds: float = 1.0) -> dict:
    """p50/p99 of session.run at batch 1, concurrency 1 (torchport bench, in process)."""
    from torchport.runtimes._bench import bench_package

    (row,) = bench_package(package, variants=["fp32"], duration=seconds, intra_op_threads=1)
    return {"p50": row.p50_ms / 1e3, "p99": row.p99_ms / 1e3}


def in_process_throughput(package: Path, batch: int, seconds: float = 1.0) -> float:
    """Rows/s of session.run at ``batch`` rows, one caller (torchport bench, in process)."""
    from torchport.runtimes._bench import bench_package

    (row,) = bench_package(package, variants=["fp32"], batches=[batch], duration=seconds, intra_op_threads=1)
    return row.rows_per_s


# -- floor, gRPC, hot reload ---------------------------------------------------------------------


def floor_rows(tiny: Path, args, workdir: Path, results: dict) -> list[tuple[str, ...]]:
    """(4) c=1 p50 of torchport vs a bare httptools echo sending the very same response bytes (head
    and body, checked), and vs that echo also running the model once per request (the floor with
    the model's own run in it). With --baseline-ref, torchport at that commit too, and the c=32
    req/s of both versions (ratio new / baseline). Every load point is interleaved over rounds."""
    xt = np.random.default_rng(1).standard_normal((1, 4)).astype(np.float32)
    body, _ = json_body("x", xt)
    path = "/v2/models/tiny/infer"
    servers: dict[str, ServerProcess] = {}
    out = []
    try:
        servers["torchport JSON, default flags"] = torchport_server(tiny, batching=True)
        servers["torchport JSON, --no-access-log"] = torchport_server(
            tiny, batching=True, extra=("--no-access-log",)
        )
        if args.baseline_ref:
            base_path = baseline_tree(args.baseline_ref, workdir)
            servers[f"torchport JSON at {args.baseline_ref}, default flags"] = torchport_server(
                tiny, batching=True, pythonpath=base_path
            )
        response = raw_response(servers["torchport JSON, default flags"].port, path, body)
        answer = response.partition(b"\r\n\r\n")[2]
        echo_label = f"bare httptools echo, same {len(response)} B"
        servers[echo_label] = echo_server(workdir, answer)
        servers["echo + the same ORT run"] = echo_server(workdir, answer, tiny / "model.onnx")
        for label, srv in servers.items():
            got = raw_response(srv.port, path, body)
            if got != response:  # the comparison is only fair for identical bytes on the wire
                raise RuntimeError(f"{label} answers {got!r}, torchport answers {response!r}")
        runs: dict[str, list[dict]] = {label: [] for label in servers}
        for _ in range(max(3, args.repeat)):  # interleaved, so all see the same machine
            for label, srv in servers.items():
                runs[label].append(load(srv, path, body, "", 1, args, workdir))
        p50 = {label: statistics.median(r["p50"] for r in rs) for label, rs in runs.items()}
        floor = p50[echo_label]
        floor_run = p50["echo + the same ORT run"]
        for label, rs in runs.items():
            ratio = p50[label] / floor
            results.setdefault("floor", {})[label] = {
                "p50": p50[label],
                "echo_p50": floor,
                "ratio": ratio,
                "ratio_vs_echo_with_run": p50[label] / floor_run,
                "response_bytes": len(response),
            }
            note = f"{ratio:.2f}x echo p50"
            if label.startswith("torchport"):
                note += f" (target <= 1.3), {p50[label] / floor_run:.2f}x echo+run"
            rps = statistics.median(r["rps"] for r in rs)
            out.append(("4 c=1 floor", label, "1", f"{rps:.0f}", f"{p50[label] * 1e3:.3f}", "", note, ""))
        if args.baseline_ref:
            out.extend(_baseline_throughput(servers, args, workdir, body, path, results))
    finally:
        for srv in servers.values():
            srv.stop()
    return out


def _baseline_throughput(
    servers: dict[str, ServerProcess], args, workdir: Path, body: bytes, path: str, results: dict
) -> list[tuple[str, ...]]:
    """c=32 req/s of this tree vs --baseline-ref on the tiny model (interleaved rounds)."""
    new = servers["torchport JSON, default flags"]
    base = servers[f"torchport JSON at {args.baseline_ref}, default flags"]
    rps: dict[str, list[float]] = {"new": [], "base": []}
    for _ in range(max(6, args.repeat)):  # c=32 on a shared machine is noisy: more rounds
        rps["new"].append(load(new, path, body, "", 32, args, workdir)["rps"])
        rps["base"].append(load(base, path, body, "", 32, args, workdir)["rps"])
    new_rps, base_rps = statistics.median(rps["new"]), statistics.median(rps["base"])
    results.setdefault("floor", {})["c32_rps"] = {"new": new_rps, "baseline": base_rps}
    return [
        (
            "4 c=32 vs baseline",
            f"torchport JSON at {args.baseline_ref}",
            "32",
            f"{base_rps:.0f}",
            "",
            "",
            "1.00x",
            "",
        ),
        (
            "4 c=32 vs baseline",
            "torchport JSON, this tree",
            "32",
            f"{new_rps:.0f}",
            "",
            "",
            f"{new_rps / base_rps:.2f}x baseline req/s",
            "",
        ),
    ]


def server_cpu(server: ServerProcess) -> float:
    """CPU seconds (user + system, all threads) the server process has used so far."""
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _grpcio_load(address: str, request: bytes, concurrency: int, duration: float) -> dict:
    """Closed-loop load through grpcio's asyncio client (the transport tritonclient.grpc uses)."""
    import asyncio

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
            "p50": lat[len(lat) // 2],
            "p99": lat[int(len(lat) * 0.99)],
            "n": len(lat),
        }

    return asyncio.run(run())


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children (the load generators)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def grpc_rows(cnn_pkg: Path, args, results: dict) -> list[tuple[str, ...]]:
    """(5) gRPC vs HTTP binary on one server: rounds interleaved (median of ``--repeat``, at least 3),
    HTTP binary and gRPC both from torchport bench's generator (pre-encoded requests: raw HTTP/1.1
    connections, h2c connections carrying the gRPC calls), from one generator process and from
    ``--load-processes`` (both protocols alike; gRPC then has one connection per process), with the
    server's and the generator's CPU per request; a last row with grpcio's own client."""
    from torchport.runtimes._loadgen import bench_server, grpc_request_bytes, request_inputs

    gport = free_port()
    srv = torchport_server(cnn_pkg, batching=True, extra=("--grpc-port", str(gport)))
    out = []
    rounds = max(3, args.repeat)
    try:

        def measure(run, *run_args, **run_kwargs):
            cpu0, n0 = server_cpu(srv), srv.metric("torchport_batch_size_count")
            rows0 = srv.metric("torchport_batch_size_sum")
            gen0 = time.process_time() + _children_cpu()
            r = run(*run_args, **run_kwargs)
            gen = time.process_time() + _children_cpu() - gen0
            cpu = server_cpu(srv) - cpu0
            batches = srv.metric("torchport_batch_size_count") - n0
            mean_batch = (srv.metric("torchport_batch_size_sum") - rows0) / max(batches, 1)
            return r, cpu, mean_batch, gen

        for c in sorted({1, 32} | set(args.concurrency)):
            settings = sorted({1, min(args.load_processes, c)})
            samples: dict[tuple[str, int], list] = {(p, n): [] for n in settings for p in ("binary", "grpc")}
            for _ in range(rounds):
                for proto, n in samples:
                    url = f"grpc://127.0.0.1:{gport}" if proto == "grpc" else f"http://127.0.0.1:{srv.port}"
                    (r,), cpu, mb, gen = measure(
                        bench_server,
                        url,
                        model="cnn",
                        protocols=[proto],
                        concurrency=[c],
                        duration=args.duration,
                        processes=n,
                        cpus=PIN["generator"],
                    )
                    if r.errors:
                        raise RuntimeError(f"failed {proto} requests: {r.errors}")
                    per = max(r.requests, 1)
                    samples[(proto, n)].append((r, cpu / per * 1e6, mb, gen / per * 1e6))
            summary = {}
            for key, got in samples.items():
                summary[key] = {
                    "rps": statistics.median(r.rps for r, _, _, _ in got),
                    "p50_ms": statistics.median(r.p50_ms for r, _, _, _ in got),
                    "p99_ms": statistics.median(r.p99_ms for r, _, _, _ in got),
                    "server_cpu_us_per_request": statistics.median(u for _, u, _, _ in got),
                    "generator_cpu_us_per_request": statistics.median(g for _, _, _, g in got),
                    "mean_batch": statistics.median(m for _, _, m, _ in got),
                    "rounds_rps": [r.rps for r, _, _, _ in got],
                }
            entry = results.setdefault("grpc", {}).setdefault(f"c{c}", {})
            for n in settings:
                ratio = summary[("grpc", n)]["rps"] / summary[("binary", n)]["rps"]
                entry[f"processes{n}"] = {
                    "binary": summary[("binary", n)],
                    "grpc": summary[("grpc", n)],
                    "ratio": ratio,
                }
                gens = f"{n} generator process{'es' if n > 1 else ''}"
                for label, proto, vs in (
                    ("HTTP binary", "binary", "1.00x"),
                    ("gRPC (h2c)", "grpc", f"{ratio:.2f}x binary (target >= 1 at c=32)"),
                ):
                    sm = summary[(proto, n)]
                    out.append(
                        (
                            "5 grpc vs binary",
                            f"torchport {label}, bench generator, {gens}; CPU/req: server "
                            f"{sm['server_cpu_us_per_request']:.0f} us, generator "
                            f"{sm['generator_cpu_us_per_request']:.0f} us"
                            + (" (their start-up included)" if n > 1 else ""),
                            str(c),
                            f"{sm['rps']:.0f}",
                            f"{sm['p50_ms']:.2f}",
                            f"{sm['p99_ms']:.2f}",
                            vs,
                            f"{sm['mean_batch']:.1f}",
                        )
                    )
            summary = {"binary": summary[("binary", 1)]}  # the grpcio row's reference
            try:
                import grpc  # noqa: F401
            except ImportError:
                continue
            meta = [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
            request = grpc_request_bytes("cnn", request_inputs(meta, 1, {}))
            g, cpu, mb, _ = measure(_grpcio_load, f"127.0.0.1:{gport}", request, c, args.duration)
            results["grpc"][f"c{c}"]["grpcio_client"] = {
                **g,
                "server_cpu_us_per_request": cpu / max(g["n"], 1) * 1e6,
            }
            out.append(
                (
                    "5 grpc vs binary",
                    f"torchport gRPC (grpcio aio client, 1 round), server {cpu / max(g['n'], 1) * 1e6:.0f} us CPU/req",
                    str(c),
                    f"{g['rps']:.0f}",
                    f"{g['p50'] * 1e3:.2f}",
                    f"{g['p99'] * 1e3:.2f}",
                    f"{g['rps'] / summary['binary']['rps']:.2f}x binary (1 process)",
                    f"{mb:.1f}",
                )
            )
    finally:
        srv.stop()
    return out


def reload_rows(cnn_pkg: Path, args, workdir: Path, results: dict) -> list[tuple[str, ...]]:
    """(6) a new version lands in a polled repository while 32 clients keep sending: 0 lost requests."""
    import threading

    from torchport.runtimes._loadgen import bench_server

    repo = workdir / "reload-repo"
    shutil.copytree(cnn_pkg, repo / "cnn" / "1")
    srv = torchport_server(repo, batching=True, extra=("--model-control", "poll", "--poll-interval", "0.2"))
    seconds = max(3.0, args.duration)
    try:
        box: list = []
        t = threading.Thread(
            target=lambda: box.extend(
                bench_server(
                    f"http://127.0.0.1:{srv.port}",
                    model="cnn",
                    protocols=["binary"],
                    concurrency=[32],
                    duration=seconds,
                    cpus=PIN["generator"],
                )
            )
        )
        t.start()
        time.sleep(seconds / 3)
        shutil.copytree(cnn_pkg, repo / "cnn" / ".2.tmp")
        os.rename(repo / "cnn" / ".2.tmp", repo / "cnn" / "2")  # lands whole: the poll sees it complete
        t.join()
        (row,) = box
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/v2/models/cnn/stats", timeout=10) as r:
            stats = {s["version"]: s for s in json.loads(r.read())["model_stats"]}
        by_v2 = stats.get("2", {}).get("inference_stats", {}).get("success", {}).get("count", 0)
        lost = row.errors
        results["hot_reload"] = {
            "requests": row.requests,
            "lost": lost,
            "served_by_v2": by_v2,
            "rps": row.rps,
        }
        if not 0 < by_v2 < row.requests:
            raise RuntimeError(
                f"the reload did not happen mid-run: {by_v2} of {row.requests} served by version 2"
            )
        return [
            (
                "6 hot reload",
                "torchport binary, v1 -> v2 mid-run (poll)",
                "32",
                f"{row.rps:.0f}",
                f"{row.p50_ms:.2f}",
                f"{row.p99_ms:.2f}",
                f"{lost} lost of {row.requests} (target 0)",
                f"{by_v2} on v2",
            )
        ]
    finally:
        srv.stop()


def peer_rows(cnn_pkg: Path, args, workdir: Path, results: dict) -> list[tuple[str, ...]]:
    """(8) the CNN through torchport and through the servers users pick instead, on the same model
    with the same ONNX Runtime settings (CPU, 1 intra-op thread): Triton's own server (the
    tritonserver PyTriton bundles, HTTP and gRPC), KServe's ModelServer, MLServer, and the bare
    httptools echo of torchport's JSON answer as the floor; JSON and binary tensors, at the lowest
    and highest of --concurrency. Every point is interleaved over rounds (median, with the range of
    the rounds' p50s); ratios are torchport's p50 over the peer's and torchport's req/s over the
    peer's, same encoding and concurrency. A peer that cannot run here is skipped with the reason."""
    from torchport.runtimes._loadgen import bench_server

    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    bodies = {"JSON": json_body("image", x), "binary": binary_body("image", x)}
    path = "/v2/models/cnn/infer"
    one = argparse.Namespace(**{**vars(args), "repeat": 1})
    points = sorted({min(args.concurrency), max(args.concurrency)})
    http: dict[str, tuple[ServerProcess, tuple[str, ...]]] = {}
    grpc_ports: dict[str, int] = {}
    procs: list[ServerProcess] = []
    out: list[tuple[str, ...]] = []
    try:
        gport = free_port()
        tp = torchport_server(cnn_pkg, batching=True, extra=("--grpc-port", str(gport)))
        procs.append(tp)
        http["torchport"] = (tp, ("JSON", "binary"))
        grpc_ports["torchport"] = gport
        expected = np.array(json.loads(tp.post(path, bodies["JSON"][0]))["outputs"][0]["data"])
        for peer, label in (
            ("pytriton", "PyTriton (tritonserver)"),
            ("kserve", "KServe ModelServer"),
            ("mlserver", "MLServer"),
        ):
            python, why = peer_python(peer)
            if python is None:
                print(f"no {label} rows: {why}", file=sys.stderr)
                out.append(("8 peers", label, "-", "", "", "", f"skipped: {why}", ""))
                continue
            if peer == "pytriton":
                srv, peer_gport = pytriton_server(workdir, cnn_pkg, python)
                grpc_ports[label] = peer_gport
            elif peer == "kserve":
                srv = kserve_server(workdir, cnn_pkg)
            else:
                srv = mlserver_server(workdir, cnn_pkg, python)
            procs.append(srv)
            # MLServer has no binary tensor extension over REST: JSON only
            http[label] = (srv, ("JSON",) if peer == "mlserver" else ("JSON", "binary"))
            got = np.array(json.loads(srv.post(path, bodies["JSON"][0]))["outputs"][0]["data"])
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)  # same model, same answer
        if args.baseline_ref:
            base = torchport_server(
                cnn_pkg, batching=True, pythonpath=baseline_tree(args.baseline_ref, workdir)
            )
            procs.append(base)
            http[f"torchport at {args.baseline_ref}"] = (base, ("JSON", "binary"))
        answer = raw_response(tp.port, path, bodies["JSON"][0]).partition(b"\r\n\r\n")[2]
        echo = echo_server(workdir, answer)
        procs.append(echo)
        http["bare httptools echo (floor)"] = (echo, ("JSON",))
        runs: dict[tuple[str, str, int], list[dict]] = {}
        for _ in range(max(3, args.repeat)):  # interleaved: every server sees the same machine
            for c in points:
                for label, (srv, encodings) in http.items():
                    for enc in encodings:
                        body, hl = bodies[enc]
                        cpu0 = server_cpu(srv)
                        r = load(srv, path, body, hl, c, one, workdir)
                        if label.startswith("torchport"):  # one process (a peer's may have several)
                            r["cpu_us"] = (
                                (server_cpu(srv) - cpu0)
                                / max(r["rps"] * max(1, round(args.duration)), 1)
                                * 1e6
                            )
                        runs.setdefault((label, f"HTTP {enc}", c), []).append(r)
                for label, port in grpc_ports.items():
                    (r,) = bench_server(
                        f"grpc://127.0.0.1:{port}",
                        model="cnn",
                        protocols=["grpc"],
                        concurrency=[c],
                        duration=args.duration,
                        cpus=PIN["generator"],
                    )
                    if r.errors:
                        raise RuntimeError(f"{label}: failed gRPC requests: {r.errors}")
                    runs.setdefault((label, "gRPC", c), []).append(
                        {"rps": r.rps, "p50": r.p50_ms / 1e3, "p99": r.p99_ms / 1e3}
                    )
        summary = {
            key: {
                "rps": statistics.median(r["rps"] for r in rs),
                "p50": statistics.median(r["p50"] for r in rs),
                "p99": statistics.median(r["p99"] for r in rs),
                "p50_range": [min(r["p50"] for r in rs), max(r["p50"] for r in rs)],
                "rps_rounds": [r["rps"] for r in rs],
                **(
                    {"server_cpu_us_per_request": statistics.median(r["cpu_us"] for r in rs)}
                    if all("cpu_us" in r for r in rs)
                    else {}
                ),
            }
            for key, rs in runs.items()
        }
        for (label, proto, c), sm in summary.items():
            ours = summary.get(("torchport", proto, c))
            entry = dict(sm)
            if ours is not None and label != "torchport":
                entry["torchport_p50_over_peer"] = ours["p50"] / sm["p50"]
                entry["torchport_rps_over_peer"] = ours["rps"] / sm["rps"]
            results.setdefault("peers", {})[f"{label} {proto} c{c}"] = entry
        order = sorted(summary, key=lambda k: (k[2], k[1], k[0] != "torchport"))
        for label, proto, c in order:
            sm = summary[(label, proto, c)]
            ours = summary.get(("torchport", proto, c))
            if label == "torchport" or ours is None:
                note = "1.00x" if label == "torchport" else ""
            else:
                note = f"torchport p50 {ours['p50'] / sm['p50']:.2f}x, req/s {ours['rps'] / sm['rps']:.2f}x"
            lo, hi = sm["p50_range"]
            cpu = sm.get("server_cpu_us_per_request")
            cpu_note = f", server {cpu:.0f} us CPU/req" if cpu is not None else ""
            out.append(
                (
                    "8 peers",
                    f"{label} {proto} (p50 {lo * 1e3:.3f}-{hi * 1e3:.3f} over rounds{cpu_note})",
                    str(c),
                    f"{sm['rps']:.0f}",
                    f"{sm['p50'] * 1e3:.3f}",
                    f"{sm['p99'] * 1e3:.3f}",
                    note,
                    "",
                )
            )
    finally:
        for srv in procs:
            srv.stop()
    return out


SECTIONS = ("latency", "throughput", "floor", "grpc", "reload", "breakdown", "peers")


def breakdown_rows(
    tiny: Path, results: dict, n: int = 20000, cnn: Path | None = None
) -> list[tuple[str, ...]]:
    """(7) what one c=1 JSON request of the tiny model costs, step by step, in this process (µs, median
    of 5 timings of n calls, CPU time), then the whole request through the server's real HTTP
    protocol and application objects without a socket (CPU time per request, see
    :func:`in_process_request_cpu`): that minus the steps is the glue (request/response objects,
    routing, callbacks, one event-loop iteration). The rest of (4)'s gap is the socket's syscalls.
    With ``cnn``, the steps of one c=1 JSON request of the CNN (3,072 floats, the peers' model)
    follow: the JSON parse, the whole decode and check, the run."""
    import io
    import timeit

    import httptools

    from torchport.runtimes import Session
    from torchport.runtimes.server._accesslog import configure_logging, flush_access_log, log_access
    from torchport.runtimes.server._http import Response, _head
    from torchport.runtimes.server._metrics import ServerMetrics
    from torchport.runtimes.server._protocol import decode_infer_request, encode_infer_response
    from torchport.runtimes.server._signature import InputSignature
    from torchport.runtimes.server._stats import ModelStats

    sess = Session.from_package(tiny, intra_op_threads=1, inter_op_threads=1, spinning=False)
    body, _ = json_body("x", np.ones((1, 4), np.float32))
    raw = b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
    raw += b"Content-Length: %d\r\n\r\n" % len(body) + body

    class Sink:
        def on_url(self, url):
            pass

        def on_header(self, name, value):
            pass

        def on_body(self, data):
            pass

    parser = httptools.HttpRequestParser(Sink())
    signature = InputSignature.of(sess)
    ireq = decode_infer_request(body, None, {"x": "FP32"}, signature=signature)
    out = sess.run_prepared(ireq.inputs)
    m = ServerMetrics()
    stats = ModelStats()
    configure_logging(True, io.StringIO())

    def metrics() -> None:
        m.requests.inc("tiny", "infer", "200")
        m.latency.observe(1e-4, "tiny")
        m.queue_time.observe(0.0, "tiny")
        m.batch_size.observe(1, "tiny")
        m.requests_per_batch.observe(1, "tiny")
        m.compute_time.observe(1e-5, "tiny")
        stats.batch_done(1, 1, 1e-5)
        stats.request_done(1e-4, 0.0, 1)

    def access() -> None:
        log_access(
            client="127.0.0.1:1",
            method="POST",
            path="/v2/models/tiny/infer",
            status=200,
            duration=1e-4,
            bytes_in=len(body),
            bytes_out=126,
            model="tiny",
            request_id=None,
        )

    steps = [
        ("HTTP parse (httptools)", lambda: parser.feed_data(raw)),
        (
            "decode + check JSON request",
            lambda: decode_infer_request(body, None, {"x": "FP32"}, signature=signature),
        ),
        ("ONNX Runtime run", lambda: sess.run_prepared(ireq.inputs)),
        (
            "encode JSON response",
            lambda: encode_infer_response("tiny", "1", None, out, {"y": "FP32"}, None, False),
        ),
        ("response head", lambda: _head(200, Response(200), 126, True)),
        ("metrics and statistics (8 updates)", metrics),
        ("access log line (format and write)", access),
    ]
    rows, total = [], 0.0
    for label, fn in steps:
        us = statistics.median(timeit.repeat(fn, number=n, repeat=5, timer=time.thread_time)) / n * 1e6
        total += us
        results.setdefault("breakdown_us", {})[label] = us
        rows.append(("7 c=1 breakdown", label, "1", "", f"{us / 1e3:.4f}", "", f"{us:.2f} us", ""))
    flush_access_log()
    configure_logging(False)
    cnn_rows = []  # after the tiny model's rows (its sum and glue are of those steps only)
    if cnn is not None:
        from torchport.runtimes.server._protocol import json_loads

        csess = Session.from_package(cnn, intra_op_threads=1, inter_op_threads=1, spinning=False)
        cbody, _ = json_body(
            "image", np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
        )
        csig = InputSignature.of(csess)
        creq = decode_infer_request(cbody, None, {"image": "FP32"}, signature=csig)
        for label, fn in (
            (f"CNN JSON: orjson parse of the {len(cbody) // 1000} KB body", lambda: json_loads(cbody)),
            (
                "CNN JSON: decode + check (parse included)",
                lambda: decode_infer_request(cbody, None, {"image": "FP32"}, signature=csig),
            ),
            ("CNN: ONNX Runtime run", lambda: csess.run_prepared(creq.inputs)),
        ):
            m_ = max(1, n // 40)
            us = statistics.median(timeit.repeat(fn, number=m_, repeat=5, timer=time.thread_time)) / m_ * 1e6
            results.setdefault("breakdown_us", {})[label] = us
            cnn_rows.append(("7 c=1 breakdown", label, "1", "", f"{us / 1e3:.4f}", "", f"{us:.2f} us", ""))
    rows.append(
        ("7 c=1 breakdown", "sum of the steps", "1", "", f"{total / 1e3:.4f}", "", f"{total:.2f} us", "")
    )
    whole = in_process_request_cpu(tiny, raw) * 1e6
    results["breakdown_us"]["whole request, in process"] = whole
    rows.append(
        (
            "7 c=1 breakdown",
            "whole request through HttpProtocol + app, no socket (CPU)",
            "1",
            "",
            f"{whole / 1e3:.4f}",
            "",
            f"{whole:.2f} us, glue {whole - total:.2f} us",
            "",
        )
    )
    return rows + cnn_rows


def in_process_request_cpu(package: Path, raw: bytes, n: int = 3000) -> float:
    """CPU seconds per request of ``raw`` (one HTTP request) through the server's own protocol and
    application objects on a running event loop, one at a time (concurrency 1), without a socket:
    the transport only records what is written. Median of 5 timings of n requests."""
    import io

    from torchport.runtimes.server import InferenceServer, ServerConfig
    from torchport.runtimes.server._accesslog import configure_logging
    from torchport.runtimes.server._http import HttpProtocol

    class Transport:
        written = 0

        def write(self, data: bytes) -> None:
            self.written += 1

        def get_extra_info(self, name: str, default=None):
            return ("127.0.0.1", 50000) if name == "peername" else default

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

        def close(self) -> None:
            pass

    async def measure() -> float:
        configure_logging(True, io.StringIO())  # the default: access lines on
        server = InferenceServer(package, ServerConfig(port=0))
        task = asyncio.ensure_future(server.serve(install_signal_handlers=False))
        while not server.app.loaded:
            await asyncio.sleep(0.01)
        transport = Transport()
        conn = HttpProtocol(server.app, server.http)
        conn.connection_made(transport)

        async def requests(count: int) -> float:
            t0 = time.thread_time()
            for _ in range(count):
                before = transport.written
                conn.data_received(raw)
                await asyncio.sleep(0)  # the loop iteration a real request also goes through
                while transport.written == before:
                    await asyncio.sleep(0)
            return (time.thread_time() - t0) / count

        await requests(n)  # warm up (the runner times its runs before running inline)
        timings = [await requests(n) for _ in range(5)]
        server._begin_shutdown()
        await task
        configure_logging(False)
        return statistics.median(timings)

    try:
        import uvloop  # type: ignore[import-not-found]

        return uvloop.run(measure())
    except ImportError:
        return asyncio.run(measure())


# -- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument(
        "--delays", type=float, nargs="+", default=[0.0], help="max queue delays (ms) to run with batching on"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per load point; the median is reported")
    parser.add_argument(
        "--requests", type=int, default=2000, help="requests per run with the Python generator"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--generator", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python"
    )
    parser.add_argument(
        "--load-processes",
        type=int,
        default=4,
        help="generator processes for section 5's second set of rows (HTTP binary and gRPC alike)",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--split-cores",
        action=argparse.BooleanOptionalAction,
        default=len(os.sched_getaffinity(0)) >= 2,
        help="pin every server to one half of the CPUs and every load generator (and this process) to "
        "the other half (default: on with 2 or more CPUs)",
    )
    parser.add_argument(
        "--baseline-ref",
        help="also run torchport at this git commit in the floor section (c=1 p50 vs the echo, and "
        "c=32 req/s vs this tree) and among the peers, e.g. --baseline-ref main~5",
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        help="which parts to run (default: all): latency (1), throughput (2, 3), floor (4), grpc (5), reload (6), "
        "breakdown (7), peers (8)",
    )
    args = parser.parse_args()
    if args.split_cores:
        if len(os.sched_getaffinity(0)) < 2:
            parser.error("--split-cores needs 2 or more CPUs; this process may use 1")
        PIN["server"], PIN["generator"] = split_cpus()
        os.sched_setaffinity(0, PIN["generator"])  # the grpcio client's threads, in-process rows

    workdir = Path(tempfile.mkdtemp(prefix="torchport-bench-"))
    rows: list[tuple[str, ...]] = []
    results: dict = {"generator": args.generator, "cpus": os.cpu_count(), "pinned": dict(PIN)}
    try:
        tiny = make_tiny_package(workdir / "tiny")
        cnn_pkg = make_cnn_package(workdir / "cnn")
        rng = np.random.default_rng(0)

        if "latency" in args.sections:
            # (1) tiny model latency
            xt = rng.standard_normal((1, 4)).astype(np.float32)
            ref = in_process_latency(tiny)
            results["tiny_in_process"] = ref
            rows.append(
                (
                    "1 tiny latency",
                    "in-process session.run",
                    "1",
                    "",
                    f"{ref['p50'] * 1e3:.3f}",
                    f"{ref['p99'] * 1e3:.3f}",
                    "",
                    "",
                )
            )
            srv = torchport_server(tiny, batching=True)
            try:
                for enc, make in (("JSON", json_body), ("binary", binary_body)):
                    body, hl = make("x", xt)
                    out = json.loads(srv.post("/v2/models/tiny/infer", body, hl))
                    assert out["model_name"] == "tiny"
                    r = load(srv, "/v2/models/tiny/infer", body, hl, 1, args, workdir)
                    results[f"tiny_server_{enc}"] = r
                    over = (r["p50"] - ref["p50"]) * 1e3
                    rows.append(
                        (
                            "1 tiny latency",
                            f"server {enc}",
                            "1",
                            f"{r['rps']:.0f}",
                            f"{r['p50'] * 1e3:.3f}",
                            f"{r['p99'] * 1e3:.3f}",
                            f"+{over:.3f} ms p50",
                            "",
                        )
                    )
            finally:
                srv.stop()

        if "throughput" in args.sections:
            # (3) naive baseline first: its numbers are the denominators
            x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
            jbody, _ = json_body("image", x)
            bbody, bhl = binary_body("image", x)
            naive: dict[int, dict] = {}
            naive_rows = []
            naive_out = None
            for threads in (None, 1):
                nsrv = naive_server(workdir, threads)
                label = "FastAPI + eager PyTorch, JSON" + (", torch 1 thread" if threads else "")
                try:
                    naive_out = np.array(
                        json.loads(nsrv.post("/v2/models/cnn/infer", jbody))["outputs"][0]["data"]
                    )
                    for c in args.concurrency:
                        r = load(nsrv, "/v2/models/cnn/infer", jbody, "", c, args, workdir)
                        results.setdefault("naive_runs", {})[f"{label}_c{c}"] = r
                        naive_rows.append((label, c, r))
                        if c not in naive or r["rps"] > naive[c]["rps"]:
                            naive[c] = r  # ratios are against the better naive variant
                finally:
                    nsrv.stop()
            results["naive"] = naive
            kserve_rows = kserve_baseline(cnn_pkg, jbody, naive_out, args, workdir, results)

            # (2) CNN throughput through torchport serve
            results["cnn"] = {}
            cnn_rows = []
            for batching, delay in [(False, 0.0)] + [(True, d) for d in args.delays]:
                srv = torchport_server(cnn_pkg, batching=batching, delay_ms=delay)
                try:
                    got = np.array(json.loads(srv.post("/v2/models/cnn/infer", jbody))["outputs"][0]["data"])
                    np.testing.assert_allclose(
                        got, naive_out, rtol=1e-4, atol=1e-5
                    )  # same model, same answer
                    for enc, body, hl in (("JSON", jbody, ""), ("binary", bbody, bhl)):
                        for c in args.concurrency:
                            runs0, rows0 = (
                                srv.metric("torchport_batch_size_count"),
                                srv.metric("torchport_batch_size_sum"),
                            )
                            r = load(srv, "/v2/models/cnn/infer", body, hl, c, args, workdir)
                            runs = srv.metric("torchport_batch_size_count") - runs0
                            r["mean_batch"] = (srv.metric("torchport_batch_size_sum") - rows0) / max(runs, 1)
                            key = f"{f'batched{delay:g}ms' if batching else 'unbatched'}_{enc}_c{c}"
                            results["cnn"][key] = r
                            cnn_rows.append(
                                (
                                    "2 cnn throughput",
                                    f"torchport {enc}, batching {f'on (32, {delay:g} ms)' if batching else 'off'}",
                                    str(c),
                                    f"{r['rps']:.0f}",
                                    f"{r['p50'] * 1e3:.2f}",
                                    f"{r['p99'] * 1e3:.2f}",
                                    f"{r['rps'] / naive[c]['rps']:.1f}x naive",
                                    f"{r['mean_batch']:.1f}",
                                )
                            )
                finally:
                    srv.stop()
            rows.extend(cnn_rows)
            for label, c, r in naive_rows:
                errs = f", {r['socket_errors']} timeouts" if r.get("socket_errors") else ""
                rows.append(
                    (
                        "3 naive baseline",
                        label,
                        str(c),
                        f"{r['rps']:.0f}",
                        f"{r['p50'] * 1e3:.2f}",
                        f"{r['p99'] * 1e3:.2f}",
                        f"{r['rps'] / naive[c]['rps']:.2f}x{errs}",
                        "",
                    )
                )
            for c, r in kserve_rows:
                rows.append(
                    (
                        "3 kserve baseline",
                        "KServe ModelServer + ONNX Runtime, JSON",
                        str(c),
                        f"{r['rps']:.0f}",
                        f"{r['p50'] * 1e3:.2f}",
                        f"{r['p99'] * 1e3:.2f}",
                        f"{r['rps'] / naive[c]['rps']:.2f}x naive",
                        "",
                    )
                )
            for b in (1, 32):
                sps = in_process_throughput(cnn_pkg, b)
                results[f"cnn_in_process_b{b}"] = sps
                rows.append(
                    ("ref", f"in-process ORT, batch {b} (samples/s)", "-", f"{sps:.0f}", "", "", "", str(b))
                )
        if "floor" in args.sections:
            rows.extend(floor_rows(tiny, args, workdir, results))
        if "grpc" in args.sections:
            rows.extend(grpc_rows(cnn_pkg, args, results))
        if "reload" in args.sections:
            rows.extend(reload_rows(cnn_pkg, args, workdir, results))
        if "breakdown" in args.sections:
            rows.extend(breakdown_rows(tiny, results, cnn=cnn_pkg))
        if "peers" in args.sections:
            rows.extend(peer_rows(cnn_pkg, args, workdir, results))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    header = ("section", "server / path", "conc", "req/s", "p50 ms", "p99 ms", "vs baseline", "mean batch")
    cpu_list = lambda cpus: ",".join(map(str, cpus))  # noqa: E731
    where = (
        f"split cores: every server on CPU {cpu_list(PIN['server'])}, every load generator (and the "
        f"in-process rows) on CPU {cpu_list(PIN['generator'])}"
        if PIN["server"]
        else "cores shared by servers and load generators (--no-split-cores)"
    )
    print(
        f"\nload generator: {args.generator}, {args.duration:g} s per run (median of {max(1, args.repeat)}), "
        f"{os.cpu_count()} CPUs, loopback; {where}"
    )
    print("ratios ('x naive') are against the faster of the two naive servers at the same concurrency\n")
    print(format_table(header, rows))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
