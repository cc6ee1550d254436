"""benchmarks/serve.py runs end to end (short runs) and prints its table."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_serve_benchmark_runs(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "serve.py"),
            "--duration",
            "1",
            "--concurrency",
            "1",
            "4",
        ]
        + ["--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torchport binary, batching on" in proc.stdout and "FastAPI + eager PyTorch" in proc.stdout

    results = json.loads(out.read_text())
    assert results["cnn"]["batched0ms_binary_c4"]["rps"] > 0
    assert results["tiny_server_JSON"]["p50"] > results["tiny_in_process"]["p50"]
    # one and --load-processes (default 4) generator processes, both protocols alike
    assert set(results["grpc"]["c4"]) >= {"processes1", "processes4"}
    for grpc in (results["grpc"]["c4"]["processes1"], results["grpc"]["c4"]["processes4"]):
        assert grpc["grpc"]["rps"] > 0 and grpc["binary"]["rps"] > 0 and grpc["ratio"] > 0
        assert grpc["grpc"]["server_cpu_us_per_request"] > 0


def _serve_module():
    spec = importlib.util.spec_from_file_location("serve_benchmark", REPO_ROOT / "benchmarks" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_peer_that_is_not_installed_is_skipped_with_the_reason(monkeypatch):
    serve = _serve_module()
    monkeypatch.setenv("TORCHPORT_BENCH_MLSERVER_PYTHON", sys.executable)  # torchport's venv: no mlserver
    python, why = serve.peer_python("mlserver")
    assert python is None
    assert why == f"mlserver is not installed in {sys.executable} (bash scripts/bench_peers.sh mlserver)"


@pytest.mark.slow
def test_serve_benchmark_peer_rows(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "serve.py"), "--sections", "peers"]
        + ["--duration", "1", "--concurrency", "1", "2", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO_ROOT,
        env={**os.environ, "TORCHPORT_BENCH_MLSERVER_PYTHON": sys.executable},  # one peer surely missing
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no MLServer rows: mlserver is not installed" in proc.stderr
    assert "skipped: mlserver is not installed" in proc.stdout
    peers = json.loads(out.read_text())["peers"]
    for c in (1, 2):
        for proto in ("HTTP JSON", "HTTP binary", "gRPC"):
            assert peers[f"torchport {proto} c{c}"]["rps"] > 0
        assert peers[f"torchport HTTP JSON c{c}"]["server_cpu_us_per_request"] > 0
        echo = peers[f"bare httptools echo (floor) HTTP JSON c{c}"]
        assert (
            echo["torchport_p50_over_peer"] > 0
            and echo["p50_range"][0] <= echo["p50"] <= echo["p50_range"][1]
        )
    for label in ("PyTriton (tritonserver)", "KServe ModelServer"):  # rows when installed, else a reason
        skipped = [line for line in proc.stdout.splitlines() if label in line and "skipped: " in line]
        assert (f"{label} HTTP JSON c1" in peers) != bool(skipped), (label, skipped)
