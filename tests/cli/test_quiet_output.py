"""`export`, `optimize` and `validate` print torchport's own lines only: no ONNX Runtime advice or
warnings, no torch log lines (real CLI in a subprocess, the way a user runs it)."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.exporters.test_capture import SQUARE_MODEL

#: a linear layer then a product with a vector: ONNX Runtime's static quantizer asks for per-channel
#: axis 1 of the rank-1 weight and warns "Axis 1 is out-of-range" on every run
VEC_MODEL = """
import torch
from torch import nn


class VecHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 8)
        self.v = nn.Parameter(torch.randn(8))

    def forward(self, x):
        return torch.relu(self.lin(x)) @ self.v


def make_model():
    torch.manual_seed(0)
    return VecHead().eval()


def example_inputs():
    return (torch.randn(4, 16),)


DYNAMIC_DIMS = {"x": {0: ("batch", 1, 32)}}
"""

NOISE = (
    "Axis 1 is out-of-range",
    "pre-processing",
    "WARNING:root",
    "[W:onnxruntime",
    "[E:onnxruntime",
    "torchvision",
)
TORCH_LOG_LINE = re.compile(r"^[WIE]\d{4} \d\d:\d\d:\d\d", re.M)  # torch's glog-style lines


def _torchport(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "torchport.cli", *args], capture_output=True, text=True, timeout=600
    )
    return proc.stdout + proc.stderr


def _assert_quiet(output: str) -> None:
    assert not [n for n in NOISE if n in output], output
    assert not TORCH_LOG_LINE.search(output), output


def test_export_optimize_validate_print_no_onnxruntime_or_torch_noise(tmp_path: Path, caplog) -> None:
    (tmp_path / "vec.py").write_text(VEC_MODEL)
    pkg = tmp_path / "vec"
    out = _torchport("export", f"{tmp_path / 'vec.py'}:make_model", "-o", str(pkg), "--int8", "static")
    assert f"exported vec v1 to {pkg}" in out
    _assert_quiet(out)

    # the model does make the quantizer warn: the silence above is torchport's doing
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": np.ones((2, 16), np.float32)}])

        def get_next(self):
            return next(self.batches, None)

    with caplog.at_level(logging.WARNING):
        quantize_static(str(pkg / "model.onnx"), str(tmp_path / "q.onnx"), Reader(), per_channel=True)
    assert "Axis 1 is out-of-range for weight" in caplog.text

    out = _torchport("optimize", str(pkg), "--level", "basic", "--int8", "static")
    assert "optimized" in out and "int8_static" in out
    _assert_quiet(out)

    # tolerances no float model meets: validation fails and localizes (re-exports with torch.onnx)
    out = _torchport("validate", str(pkg), "--atol", "1e-12", "--rtol", "1e-12")
    assert "parity FAILED" in out and "first diverging node" in out
    _assert_quiet(out)


def test_a_failing_onnx_runtime_run_is_reported_once(tmp_path: Path) -> None:
    """Traced at its square example, the model breaks at other sizes inside ONNX Runtime: the parity
    table says so, without ORT's own colored error line before it."""
    (tmp_path / "square.py").write_text(SQUARE_MODEL)
    source = f"{tmp_path / 'square.py'}:make_model"
    out = _torchport("export", source, "-o", str(tmp_path / "sq"), "--strategy", "torchscript")
    assert "ONNX Runtime failed: " in out and "Attempting to broadcast an axis" in out
    assert out.count("Attempting to broadcast an axis") == 1
    _assert_quiet(out)
