"""Text-to-text generation on a real socket: an encoder-decoder package answers /generate and
/generate_stream with text, through the same continuous-batching engine as decoders."""

from __future__ import annotations

import http.client as httpc
import json
import shutil
import threading
from collections.abc import Iterator

import pytest

pytest.importorskip("transformers")

from tests.runtimes.conftest import http, running_server  # noqa: E402
from tests.seq2seq_models import exported_seq2seq  # noqa: E402
from torchport.runtimes import Session  # noqa: E402

TEXTS = ["the quick brown fox", "hello", "one two three four five six", "lazy dog", "torchport"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    root = tmp_path_factory.mktemp("s2s-serve")
    repo = root / "repo"
    repo.mkdir()
    shutil.copytree(exported_seq2seq("bart", root).package.path, repo / "bart")
    with running_server(repo, grpc_port=0) as srv:
        srv.package = repo / "bart"
        yield srv


def _post(server, path: str, obj: object) -> tuple[int, dict]:
    status, _, body = http(server, "POST", path, json.dumps(obj).encode())
    return status, json.loads(body)


def _local(server, text: str, n: int) -> str:
    return Session.from_package(server.package).generate(text, max_new_tokens=n, ignore_eos=True).text[0]


def test_generate_answers_the_text_the_local_loop_gives(server) -> None:
    status, body = _post(
        server, "/v2/models/bart/generate", {"text_input": TEXTS[0], "max_tokens": 6, "ignore_eos": True}
    )
    assert status == 200, body
    assert body["text_output"] == _local(server, TEXTS[0], 6)
    assert body["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 6


def test_concurrent_requests_of_different_lengths_each_get_their_own_answer(server) -> None:
    results: dict[str, str] = {}

    def one(text: str) -> None:
        status, body = _post(
            server, "/v2/models/bart/generate", {"text_input": text, "max_tokens": 8, "ignore_eos": True}
        )
        assert status == 200, body
        results[text] = body["text_output"]

    threads = [threading.Thread(target=one, args=(t,)) for t in TEXTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {t: _local(server, t, 8) for t in TEXTS}


def test_stream_sends_the_same_text_in_pieces(server) -> None:
    conn = httpc.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        body = {"text_input": TEXTS[2], "max_tokens": 6, "ignore_eos": True}
        conn.request("POST", "/v2/models/bart/generate_stream", body=json.dumps(body))
        resp = conn.getresponse()
        assert resp.status == 200
        events = [json.loads(e[len("data: ") :]) for e in resp.read().decode().split("\n\n") if e]
    finally:
        conn.close()
    assert "".join(e["text_output"] for e in events) == _local(server, TEXTS[2], 6)
    assert events[-1]["finish_reason"] == "length"


def test_text_beyond_the_encoder_is_a_one_line_400_naming_the_limit(server) -> None:
    status, body = _post(server, "/v2/models/bart/generate", {"text_input": "the quick brown fox " * 60})
    assert status == 400
    assert "encoder takes at most 128" in body["error"] and "\n" not in body["error"]
    status, body = _post(server, "/v2/models/bart/generate", {"text_input": "hello", "max_tokens": 6})
    assert status == 200  # the server goes on serving


def test_infer_takes_bytes_text_and_answers_the_generated_text_over_http_and_grpc(server) -> None:
    import numpy as np
    import tritonclient.grpc as tg
    import tritonclient.http as th

    n = (
        Session.from_package(server.package)
        .manifest.extra["generation"]["generation_config"]
        .get("max_length", 33)
        - 1
    )
    expected = Session.from_package(server.package).generate(TEXTS[:3], max_new_tokens=n).text
    texts = np.array([t.encode() for t in TEXTS[:3]], dtype=object)
    hc = th.InferenceServerClient(f"127.0.0.1:{server.port}")
    inp = th.InferInput("text", [3], "BYTES")
    inp.set_data_from_numpy(texts)
    got = hc.infer("bart", [inp]).as_numpy("text_output")
    assert [g.decode() for g in got] == expected
    gc = tg.InferenceServerClient(server.grpc_url)
    ginp = tg.InferInput("text", [3], "BYTES")
    ginp.set_data_from_numpy(texts)
    got = gc.infer("bart", [ginp]).as_numpy("text_output")
    assert [g.decode() for g in got] == expected
    meta = hc.get_model_metadata("bart")
    assert {"name": "text", "datatype": "BYTES", "shape": [-1]} in meta["inputs"]
    long = th.InferInput("text", [1], "BYTES")
    long.set_data_from_numpy(np.array([b"the quick brown fox " * 60], dtype=object))
    with pytest.raises(Exception, match="encoder takes at most 128"):
        hc.infer("bart", [long])
    assert [g.decode() for g in hc.infer("bart", [inp]).as_numpy("text_output")] == expected


def _beams(server, text: str, n: int, **kw: object) -> str:
    return (
        Session.from_package(server.package)
        .generate(text, max_new_tokens=n, num_beams=3, **kw)  # type: ignore[arg-type]
        .text[0]
    )


def test_generate_runs_beam_search_with_hugging_face_settings(server) -> None:
    url = "/v2/models/bart/generate"
    status, body = _post(server, url, {"text_input": TEXTS[2], "max_tokens": 7, "num_beams": 3})
    assert status == 200, body
    assert body["text_output"] == _beams(server, TEXTS[2], 7)
    settings = {"num_beams": 3, "length_penalty": 0.5, "early_stopping": True, "max_tokens": 7}
    status, body = _post(server, url, {"text_input": TEXTS[0], "parameters": settings})
    assert status == 200, body
    assert body["text_output"] == _beams(server, TEXTS[0], 7, length_penalty=0.5, early_stopping=True)
    assert body["usage"]["completion_tokens"] == len(
        Session.from_package(server.package)
        .generate(TEXTS[0], max_new_tokens=7, num_beams=3, length_penalty=0.5, early_stopping=True)
        .tokens[0]
    )
    # streamed: the best hypothesis, as the same text
    conn = httpc.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(
            "POST",
            url + "_stream",
            body=json.dumps({"text_input": TEXTS[2], "max_tokens": 7, "num_beams": 3}),
        )
        resp = conn.getresponse()
        assert resp.status == 200
        events = [json.loads(e[len("data: ") :]) for e in resp.read().decode().split("\n\n") if e]
    finally:
        conn.close()
    assert "".join(e["text_output"] for e in events) == _beams(server, TEXTS[2], 7)
    assert events[-1]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_beams": 0}, r"^num_beams must be an integer >= 1, got 0"),
        ({"num_beams": "3"}, r"^num_beams must be int, got '3'"),
        ({"num_beams": 3, "temperature": 0.7}, r"^num_beams > 1 is beam search; do not combine it with"),
        ({"num_beams": 3, "early_stopping": "soon"}, r"^early_stopping must be true, false or \"never\""),
        ({"num_beams": 100}, r"^num_beams must be at most 32"),
    ],
)
def test_bad_beam_settings_are_one_line_400s(server, fields: dict, message: str) -> None:
    import re

    status, body = _post(server, "/v2/models/bart/generate", {"text_input": "hello", **fields})
    assert status == 400 and re.search(message, body["error"]), body


def test_beam_and_greedy_requests_at_once_each_get_their_own_answer(server) -> None:
    results: dict[int, str] = {}
    jobs = [(TEXTS[k % len(TEXTS)], 3 if k % 2 else 1) for k in range(6)]
    start = threading.Barrier(len(jobs))

    def one(k: int) -> None:
        text, beams = jobs[k]
        start.wait()
        status, body = _post(
            server, "/v2/models/bart/generate", {"text_input": text, "max_tokens": 6, "num_beams": beams}
        )
        assert status == 200, body
        results[k] = body["text_output"]

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    local = Session.from_package(server.package)
    assert results == {
        k: local.generate(text, max_new_tokens=6, num_beams=beams).text[0]
        for k, (text, beams) in enumerate(jobs)
    }


def test_infer_honours_generation_parameters_over_http_and_grpc(server) -> None:
    import numpy as np
    import tritonclient.grpc as tg
    import tritonclient.http as th

    local = Session.from_package(server.package)
    texts = np.array([t.encode() for t in TEXTS[:2]], dtype=object)
    hc = th.InferenceServerClient(f"127.0.0.1:{server.port}")
    gc = tg.InferenceServerClient(server.grpc_url)

    def both(parameters: dict) -> list[list[str]]:
        hi = th.InferInput("text", [2], "BYTES")
        hi.set_data_from_numpy(texts)
        gi = tg.InferInput("text", [2], "BYTES")
        gi.set_data_from_numpy(texts)
        return [
            [g.decode() for g in hc.infer("bart", [hi], parameters=parameters).as_numpy("text_output")],
            [g.decode() for g in gc.infer("bart", [gi], parameters=parameters).as_numpy("text_output")],
        ]

    greedy = local.generate(TEXTS[:2], max_new_tokens=4, ignore_eos=True).text
    assert both({"max_tokens": 4, "ignore_eos": True}) == [greedy, greedy]
    beams = [local.generate(t, max_new_tokens=5, num_beams=3, length_penalty=0.5).text[0] for t in TEXTS[:2]]
    assert both({"max_tokens": 5, "num_beams": 3, "length_penalty": 0.5}) == [beams, beams]
    sampled = local.generate(TEXTS[:2], max_new_tokens=5, do_sample=True, temperature=0.8, seed=3).text
    assert both({"max_tokens": 5, "temperature": 0.8, "seed": 3}) == [sampled, sampled]
    hi = th.InferInput("text", [2], "BYTES")
    hi.set_data_from_numpy(texts)
    gi = tg.InferInput("text", [2], "BYTES")
    gi.set_data_from_numpy(texts)
    for params, message in (
        ({"num_beams": 0}, "num_beams must be an integer >= 1, got 0"),
        ({"max_tokens": 4, "colour": "red"}, r"unknown parameter\(s\) colour; accepted: max_tokens"),
        ({"top_p": 2.0}, r"top_p must be in \(0, 1\], got 2.0"),
    ):
        with pytest.raises(th.InferenceServerException, match=message):
            hc.infer("bart", [hi], parameters=params)
        with pytest.raises(tg.InferenceServerException, match=message):
            gc.infer("bart", [gi], parameters=params)
    assert both({"max_tokens": 4, "ignore_eos": True}) == [greedy, greedy]  # still serving


def test_generate_and_infer_apply_hugging_face_generation_rules(server) -> None:
    import numpy as np
    import tritonclient.http as th

    local = Session.from_package(server.package)
    plain = local.generate(TEXTS[2], max_new_tokens=8, ignore_eos=True).tokens[0]
    rules = {"no_repeat_ngram_size": 1, "bad_words_ids": [[plain[0]]], "min_new_tokens": 3}
    want = local.generate(TEXTS[2], max_new_tokens=8, ignore_eos=True, **rules)  # type: ignore[arg-type]
    tokens = want.tokens[0]
    assert len(set(tokens)) == len(tokens) and plain[0] not in tokens  # the rules changed the answer
    status, body = _post(
        server,
        "/v2/models/bart/generate",
        {"text_input": TEXTS[2], "max_tokens": 8, "ignore_eos": True, **rules},
    )
    assert status == 200, body
    assert body["text_output"] == want.text[0]
    # /infer takes the scalar ones as request parameters
    inp = th.InferInput("text", [1], "BYTES")
    inp.set_data_from_numpy(np.array([TEXTS[2].encode()], dtype=object))
    hc = th.InferenceServerClient(f"127.0.0.1:{server.port}")
    got = hc.infer("bart", [inp], parameters={"max_tokens": 8, "ignore_eos": True, "no_repeat_ngram_size": 1})
    expected = local.generate(TEXTS[2], max_new_tokens=8, ignore_eos=True, no_repeat_ngram_size=1).text[0]
    assert got.as_numpy("text_output")[0].decode() == expected
    for fields, message in (
        ({"bad_words_ids": [3]}, "bad_words_ids must be a list of non-empty lists of token ids"),
        ({"no_repeat_ngram_size": "2"}, "no_repeat_ngram_size must be int, got '2'"),
        ({"min_length": -1}, "min_length must be an integer >= 0, got -1"),
    ):
        status, body = _post(server, "/v2/models/bart/generate", {"text_input": "hello", **fields})
        assert status == 400 and message in body["error"], body
