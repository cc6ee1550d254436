"""`torchport serve --installed NAME`: model wheels found through their entry point, one or several."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.runtimes.conftest import make_add_package, make_fixed_package
from torchport.deploy import build_wheel
from torchport.runtimes import ServingError
from torchport.runtimes.server._installed import installed_models, installed_repository


def serve_and_infer(cmd: list[str], model: str, x: np.ndarray, cwd: Path, env: dict | None = None):
    """Start a real server process on a free port, wait for ready, infer once, stop it: (status, body)."""
    import http.client

    proc = subprocess.Popen(
        [*cmd, "--port", "0", "--no-access-log"], stderr=subprocess.PIPE, text=True, cwd=cwd, env=env
    )
    try:
        port, lines = None, []
        deadline = time.monotonic() + 120
        for line in proc.stderr:
            lines.append(line)
            if "listening on http://" in line:
                port = int(line.split("listening on http://")[1].split(" ")[0].rsplit(":", 1)[1])
            if "ready: serving" in line or "no model could be loaded" in line or time.monotonic() > deadline:
                break
        assert port is not None, "".join(lines)
        body = json.dumps(
            {
                "inputs": [
                    {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
                ]
            }
        )
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", f"/v2/models/{model}/infer", body=body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture
def site(tmp_path, monkeypatch):
    """Two model wheels unpacked into a folder on sys.path: importlib.metadata finds their entry points."""
    site = tmp_path / "site"
    for pkg, name in (
        (make_add_package(tmp_path / "add"), "adder"),
        (make_fixed_package(tmp_path / "fixed"), "fixed"),
    ):
        zipfile.ZipFile(build_wheel(pkg.path, tmp_path / "dist", name=name).path).extractall(site)
    monkeypatch.syspath_prepend(str(site))
    for module in ("adder", "fixed"):  # an earlier test's copy must not answer for this one
        monkeypatch.delitem(sys.modules, module, raising=False)
    yield site
    for module in ("adder", "fixed"):
        sys.modules.pop(module, None)


def test_installed_models_are_found_by_entry_point(site):
    found = installed_models()
    assert found["adder"] == site / "adder" / "models" / "add"
    assert found["fixed"] == site / "fixed" / "models" / "fixed"


def test_one_or_several_installed_models_make_a_servable_repository(site):
    from torchport.runtimes.server import ModelRepository

    with installed_repository(["adder"]) as path:
        assert path == site / "adder" / "models" / "add"
        assert set(ModelRepository.scan(path).sources) == {"add"}  # one package: its manifest's name
    with installed_repository(["adder", "fixed"]) as path:
        repo = ModelRepository.scan(path)
        assert {name: sorted(src.versions) for name, src in repo.sources.items()} == {
            "add": ["1"],
            "fixed": ["1"],
        }
    assert not path.exists()  # the temporary repository folder is removed
    with installed_repository(["*"]) as path:
        assert {"add", "fixed"} <= set(ModelRepository.scan(path).sources)


def test_unknown_installed_model_names_the_installed_ones(site):
    with pytest.raises(ServingError, match=r"no installed model wheel 'nope' \(installed: .*adder.*fixed"):
        with installed_repository(["nope"]):
            pass


def test_serve_cli_installed_serves_the_wheel(site, tmp_path):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    env = {"PYTHONPATH": f"{site}:{Path(__file__).resolve().parents[2]}", "PATH": "/usr/bin:/bin"}
    status, body = serve_and_infer(
        [sys.executable, "-m", "torchport.cli", "serve", "--installed", "adder", "--installed", "fixed"],
        "add",
        x,
        tmp_path,
        env,
    )
    assert status == 200, body
    assert body["outputs"][1]["data"] == (x + 1).ravel().tolist()


def test_serve_needs_exactly_one_of_path_or_installed(tmp_path):
    from tests.deploy.conftest import torchport

    proc = torchport("serve")
    assert proc.returncode == 1 and "give either PATH or --installed NAME" in proc.stderr
