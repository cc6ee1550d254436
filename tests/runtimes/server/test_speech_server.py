"""Speech on a real socket: a tiny Whisper package answers /generate and /generate_stream with audio in,
and /infer (HTTP and gRPC) with a BYTES ``audio`` input."""

from __future__ import annotations

import base64
import http.client as httpc
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from tests.runtimes.conftest import http, running_server  # noqa: E402
from tests.speech_models import exported_whisper, sample_audio, wav  # noqa: E402
from torchport.runtimes import Session  # noqa: E402
from torchport.runtimes._audio import AudioFeatures, decode_audio  # noqa: E402
from torchport.runtimes._audio_prompt import WhisperPrompt  # noqa: E402
from torchport.runtimes._generate import Generator  # noqa: E402
from torchport.runtimes._tokenizer import TextCodec  # noqa: E402

URL = "/v2/models/whisper/generate"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    root = tmp_path_factory.mktemp("speech-serve")
    _, package = exported_whisper(root)
    repo = root / "repo"
    repo.mkdir()
    shutil.copytree(package, repo / "whisper")
    with running_server(repo, grpc_port=0) as srv:
        yield srv


def _post(server, obj: object, path: str = URL) -> tuple[int, dict]:
    status, _, body = http(server, "POST", path, json.dumps(obj).encode())
    return status, json.loads(body)


def _local(server, audio: bytes, new: int, **kw: str) -> str:
    """The same request through the Python API: decode, features, prompt, generate, detokenize."""
    pkg = Path(server.repository.get("whisper", None).path)
    session = Session.from_package(pkg)
    extra = session.manifest.extra
    feats = AudioFeatures.from_config(extra["audio"]).extract([decode_audio(audio)])
    forced = WhisperPrompt.from_settings(extra["generation"]["whisper"]).prompt(**kw)[1:]
    tokens = Generator(session).generate(
        None, sources=[{"input_features": feats[0]}], forced=forced, max_new_tokens=new
    )
    return TextCodec.from_package(session.package).decode(tokens.tokens[0])


def test_generate_takes_a_wav(server) -> None:
    audio = sample_audio()[1]
    status, body = _post(
        server, {"audio": base64.b64encode(audio).decode(), "language": "fr", "max_tokens": 8}
    )
    assert status == 200, body
    assert body["text_output"] == _local(server, audio, 8, language="fr") and body["text_output"]
    # FP32 samples in JSON, language and task in parameters
    samples = decode_audio(audio)[:16000].tolist()
    req = {"audio": samples, "parameters": {"max_tokens": 6, "language": "de", "task": "translate"}}
    status, body = _post(server, req)
    assert status == 200, body
    assert body["text_output"] == _local(server, wav(np.asarray(samples)), 6, language="de", task="translate")


def test_generate_stream_sends_pieces(server) -> None:
    audio = sample_audio()[0]
    req = {"audio": base64.b64encode(audio).decode(), "language": "en", "max_tokens": 8}
    conn = httpc.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("POST", URL + "_stream", body=json.dumps(req))
        resp = conn.getresponse()
        assert resp.status == 200
        text = resp.read().decode()
    finally:
        conn.close()
    events = [json.loads(line[len("data: ") :]) for line in text.split("\n\n") if line]
    assert len(events) > 1 and events[-1]["finish_reason"] in ("stop", "length")
    assert "".join(e["text_output"] for e in events) == _post(server, req)[1]["text_output"]


@pytest.mark.parametrize(
    ("audio", "extra", "message"),
    [
        ("", {}, r"^audio in JSON must be a base64|^audio is empty"),
        (base64.b64encode(b"ID3 not a wav").decode(), {}, r"^audio is not a WAV file"),
        ("not base64 at all!", {}, r"^audio in JSON must be a base64-encoded WAV file"),
        (
            base64.b64encode(wav(np.zeros(31 * 16000))).decode(),
            {},
            r"^audio is 31\.0 s long; the limit is 30 s",
        ),
        (base64.b64encode(wav(np.zeros(100))).decode(), {"language": "xx"}, r"^language 'xx' is not one of"),
        (base64.b64encode(wav(np.zeros(100))).decode(), {"task": "sing"}, r"^task must be one of transcribe"),
    ],
)
def test_bad_audio_is_a_one_line_400(server, audio: str, extra: dict, message: str) -> None:
    import re

    status, body = _post(server, {"audio": audio, "max_tokens": 4, **extra})
    assert status == 400, body
    assert re.search(message, body["error"]) and "\n" not in body["error"]
    status, body = _post(server, {"text_input": "hello", "max_tokens": 4})
    assert status == 400 and "takes audio" in body["error"]
    # the model still serves after the refusals
    ok = {"audio": base64.b64encode(sample_audio()[0]).decode(), "language": "en", "max_tokens": 3}
    assert _post(server, ok)[0] == 200


def test_speech_infer_requests(server) -> None:
    """What /infer's ``audio`` input becomes: one request per WAV element or FP32 row (language detected)."""
    from torchport.runtimes._errors import InferenceInputError
    from torchport.runtimes._generate import Seq2SeqBatch
    from torchport.runtimes.server._speech_infer import SpeechInfer

    session = Session.from_package(Path(server.repository.get("whisper", None).path))
    infer = SpeechInfer.of(session, "whisper")
    assert infer is not None and infer.metadata()[0] == [
        {"name": "audio", "datatype": "BYTES", "shape": [-1]}
    ]
    audio = sample_audio()
    batch = Seq2SeqBatch(session)
    reqs = infer.requests({"audio": np.array(audio, dtype=object)}, detect=batch.first_logits)
    assert len(reqs) == 2 and infer.output_shape({"audio": np.array(audio, dtype=object)}) == (2,)
    for req, item in zip(reqs, audio, strict=True):
        source = infer.codec.sources([item])[0]
        assert np.array_equal(req.source["input_features"], source["input_features"])
        assert req.forced == infer.codec.forced(detect=lambda s=source: batch.first_logits([s]))
        assert req.forced[0] in (50259, 50261, 50265)  # a detected language token
    samples = np.stack([decode_audio(audio[0])[:8000]] * 3)
    assert len(infer.requests({"audio": samples})) == 3
    with pytest.raises(InferenceInputError, match=r"^audio is not a WAV file"):
        infer.encode({"audio": np.array([b"junk"], dtype=object)})
    with pytest.raises(InferenceInputError, match=r"^input 'audio' has datatype INT32; send BYTES"):
        infer.check_declared("INT32", (1,), {})
    with pytest.raises(InferenceInputError, match=r"takes one input 'audio'"):
        infer.requests({"text": np.array(["hi"], dtype=object)})


def _infer_new_tokens(server) -> int:
    from torchport.runtimes.server._speech_infer import SpeechInfer

    infer = SpeechInfer.of(Session.from_package(Path(server.repository.get("whisper", None).path)), "whisper")
    assert infer is not None
    return infer.max_new_tokens


def test_infer_takes_bytes_audio_and_answers_the_text_over_http_and_grpc(server) -> None:
    """/infer's ``text_output`` is /generate's text for the same WAV (language detected, greedy, the
    package's max_length), over HTTP JSON, HTTP binary and gRPC; metadata and config list ``audio``."""
    import tritonclient.grpc as tg
    import tritonclient.http as th

    from torchport.runtimes._audio_request import SpeechCodec
    from torchport.runtimes._generate import Seq2SeqBatch

    audio = sample_audio()
    n = _infer_new_tokens(server)
    session = Session.from_package(Path(server.repository.get("whisper", None).path))
    codec = SpeechCodec.from_manifest(session.manifest)
    assert codec is not None
    text = TextCodec.from_package(session.package)
    expected = []
    for item in audio:
        # the Python API: features, the language detected from the first decoder step, greedy,
        # max_length counting the start token and the forced prompt
        source = codec.sources([item])[0]
        forced = codec.forced(detect=lambda s=source: Seq2SeqBatch(session).first_logits([s]))
        new = n - len(forced)
        tokens = Generator(session).generate(None, sources=[source], forced=forced, max_new_tokens=new)
        expected.append(text.decode(tokens.tokens[0]))
        # /generate, the language detected the same way
        status, body = _post(server, {"audio": base64.b64encode(item).decode(), "max_tokens": new})
        assert status == 200 and body["text_output"] == expected[-1], body
    data = np.array(audio, dtype=object)
    hc = th.InferenceServerClient(f"127.0.0.1:{server.port}")
    for binary in (False, True):  # JSON BYTES are text: the WAV files' base64
        inp = th.InferInput("audio", [len(audio)], "BYTES")
        b64 = np.array([base64.b64encode(a) for a in audio], dtype=object)
        inp.set_data_from_numpy(data if binary else b64, binary_data=binary)
        out = th.InferRequestedOutput("text_output", binary_data=binary)
        got = hc.infer("whisper", [inp], outputs=[out]).as_numpy("text_output")
        assert [g.decode() if isinstance(g, bytes) else g for g in got] == expected, binary
    gc = tg.InferenceServerClient(server.grpc_url)
    ginp = tg.InferInput("audio", [len(audio), 1], "BYTES")
    ginp.set_data_from_numpy(data.reshape(-1, 1))
    got = gc.infer("whisper", [ginp]).as_numpy("text_output")
    assert got.shape == (len(audio), 1) and [g.decode() for g in got.reshape(-1)] == expected
    meta = hc.get_model_metadata("whisper")
    assert {"name": "audio", "datatype": "BYTES", "shape": [-1]} in meta["inputs"]
    assert {"name": "text_output", "datatype": "BYTES", "shape": [-1]} in meta["outputs"]
    assert meta["parameters"]["text_task"] == "automatic-speech-recognition"
    config = hc.get_model_config("whisper")
    assert "audio" in [t["name"] for t in config["input"]]
    assert "text_output" in [t["name"] for t in config["output"]]
    gmeta = gc.get_model_metadata("whisper", as_json=True)
    assert "audio" in [t["name"] for t in gmeta["inputs"]]


def test_infer_takes_fp32_samples_over_http_and_grpc(server) -> None:
    """FP32 ``[batch, samples]`` (16 kHz) on /infer: each row's text is /generate's for the same samples."""
    import tritonclient.grpc as tg
    import tritonclient.http as th

    from torchport.runtimes._audio_request import SpeechCodec
    from torchport.runtimes._generate import Seq2SeqBatch

    samples = decode_audio(sample_audio()[0])[:16000].astype(np.float32)
    session = Session.from_package(Path(server.repository.get("whisper", None).path))
    codec = SpeechCodec.from_manifest(session.manifest)
    assert codec is not None
    source = codec.sources([samples])[0]
    forced = codec.forced(detect=lambda: Seq2SeqBatch(session).first_logits([source]))
    new = _infer_new_tokens(server) - len(forced)
    status, body = _post(server, {"audio": samples.tolist(), "max_tokens": new})
    assert status == 200, body
    batch = np.stack([samples, samples])
    hc = th.InferenceServerClient(f"127.0.0.1:{server.port}")
    inp = th.InferInput("audio", list(batch.shape), "FP32")
    inp.set_data_from_numpy(batch, binary_data=True)
    got = hc.infer("whisper", [inp]).as_numpy("text_output")
    assert [g.decode() for g in got] == [body["text_output"]] * 2
    gc = tg.InferenceServerClient(server.grpc_url)
    ginp = tg.InferInput("audio", list(batch.shape), "FP32")
    ginp.set_data_from_numpy(batch)
    assert [g.decode() for g in gc.infer("whisper", [ginp]).as_numpy("text_output")] == [
        body["text_output"]
    ] * 2


@pytest.mark.parametrize(
    ("items", "datatype", "message"),
    [
        ([b""], "BYTES", r"audio is empty"),
        ([b"ID3 not a wav"], "BYTES", r"audio is not a WAV file"),
        ([wav(np.zeros(31 * 16000))], "BYTES", r"audio is 31\.0 s long; the limit is 30 s"),
        ([b"", None], "BYTES", r"audio is empty"),  # a bad item next to a good one fails its request alone
        (
            [1, 2],
            "INT32",
            r"input 'audio' has datatype (INT32, the model expects BYTES|BYTES, the request says INT32)",
        ),
        (
            [[1.0, 2.0]],
            "FP64",
            r"input 'audio' has datatype (FP64, the model expects BYTES|BYTES, the request says FP64)",
        ),
    ],
)
def test_bad_infer_audio_is_a_one_line_400_and_invalid_argument(
    server, items: list, datatype: str, message: str
) -> None:
    import re

    import tritonclient.grpc as tg
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    good = sample_audio()[0]
    values = [good if v is None else v for v in items]
    data = np.array(values, dtype={"BYTES": object, "INT32": np.int32, "FP64": np.float64}[datatype])
    hc = th.InferenceServerClient(f"127.0.0.1:{server.port}")
    inp = th.InferInput("audio", list(data.shape), datatype)
    inp.set_data_from_numpy(data)
    with pytest.raises(InferenceServerException) as e:
        hc.infer("whisper", [inp])
    assert e.value.status() == "400" and re.search(message, e.value.message()), e.value
    assert "\n" not in e.value.message()
    gc = tg.InferenceServerClient(server.grpc_url)
    ginp = tg.InferInput("audio", list(data.shape), datatype)
    ginp.set_data_from_numpy(data)
    with pytest.raises(InferenceServerException) as g:
        gc.infer("whisper", [ginp])
    assert g.value.status() == "StatusCode.INVALID_ARGUMENT" and re.search(message, g.value.message()), (
        g.value
    )
    # the model still serves after the refusals
    ok = th.InferInput("audio", [1], "BYTES")
    ok.set_data_from_numpy(np.array([good], dtype=object))
    assert hc.infer("whisper", [ok]).as_numpy("text_output").shape == (1,)


def test_concurrent_infer_requests_with_a_bad_one_each_get_their_own_answer(server) -> None:
    """/infer requests in flight together (one of them bad) share the engine; each gets its own answer."""
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    audio = sample_audio()

    def infer(item: bytes) -> str:
        client = th.InferenceServerClient(f"127.0.0.1:{server.port}")
        inp = th.InferInput("audio", [1], "BYTES")
        inp.set_data_from_numpy(np.array([item], dtype=object))
        try:
            return client.infer("whisper", [inp]).as_numpy("text_output")[0].decode()
        except InferenceServerException as e:
            return f"error: {e.message()}"

    alone = [infer(a) for a in audio]
    items = [audio[0], b"junk", audio[1], audio[0]]
    with ThreadPoolExecutor(len(items)) as pool:
        got = list(pool.map(infer, items))
    assert got[0] == got[3] == alone[0] and got[2] == alone[1]
    assert got[1].startswith("error: audio is not a WAV file")


def test_generate_leaves_the_audio_work_to_the_executor(server) -> None:
    """Parsing a speech /generate body decodes nothing: the WAV decode, log-mel and language
    detection are the request's ``prepare``, which the route runs in the executor."""
    from torchport.runtimes._audio_request import SpeechCodec
    from torchport.runtimes.server._generate_engine import GenerationEngine
    from torchport.runtimes.server._generate_routes import parse_generate
    from torchport.runtimes.server._protocol import HTTPError

    session = Session.from_package(Path(server.repository.get("whisper", None).path))
    engine = GenerationEngine(session)
    codec, speech = TextCodec.from_package(session.package), SpeechCodec.from_manifest(session.manifest)
    assert codec is not None and speech is not None
    body = {"audio": base64.b64encode(sample_audio()[0]).decode(), "max_tokens": 4}
    parsed = parse_generate(json.dumps(body).encode(), engine, codec, speech)
    assert parsed.request.source is None and parsed.prepare is not None
    parsed.prepare()
    assert parsed.request.source is not None and parsed.request.forced  # features, detected language
    bad = parse_generate(
        json.dumps({"audio": base64.b64encode(b"junk").decode()}).encode(), engine, codec, speech
    )
    assert bad.prepare is not None
    with pytest.raises(HTTPError, match=r"^audio is not a WAV file"):
        bad.prepare()


def test_concurrent_generate_requests_one_with_bad_audio_each_get_their_own_answer(server) -> None:
    import threading

    audio = sample_audio()
    good = [
        {"audio": base64.b64encode(audio[0]).decode(), "language": "en", "max_tokens": 6},
        {"audio": base64.b64encode(audio[1]).decode(), "language": "fr", "max_tokens": 5},
        {"audio": base64.b64encode(audio[0]).decode(), "language": "de", "max_tokens": 7},
    ]
    bad = [
        (
            {"audio": base64.b64encode(b"RIFF junk").decode(), "max_tokens": 4},
            URL,
            r"^audio is not a WAV file",
        ),
        (
            {"audio": base64.b64encode(wav(np.zeros(31 * 16000))).decode(), "max_tokens": 4},
            URL + "_stream",
            r"^audio is 31\.0 s long; the limit is 30 s",
        ),
    ]
    jobs = [(body, URL) for body in good] + [(body, path) for body, path, _ in bad]
    results: dict[int, tuple[int, dict]] = {}
    start = threading.Barrier(len(jobs))

    def one(k: int, body: dict, path: str) -> None:
        start.wait()
        results[k] = _post(server, body, path)

    threads = [threading.Thread(target=one, args=(k, b, p)) for k, (b, p) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    import re

    for k, body in enumerate(good):
        status, got = results[k]
        assert status == 200, got
        assert got["text_output"] == _local(
            server, audio[0 if k != 1 else 1], body["max_tokens"], language=body["language"]
        )
    for k, (_, _, message) in enumerate(bad, start=len(good)):
        status, got = results[k]
        assert status == 400 and re.search(message, got["error"]), got  # a plain 400, the stream's too


def test_infer_takes_language_task_and_max_tokens_as_request_parameters(server) -> None:
    import tritonclient.grpc as tg
    import tritonclient.http as th

    audio = sample_audio()[1]
    expected = _local(server, audio, 5, language="fr", task="translate")
    params = {"language": "fr", "task": "translate", "max_tokens": 5}
    data = np.array([audio], dtype=object)
    hc = th.InferenceServerClient(f"127.0.0.1:{server.port}")
    inp = th.InferInput("audio", [1], "BYTES")
    inp.set_data_from_numpy(data, binary_data=True)
    got = hc.infer("whisper", [inp], parameters=params).as_numpy("text_output")
    assert [g.decode() for g in got] == [expected]
    gc = tg.InferenceServerClient(server.grpc_url)
    ginp = tg.InferInput("audio", [1], "BYTES")
    ginp.set_data_from_numpy(data)
    assert [g.decode() for g in gc.infer("whisper", [ginp], parameters=params).as_numpy("text_output")] == [
        expected
    ]
    with pytest.raises(tg.InferenceServerException, match=r"language 'xx' is not one of"):
        gc.infer("whisper", [ginp], parameters={"language": "xx"})
