"""Triton's generate extension on a real socket: /generate, /generate_stream (SSE), continuous batching."""

from __future__ import annotations

import http.client as httpc
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from tests.lm_models import exported_lm  # noqa: E402
from tests.runtimes.conftest import http, running_server  # noqa: E402
from torchport.runtimes import Session  # noqa: E402

PROMPTS = [
    "the quick brown",
    "hello",
    "one two three four",
    "torchport exports",
    "lazy",
    "five six",
    "x",
    "dog",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    root = tmp_path_factory.mktemp("lm-serve")
    repo = root / "repo"
    repo.mkdir()
    shutil.copytree(exported_lm("llama", root).path, repo / "llama")
    shutil.copytree(exported_lm("gpt2", root, outputs="logits").path, repo / "plain")
    with running_server(repo) as srv:
        yield srv


def _post(server, path: str, obj: object) -> tuple[int, dict]:
    status, _, body = http(server, "POST", path, json.dumps(obj).encode())
    return status, json.loads(body)


def _events(server, obj: object) -> list[dict]:
    conn = httpc.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/v2/models/llama/generate_stream", body=json.dumps(obj))
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("content-type") == "text/event-stream"
        text = resp.read().decode()
    finally:
        conn.close()
    assert text.endswith("\n\n")
    return [json.loads(line[len("data: ") :]) for line in text.split("\n\n") if line]


def _engine(server):
    return server.repository.get("llama").services["generate"].engine


def _local(server, prompt: str, **kw: object) -> str:
    sess = Session.from_package(Path(server.repository.get("llama", None).path))
    return sess.generate(prompt, **kw).text[0]


def test_generate_returns_the_generated_text(server) -> None:
    status, body = _post(server, "/v2/models/llama/generate", {"text_input": PROMPTS[0], "max_tokens": 24})
    assert status == 200, body
    assert body["model_name"] == "llama" and body["model_version"] == "1"
    assert body["text_output"] == _local(server, PROMPTS[0], max_new_tokens=24)
    assert body["finish_reason"] in ("stop", "length") and body["usage"]["prompt_tokens"] > 0
    # parameters may also come in a "parameters" object; seeded sampling repeats itself
    req = {
        "text_input": "hello",
        "parameters": {"max_tokens": 16, "temperature": 1.2, "top_p": 0.9, "seed": 3},
    }
    a, b = (
        _post(server, "/v2/models/llama/generate", req)[1],
        _post(server, "/v2/models/llama/generate", req)[1],
    )
    assert a["text_output"] == b["text_output"]
    assert a["text_output"] == _local(
        server, "hello", max_new_tokens=16, do_sample=True, temperature=1.2, top_p=0.9, seed=3
    )


def test_stop_strings_end_the_text_before_them(server) -> None:
    full = _post(
        server, "/v2/models/llama/generate", {"text_input": "hello", "max_tokens": 30, "ignore_eos": True}
    )[1]
    text = full["text_output"]
    stop = text[5:7]
    assert len(stop) == 2
    cut = _post(
        server,
        "/v2/models/llama/generate",
        {"text_input": "hello", "max_tokens": 30, "ignore_eos": True, "stop": [stop]},
    )[1]
    assert cut["text_output"] == text[: text.find(stop)] and cut["finish_reason"] == "stop"
    events = _events(server, {"text_input": "hello", "max_tokens": 30, "ignore_eos": True, "stop": stop})
    assert "".join(e["text_output"] for e in events) == text[: text.find(stop)]


def test_stream_sends_the_text_piece_by_piece(server) -> None:
    req = {"text_input": PROMPTS[2], "max_tokens": 20, "ignore_eos": True}
    events = _events(server, req)
    whole = _post(server, "/v2/models/llama/generate", req)[1]["text_output"]
    assert len(events) > 3 and "".join(e["text_output"] for e in events) == whole
    assert events[-1]["finish_reason"] == "length" and events[-1]["usage"]["completion_tokens"] == 20
    assert all(e["model_name"] == "llama" for e in events) and "finish_reason" not in events[0]


def test_concurrent_streams_share_one_decode_batch(server, monkeypatch: pytest.MonkeyPatch) -> None:
    want = {p: _local(server, p, max_new_tokens=40, ignore_eos=True) for p in PROMPTS}
    engine = _engine(server)
    engine.peak_batch = 0
    real_step = engine.batch.step

    def slow_step():  # 5 ms per step: the streams overlap even when the machine is busy
        time.sleep(0.005)
        return real_step()

    monkeypatch.setattr(engine.batch, "step", slow_step)
    got: dict[str, str] = {}

    def one(prompt: str) -> None:
        events = _events(server, {"text_input": prompt, "max_tokens": 40, "ignore_eos": True})
        got[prompt] = "".join(e["text_output"] for e in events)

    threads = [threading.Thread(target=one, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == want  # each stream's text equals its own run alone
    assert engine.peak_batch >= 2, "requests joined a running batch"
    deadline = time.monotonic() + 2  # the last row leaves at the step boundary after its end
    while engine.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.active == 0


def test_a_client_that_disconnects_frees_its_slot(server, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _engine(server)
    real_step = engine.batch.step

    def slow_step():  # 20 ms per step, so 120 tokens would take 2.4 s
        time.sleep(0.02)
        return real_step()

    monkeypatch.setattr(engine.batch, "step", slow_step)
    steps_before = engine.steps
    sock = socket.create_connection(("127.0.0.1", server.port))
    body = json.dumps({"text_input": "hello", "max_tokens": 120, "ignore_eos": True}).encode()
    sock.sendall(
        b"POST /v2/models/llama/generate_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    assert b"data: " in sock.recv(4096) or b"data: " in sock.recv(4096)
    sock.close()
    deadline = time.monotonic() + 2
    while engine.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.active == 0, "the disconnected stream still holds a row"
    assert engine.steps - steps_before < 60


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"text_input": "x", "max_tokens": 0}, r"max_tokens must be between 1 and 4096, got 0"),
        ({"text_input": "x", "max_tokens": 10**9}, r"max_tokens must be between 1 and 4096"),
        ({"text_input": "x", "bogus": 1}, r"unknown field\(s\) bogus; accepted: "),
        ({"text_input": "x", "parameters": {"beam": 2}}, r"unknown parameter\(s\) beam"),
        ({"text_input": "a " * 300}, r"the prompt has \d+ tokens; this model takes at most 128"),
        ({"text_input": "hi", "max_tokens": 126}, r"exceeds the model's 128 positions"),
        ({"text_input": 5}, r"text_input must be a non-empty string"),
        ({"text_input": "x", "temperature": "hot"}, r"temperature must be a number"),
        ({"text_input": "x", "top_p": 0}, r"top_p must be in \(0, 1\]"),
        ({"text_input": "x", "stop": [""]}, r"stop must be a non-empty string"),
    ],
)
def test_bad_requests_are_400s(server, body: dict, message: str) -> None:
    import re

    for path in ("/v2/models/llama/generate", "/v2/models/llama/generate_stream"):
        status, reply = _post(server, path, body)
        assert status == 400 and re.search(message, reply["error"]), reply


def test_non_utf8_and_non_text_models(server) -> None:
    status, _, body = http(server, "POST", "/v2/models/llama/generate", b'{"text_input": "\xff\xfe"}')
    assert status == 400 and b"not valid UTF-8" in body
    status, reply = _post(server, "/v2/models/plain/generate", {"text_input": "x"})
    assert status == 400 and "does not generate text" in reply["error"]
    status, reply = _post(server, "/v2/models/nope/generate", {"text_input": "x"})
    assert status == 404


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_streams_tokens(server) -> None:
    """The README's curl example."""
    out = subprocess.run(
        [
            "curl",
            "-sN",
            f"http://127.0.0.1:{server.port}/v2/models/llama/generate_stream",
            "-d",
            '{"text_input": "the quick brown", "max_tokens": 16}',
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    events = [json.loads(line[6:]) for line in out.splitlines() if line.startswith("data: ")]
    assert events and "".join(e["text_output"] for e in events) == _local(
        server, "the quick brown", max_new_tokens=16
    )


def test_infer_refuses_a_batched_multi_token_step_with_a_past(server) -> None:
    """The fused attention takes a multi-token step with a past for batch 1 only: a client's batch of 2
    gets a 400 saying what to do (not ONNX Runtime's error as a 500); batch 1 runs."""
    meta = json.loads(http(server, "GET", "/v2/models/llama")[2])
    past = [i for i in meta["inputs"] if i["name"].startswith("past_key_values.")]

    def request(batch: int) -> dict:
        inputs = [
            {"name": "input_ids", "datatype": "INT64", "shape": [batch, 3], "data": [5] * (batch * 3)},
            {"name": "attention_mask", "datatype": "INT64", "shape": [batch, 5], "data": [1] * (batch * 5)},
        ]
        if any(i["name"] == "position_ids" for i in meta["inputs"]):
            inputs.append(
                {"name": "position_ids", "datatype": "INT64", "shape": [batch, 3], "data": [2, 3, 4] * batch}
            )
        for spec in past:
            shape = [batch, spec["shape"][1], 2, spec["shape"][3]]
            inputs.append(
                {"name": spec["name"], "datatype": "FP32", "shape": shape, "data": [0.0] * _count(shape)}
            )
        return {"inputs": inputs, "outputs": [{"name": "logits"}]}

    status, body = _post(server, "/v2/models/llama/infer", request(2))
    assert status == 400 and "takes batch 1" in body["error"] and "--attention standard" in body["error"]
    status, body = _post(server, "/v2/models/llama/infer", request(1))
    assert status == 200 and body["outputs"][0]["shape"][:2] == [1, 3]


def _count(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
