"""benchmarks/seq2seq.py runs end to end at tiny shapes and prints its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_seq2seq_benchmark_runs() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "seq2seq.py"), "--tiny", "--repeats", "1"]
        + ["--new-tokens", "4", "--seconds", "2", "--source-tokens", "8"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    row = next(line for line in lines if line.startswith("whisper features") and "torchport" in line)
    err = float(row.split("max err")[1])
    assert err < 1e-4  # the numpy log-mel equals transformers' on the benchmark's audio
    assert any(line.startswith("whisper ") and "Hugging Face eager" in line for line in lines)
    assert any(line.startswith("t5 ") and "Hugging Face eager" in line for line in lines)
    assert any(
        line.startswith("whisper ") and "torchport" in line and "features" not in line for line in lines
    )
