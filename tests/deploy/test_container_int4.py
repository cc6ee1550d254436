"""An int4 decoder in a container: ``torchport export --int4`` → ``deploy container --variant int4 --build``
(real podman build on the local base image) → the running image serves the int4 variant and answers a
real /generate request with the tokens the int4 variant gives locally."""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from tests.deploy.conftest import free_port, torchport  # noqa: E402
from tests.deploy.test_container import podman, wait_ready  # noqa: E402
from tests.lm_models import save_causal_lm  # noqa: E402
from torchport.runtimes import ModelPackage, Session  # noqa: E402

pytestmark = pytest.mark.slow


def _get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as resp:
        return json.loads(resp.read())


def test_int4_decoder_image_serves_the_int4_variant(tmp_path: Path, base_image: str) -> None:
    src = save_causal_lm("llama", tmp_path / "src")
    proc = torchport("export", str(src), "-o", str(tmp_path / "pkg"), "-q", "--int4")
    assert proc.returncode == 0, proc.stderr
    pkg = ModelPackage.load(tmp_path / "pkg")
    assert pkg.manifest.variants["int4"].parity["passed"]
    tag = f"localhost/torchport-test-int4:{uuid.uuid4().hex[:8]}"
    ctx = tmp_path / "ctx"
    proc = torchport(
        "deploy", "container", str(pkg.path), "-o", str(ctx), "--base-image", base_image, "--variant", "int4",
        "--build", "--tag", tag,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    name = f"torchport-test-int4-{uuid.uuid4().hex[:8]}"
    try:
        wheels = [p.name for p in (ctx / "wheels").glob("*.whl")]
        assert "tokenizers" in {w.split("-")[0].lower() for w in wheels}
        port = free_port()
        podman("run", "-d", "--name", name, "-e", f"TORCHPORT_PORT={port}", tag)
        wait_ready(port)
        (model,) = [m["name"] for m in _index(port)]
        assert _get(port, f"/v2/models/{model}")["parameters"]["variant"] == "int4"
        body = {"text_input": "hello", "max_tokens": 6, "ignore_eos": True}
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v2/models/{model}/generate",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            got = json.loads(resp.read())["text_output"]
        want = Session.from_package(pkg.path, variant="int4").generate(
            "hello", max_new_tokens=6, ignore_eos=True
        )
        assert got == want.text[0]
    finally:
        podman("rm", "-f", name, check=False)
        podman("rmi", "-f", tag, check=False)


def _index(port: int) -> list[dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())
