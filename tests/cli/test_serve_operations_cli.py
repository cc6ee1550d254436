"""`torchport serve` operations flags as a real process: --config errors, --exit-on-error, SIGHUP."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.test_serve_cli import _request, _start
from tests.runtimes.conftest import corrupt
from tests.runtimes.server._models import make_scale_package

REPO_ROOT = Path(__file__).resolve().parents[2]


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torchport.cli", "serve", *args, "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )


@pytest.mark.parametrize(
    "toml, message",
    [
        (
            "[models.scale]\nmax_batch = 4\n",
            r"error: .*serve.toml: \[models.scale\]: unknown key 'max_batch'; did you mean 'max_batch_size'\?",
        ),
        (
            "[models.scael]\n",
            r"error: .*\[models.scael\] names no model folder in the repository; did you mean \[models.scale\]\?",
        ),
        ("[server]\nport = 'x'\n", r"error: .*serve.toml \[server\]: port must be a number, got 'x'"),
    ],
)
def test_config_errors_are_one_line(tmp_path, toml, message):
    make_scale_package(tmp_path / "repo" / "scale", 2.0)
    (tmp_path / "serve.toml").write_text(toml)
    proc = _serve(str(tmp_path / "repo"), "--config", str(tmp_path / "serve.toml"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    import re

    assert re.search(message, proc.stderr), proc.stderr


def test_a_broken_single_package_exits_1(tmp_path):
    corrupt(make_scale_package(tmp_path / "scale", 2.0))
    proc = _serve(str(tmp_path / "scale"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "does not match its sha256" in proc.stderr and "--no-exit-on-error" in proc.stderr


def test_sighup_reloads_the_config_and_keeps_serving(tmp_path):
    make_scale_package(tmp_path / "repo" / "scale", 2.0)
    cfg = tmp_path / "serve.toml"
    cfg.write_text("[models.scale]\nmax_batch_size = 4\n")
    proc, port, lines = _start([str(tmp_path / "repo"), "--config", str(cfg), "--no-access-log"])
    try:
        assert b'"max_batch_size":4' in _request(port, "GET", "/v2/models/scale/config")[1]
        cfg.write_text("[models.scale]\nmax_batch_size = 8\n")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while b'"max_batch_size":8' not in _request(port, "GET", "/v2/models/scale/config")[1]:
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        assert proc.poll() is None
        assert any("SIGHUP: reload done" in line for line in lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_grpc_port_serves_from_the_cli_process(tmp_path):
    """The CLI runs on uvloop; gRPC shares its loop."""
    tg = pytest.importorskip("tritonclient.grpc")
    import re
    import socket

    import numpy as np

    make_scale_package(tmp_path / "scale", 2.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        grpc_port = s.getsockname()[1]
    proc, port, lines = _start([str(tmp_path / "scale"), "--grpc-port", str(grpc_port), "--no-access-log"])
    try:
        assert any(re.search(rf"gRPC on 127.0.0.1:{grpc_port}", line) for line in lines), "".join(lines)
        c = tg.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        inp = tg.InferInput("x", [2, 4], "FP32")
        inp.set_data_from_numpy(np.ones((2, 4), np.float32))
        assert c.infer("scale", [inp]).as_numpy("y").tolist() == [[2.0] * 4] * 2
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_a_grpc_port_in_use_is_a_one_line_error(tmp_path):
    pytest.importorskip("grpc")
    import socket

    make_scale_package(tmp_path / "scale", 2.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        proc = _serve(str(tmp_path / "scale"), "--grpc-port", str(s.getsockname()[1]))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (
        "error: cannot listen for gRPC on 127.0.0.1:" in proc.stderr
        and "choose another --grpc-port" in proc.stderr
    )
