"""`torchport serve` as a real process: start-up, errors, SIGTERM drain, access logs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.runtimes.conftest import make_add_package, make_fixed_package

REPO_ROOT = Path(__file__).resolve().parents[2]


def _start(args: list[str], env: dict | None = None) -> tuple[subprocess.Popen, int, list[str]]:
    """Run `torchport serve ... --port 0`, wait for 'ready', return (process, port, stderr lines)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "torchport.cli", "serve", *args, "--port", "0"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO_ROOT,
    )
    lines: list[str] = []
    port = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"listening on http://[^:]+:(\d+)", line)
        if m:
            port = int(m.group(1))
        if "ready: serving" in line or "no model could be loaded" in line:
            break
    if port is None:
        proc.kill()
        raise AssertionError("server did not start:\n" + "".join(lines) + proc.stderr.read())

    def pump() -> None:
        for line in proc.stderr:
            lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    return proc, port, lines


def _request(port: int, method: str, path: str, body: bytes | None = None):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_sigterm_drains_in_flight_requests_and_refuses_new_ones(tmp_path):
    make_add_package(tmp_path / "add")
    proc, port, lines = _start(
        [str(tmp_path / "add"), "--max-queue-delay-ms", "1500", "--max-batch-size", "8"]
    )
    try:
        body = json.dumps(
            {
                "id": "in-flight",
                "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
            }
        ).encode()
        result = {}
        t = threading.Thread(
            target=lambda: result.update(r=_request(port, "POST", "/v2/models/add/infer", body))
        )
        t.start()
        time.sleep(0.4)  # the request now waits in the batching queue
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        status, raw = _request(port, "POST", "/v2/models/add/infer", body)
        assert status == 503 and b"shutting down" in raw
        assert _request(port, "GET", "/v2/health/ready")[0] == 503
        assert _request(port, "GET", "/v2/health/live")[0] == 200
        t.join(20)
        status, raw = result["r"]
        assert status == 200, raw
        assert json.loads(raw)["outputs"][1]["data"] == [2.0, 3.0, 4.0, 5.0]
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(lines)
    assert "received SIGTERM" in text and '"message": "stopped"' in text
    access = [json.loads(line) for line in lines if '"method"' in line]
    infer = [a for a in access if a["path"] == "/v2/models/add/infer"]
    assert (200, "in-flight") in {(a["status"], a.get("request_id")) for a in infer}
    assert 503 in {a["status"] for a in infer}
    assert all(
        {"ts", "client", "method", "path", "status", "duration_ms", "bytes_out"} <= set(a) for a in access
    )


def test_repository_with_a_broken_package_still_serves(tmp_path):
    make_fixed_package(tmp_path / "repo" / "fixed")
    broken = make_add_package(tmp_path / "repo" / "tampered", name="tampered")
    (broken.path / "model.onnx").write_bytes((broken.path / "model.onnx").read_bytes()[:-1] + b"X")
    proc, port, lines = _start([str(tmp_path / "repo"), "--no-access-log"])
    try:
        assert _request(port, "GET", "/v2/models/fixed/ready")[0] == 200
        status, raw = _request(port, "GET", "/v2/models/tampered/ready")
        assert status == 503
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    text = "".join(lines)
    assert re.search(r"model 'tampered' \(version 1\) failed to load: .*model.onnx.*sha256", text)


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}"], "error: model repository '.*missing' does not exist"),
        (
            ["{pkg}", "--provider", "tensorrt"],
            r"error: execution provider tensorrt \(TensorrtExecutionProvider\) is not available",
        ),
        (["{pkg}", "--max-batch-size", "0"], "error: --max-batch-size must be >= 1"),
        (
            ["{pkg}", "--api-key-env", "TP_NO_SUCH_VAR_X"],
            "error: --api-key-env TP_NO_SUCH_VAR_X: environment variable",
        ),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, message):
    pkg = make_fixed_package(tmp_path / "fixed")
    argv = [a.format(missing=tmp_path / "missing", pkg=pkg.path) for a in args]
    proc = subprocess.run(
        [sys.executable, "-m", "torchport.cli", "serve", *argv, "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 1
    assert re.search(message, proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr
