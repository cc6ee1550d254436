"""benchmarks/serve.py runs end to end (short runs) and prints its table."""

from __future__ import annotations

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
    import json

    results = json.loads(out.read_text())
    assert results["cnn"]["batched0ms_binary_c4"]["rps"] > 0
    assert results["tiny_server_JSON"]["p50"] > results["tiny_in_process"]["p50"]
    grpc = results["grpc"]["c4"]
    assert grpc["grpc"]["rps"] > 0 and grpc["binary"]["rps"] > 0 and grpc["ratio"] > 0
    assert grpc["grpc"]["server_cpu_us_per_request"] > 0
