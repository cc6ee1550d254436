"""A text classifier's image: the tokenizer libraries travel in its wheelhouse and the ``text`` input
works inside the running container (real podman build on the local base image)."""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from tests.deploy.conftest import free_port, torchport  # noqa: E402
from tests.deploy.test_container import podman, wait_ready  # noqa: E402
from tests.lm_models import tiny_bert, train_tokenizer  # noqa: E402
from tests.runtimes.conftest import running_server  # noqa: E402
from torchport.exporters import export_model  # noqa: E402
from torchport.runtimes import ModelPackage  # noqa: E402

pytestmark = pytest.mark.slow

LABELS = {0: "negative", 1: "neutral", 2: "positive"}
TEXTS = ["the quick brown fox", "hello world, this is a tiny language model"]


def _only_model(port: int) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        (entry,) = json.loads(resp.read())
    return entry["name"]


def _classify(port: int) -> dict:
    model = _only_model(port)
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(TEXTS)], "data": TEXTS}]}
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/{model}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        reply = json.loads(resp.read())
    return {o["name"]: o["data"] for o in reply["outputs"]}


def test_text_classifier_image_answers_text(tmp_path: Path, base_image: str) -> None:
    torch.manual_seed(0)
    src = tmp_path / "src"
    tiny_bert("BertForSequenceClassification", num_labels=3, id2label=LABELS).save_pretrained(src)
    train_tokenizer(src)
    export_model(str(src), tmp_path / "clf", quiet=True, dims=["seq=1..32", "batch=1..8"], validate=False)
    pkg = ModelPackage.load(tmp_path / "clf")
    assert pkg.manifest.extra.get("text")
    tag = f"localhost/torchport-test-text:{uuid.uuid4().hex[:8]}"
    ctx = tmp_path / "ctx"
    proc = torchport(
        "deploy", "container", str(pkg.path), "-o", str(ctx), "--base-image", base_image, "--build", "--tag", tag
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    name = f"torchport-test-text-{uuid.uuid4().hex[:8]}"
    try:
        wheels = [p.name.split("-")[0].lower() for p in (ctx / "wheels").glob("*.whl")]
        assert {"tokenizers", "jinja2", "markupsafe"} <= set(wheels)
        assert "huggingface_hub" not in wheels and "torch" not in wheels
        port = free_port()
        podman("run", "-d", "--name", name, "-e", f"TORCHPORT_PORT={port}", tag)
        wait_ready(port)
        got = _classify(port)
        with running_server(pkg.path) as srv:
            want = _classify(srv.port)
        assert got["label"] == want["label"] and all(label in LABELS.values() for label in got["label"])
        assert got["score"] == pytest.approx(want["score"], rel=1e-5)
    finally:
        podman("rm", "-f", name, check=False)
        podman("rmi", "-f", tag, check=False)
