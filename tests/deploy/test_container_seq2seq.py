"""Encoder-decoders in a container: a tiny T5 and a tiny Whisper package → ``deploy container --build``
(real podman build on the local base image, no torch in it) → the running image answers /generate
(greedy and beam search, text or a WAV) and /infer with what the package gives locally."""

from __future__ import annotations

import base64
import json
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from tests.deploy.conftest import free_port, torchport  # noqa: E402
from tests.deploy.test_container import podman, wait_ready  # noqa: E402
from tests.seq2seq_models import exported_seq2seq  # noqa: E402
from tests.speech_models import exported_whisper, sample_audio  # noqa: E402
from torchport.runtimes import Session  # noqa: E402
from torchport.runtimes._generate_once import generate_once  # noqa: E402

pytestmark = pytest.mark.slow

TEXT = "the quick brown fox"


def _post(port: int, path: str, body: dict) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


@contextmanager
def _running_image(
    package: Path, tmp_path: Path, base_image: str, kind: str
) -> Iterator[tuple[int, str, set]]:
    """Build the package's image, run it; yields (port, model name, wheel names); removes both after."""
    tag = f"localhost/torchport-test-{kind}:{uuid.uuid4().hex[:8]}"
    ctx = tmp_path / "ctx"
    proc = torchport(
        "deploy", "container", str(package), "-o", str(ctx), "--base-image", base_image, "--build", "--tag", tag
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    name = f"torchport-test-{kind}-{uuid.uuid4().hex[:8]}"
    try:
        wheels = {p.name.split("-")[0].lower() for p in (ctx / "wheels").glob("*.whl")}
        port = free_port()
        podman("run", "-d", "--name", name, "-e", f"TORCHPORT_PORT={port}", tag)
        wait_ready(port)
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v2/repository/index", data=b"{}", method="POST"
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            (model,) = [m["name"] for m in json.loads(resp.read())]
        yield port, model, wheels
        logs = podman("logs", name, check=False)
        assert "Traceback" not in (logs.stdout + logs.stderr)
    finally:
        podman("rm", "-f", name, check=False)
        podman("rmi", "-f", tag, check=False)


def test_t5_image_generates_text_without_torch(tmp_path: Path, base_image: str) -> None:
    pkg = exported_seq2seq("t5", tmp_path).package
    assert "encoder.onnx" in pkg.manifest.files
    with _running_image(pkg.path, tmp_path, base_image, "t5") as (port, model, wheels):
        assert "tokenizers" in wheels and "torch" not in wheels and "transformers" not in wheels
        local = Session.from_package(pkg.path)
        url = f"/v2/models/{model}/generate"
        got = _post(port, url, {"text_input": TEXT, "max_tokens": 6, "ignore_eos": True})
        assert got["text_output"] == local.generate(TEXT, max_new_tokens=6, ignore_eos=True).text[0]
        assert got["usage"]["completion_tokens"] == 6
        got = _post(port, url, {"text_input": TEXT, "max_tokens": 6, "num_beams": 3})
        assert got["text_output"] == local.generate(TEXT, max_new_tokens=6, num_beams=3).text[0]
        body = {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXT]}],
            "parameters": {"max_tokens": 4, "ignore_eos": True},
        }
        reply = _post(port, f"/v2/models/{model}/infer", body)
        (out,) = [o for o in reply["outputs"] if o["name"] == "text_output"]
        assert out["data"] == local.generate([TEXT], max_new_tokens=4, ignore_eos=True).text


def test_whisper_image_transcribes_a_wav_without_torch(tmp_path: Path, base_image: str) -> None:
    _, pkg = exported_whisper(tmp_path)
    with _running_image(pkg, tmp_path, base_image, "whisper") as (port, model, wheels):
        assert "torch" not in wheels and "transformers" not in wheels and "scipy" not in wheels
        audio = sample_audio()[0]
        body = {"audio": base64.b64encode(audio).decode(), "language": "en", "max_tokens": 6}
        got = _post(port, f"/v2/models/{model}/generate", body)
        wav_file = tmp_path / "speech.wav"
        wav_file.write_bytes(audio)
        want = generate_once(pkg, audio=str(wav_file), language="en", max_new_tokens=6)
        assert got["text_output"] == want.text and got["usage"]["completion_tokens"] == len(want.tokens)
