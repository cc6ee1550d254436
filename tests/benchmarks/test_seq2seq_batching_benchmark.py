"""benchmarks/seq2seq_batching.py runs end to end at tiny shapes: both modes give the same tokens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_seq2seq_batching_benchmark_runs() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "seq2seq_batching.py"), "--tiny", "--rounds", "1"]
        + ["--new-tokens", "6", "--streams", "4", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("cohorts ") for line in lines) and any(
        line.startswith("one run ") for line in lines
    )
    assert lines[-1].endswith("same tokens: yes")
