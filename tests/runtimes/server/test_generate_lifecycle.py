"""The generate engine's thread lives as long as its model version is served: a reload or an unload
stops it once the streams it holds have finished (as /infer lets running requests finish)."""

from __future__ import annotations

import asyncio
import http.client as httpc
import json
import shutil
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from tests.lm_models import exported_lm  # noqa: E402
from tests.runtimes.conftest import http, running_server  # noqa: E402
from torchport.runtimes import Session  # noqa: E402
from torchport.runtimes._generate import GenRequest, SamplingParams  # noqa: E402
from torchport.runtimes.server._generate_engine import GenerationEngine, Job  # noqa: E402


def _engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "torchport-generate"]


def _wait_threads(count: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while len(_engine_threads()) != count and time.monotonic() < deadline:
        time.sleep(0.02)
    return len(_engine_threads())


def _generate(server) -> dict:
    body = json.dumps({"text_input": "hello", "max_tokens": 4}).encode()
    status, _, reply = http(server, "POST", "/v2/models/llama/generate", body)
    assert status == 200, reply
    return json.loads(reply)


def test_reload_and_unload_stop_the_old_engine_thread(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("lm-lifecycle")
    repo = root / "repo"
    repo.mkdir()
    shutil.copytree(exported_lm("llama", root).path, repo / "llama")
    before = len(_engine_threads())
    with running_server(repo, model_control="explicit", load=["llama"]) as srv:
        _generate(srv)
        assert _wait_threads(before + 1) == before + 1
        old = srv.repository.get("llama")
        engine = old.services["generate"].engine
        real_step = engine.batch.step

        def slow_step():  # 20 ms per step: the stream is still running when the reload lands
            time.sleep(0.02)
            return real_step()

        engine.batch.step = slow_step
        events: list[dict] = []

        def stream() -> None:
            conn = httpc.HTTPConnection("127.0.0.1", srv.port, timeout=60)
            body = {"text_input": "hello", "max_tokens": 40, "ignore_eos": True}
            conn.request("POST", "/v2/models/llama/generate_stream", body=json.dumps(body))
            text = conn.getresponse().read().decode()
            conn.close()
            events.extend(json.loads(x[len("data: ") :]) for x in text.split("\n\n") if x)

        t = threading.Thread(target=stream)
        t.start()
        deadline = time.monotonic() + 10
        while engine.active == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.active == 1, "the stream is running on the old version"
        status, _, reply = http(srv, "POST", "/v2/repository/models/llama/load")
        assert status == 200, reply
        assert srv.repository.get("llama") is not old
        t.join(60)
        # the stream that was running on the old version finished normally
        assert events[-1]["finish_reason"] == "length" and events[-1]["usage"]["completion_tokens"] == 40
        assert _wait_threads(before) == before, "the old engine's thread ended"
        assert not engine.running
        _generate(srv)  # the new version gets its own engine
        assert _wait_threads(before + 1) == before + 1
        status, _, reply = http(srv, "POST", "/v2/repository/models/llama/unload")
        assert status == 200, reply
        assert _wait_threads(before) == before, "unloading stopped the engine's thread"
    assert len(_engine_threads()) == before


def test_a_request_on_a_swapped_out_version_is_served_then_its_thread_ends(tmp_path: Path) -> None:
    engine = GenerationEngine(Session.from_package(exported_lm("llama", tmp_path).path))
    engine.retire()  # retired before its first job: the job still runs, then the thread ends

    async def run() -> list[int | None]:
        loop = asyncio.get_running_loop()
        tokens: list[int | None] = []
        done = loop.create_future()
        job = Job(
            GenRequest([1, 5, 9], SamplingParams(max_new_tokens=3, ignore_eos=True)),
            tokens.append,
            lambda exc: done.set_result(exc),
            loop,
        )
        engine.submit(job)
        assert await asyncio.wait_for(done, 30) is None
        return tokens

    tokens = asyncio.run(run())
    assert len([t for t in tokens if t is not None]) == 3
    deadline = time.monotonic() + 10
    while engine.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not engine.running
