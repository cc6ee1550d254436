"""The serving path in a fresh virtualenv without torch: `torchport serve --help`, start, infer once."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.cli.test_serve_cli import _request
from tests.runtimes.conftest import make_add_package
from tests.torchless_venv import torchless_venv


@pytest.mark.slow
def test_serve_in_a_virtualenv_without_torch(tmp_path):
    bin_dir = torchless_venv(
        tmp_path / "venv",
        ["numpy", "onnx", "onnxruntime", "httptools", "typer", "rich", "hpack", "protobuf"],
    )
    py = bin_dir / "python"
    torchport = bin_dir / "torchport"
    help_run = subprocess.run(
        [str(torchport), "serve", "--help"], capture_output=True, text=True, timeout=120
    )
    assert help_run.returncode == 0, help_run.stderr
    assert "--max-batch-size" in help_run.stdout

    make_add_package(tmp_path / "add")
    proc = subprocess.Popen(
        [str(torchport), "serve", str(tmp_path / "add"), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        port = None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "listening on" in line:
                port = int(line.split("listening on http://")[1].split(" ")[0].rsplit(":", 1)[1])
            if "ready: serving" in line or "no model could be loaded" in line:
                break
        assert port is not None, "".join(lines)
        body = json.dumps(
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        )
        status, raw = _request(port, "POST", "/v2/models/add/infer", body.encode())
        assert status == 200, raw
        assert json.loads(raw)["outputs"][1]["data"] == [2.0, 3.0, 4.0, 5.0]
        modules = subprocess.run(
            [
                str(py),
                "-c",
                "import sys, torchport.runtimes.server, torchport.runtimes.server._grpc, torchport.cli; "
                "print('torch' in sys.modules)",
            ],
            capture_output=True,
            text=True,
        )
        assert modules.stdout.strip() == "False", modules.stderr
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0
