"""Text in on /v2/models/{m}/infer: a BYTES ``text`` input for text models whose package carries a tokenizer.

Tiny BERT models (random weights) with a tokenizer built in code are exported with torchport and
served on a real socket; the expected answers are computed independently with the ``tokenizers``
library and onnxruntime on the package's ONNX file.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tokenizers import Tokenizer
from tritonclient.utils import InferenceServerException

pytest.importorskip("transformers")

import torch  # noqa: E402

from tests.lm_models import tiny_bert, train_tokenizer  # noqa: E402
from tests.runtimes.conftest import http, running_server  # noqa: E402
from torchport.exporters import export_model  # noqa: E402

LABELS = {0: "negative", 1: "neutral", 2: "positive"}
TAGS = {0: "O", 1: "B-X", 2: "I-X", 3: "B-Y"}
TOPICS = {0: "sports", 1: "politics", 2: "science", 3: "music"}
TEXTS = ["the quick brown fox", "hello world", "one two three four five six seven"]
SEQ_MAX = 32


def _export(src: Path, dest: Path, seq_max: int = SEQ_MAX) -> None:
    export_model(str(src), dest, quiet=True, dims=[f"seq=1..{seq_max}", "batch=1..8"], validate=False)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("text-infer")
    repo = root / "repo"
    torch.manual_seed(0)
    clf = root / "src-clf"
    tiny_bert("BertForSequenceClassification", num_labels=3, id2label=LABELS).save_pretrained(clf)
    train_tokenizer(clf)
    _export(clf, repo / "clf")
    # the same classifier with a tokenizer that records truncation (at 512: the served model's
    # seq range, 1..16, is the tighter limit)
    trunc = root / "src-trunc"
    shutil.copytree(clf, trunc)
    tok = Tokenizer.from_file(str(trunc / "tokenizer.json"))
    tok.enable_truncation(512)
    tok.save(str(trunc / "tokenizer.json"))
    _export(trunc, repo / "trunc", seq_max=16)
    emb = root / "src-emb"
    tiny_bert("BertModel").save_pretrained(emb)
    train_tokenizer(emb)
    (emb / "modules.json").write_text(
        json.dumps(
            [
                {"type": "sentence_transformers.models.Pooling"},
                {"type": "sentence_transformers.models.Normalize"},
            ]
        )
    )
    _export(emb, repo / "emb")
    tok_clf = root / "src-ner"
    tiny_bert("BertForTokenClassification", num_labels=4, id2label=TAGS).save_pretrained(tok_clf)
    train_tokenizer(tok_clf)
    _export(tok_clf, repo / "ner")
    multi = root / "src-multi"
    config = {"num_labels": 4, "id2label": TOPICS, "problem_type": "multi_label_classification"}
    tiny_bert("BertForSequenceClassification", **config).save_pretrained(multi)
    train_tokenizer(multi)
    _export(multi, repo / "multi")
    # the same package as exported before problem_type was recorded (the manifest is not hashed)
    shutil.copytree(repo / "multi", repo / "multi-old")
    manifest = json.loads((repo / "multi-old" / "torchport.json").read_text())
    del manifest["extra"]["text"]["problem_type"]
    (repo / "multi-old" / "torchport.json").write_text(json.dumps(manifest))
    return repo


@pytest.fixture(scope="module")
def server(repo: Path):
    with running_server(repo, grpc_port=0, max_batch_size=8, max_queue_delay_ms=1) as srv:
        yield srv


@pytest.fixture
def repo_server_batched(repo: Path):
    """Only the classifier, batching with a long queue delay (a batch fills by size, so the test
    does not depend on timing; the delay only bounds a hang)."""
    one = repo.parent / "only-clf"
    if not one.exists():
        one.mkdir()
        shutil.copytree(repo / "clf", one / "clf")
    with running_server(one, max_batch_size=6, max_queue_delay_ms=2000) as srv:
        yield srv


# -- the independent reference: tokenizers + onnxruntime on the package's files ------------------


def _ids(repo: Path, model: str, text: str, truncate: int | None = None) -> list[int]:
    tok = Tokenizer.from_file(str(repo / model / "tokenizer.json"))
    tok.no_truncation()
    if truncate:
        tok.enable_truncation(truncate)
    return tok.encode(text).ids


def _run(repo: Path, model: str, ids: list[int]) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(repo / model / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.array([ids], np.int64)
    return sess.run(
        None, {"input_ids": x, "attention_mask": np.ones_like(x), "token_type_ids": np.zeros_like(x)}
    )


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _classify(
    repo: Path, model: str, text: str, truncate: int | None = None
) -> tuple[np.ndarray, str, float]:
    (logits,) = _run(repo, model, _ids(repo, model, text, truncate))
    probs = _softmax(logits[0])
    return logits[0], LABELS[int(probs.argmax())], float(probs.max())


def _client(server) -> th.InferenceServerClient:
    return th.InferenceServerClient(server.url.removeprefix("http://"))


def _text(values: list, *, binary: bool, shape: list[int] | None = None) -> th.InferInput:
    arr = np.array(values, dtype=object).reshape(shape or [len(values)])
    inp = th.InferInput("text", list(arr.shape), "BYTES")
    inp.set_data_from_numpy(arr, binary_data=binary)
    return inp


def _post(server, model: str, body: dict) -> tuple[int, dict]:
    status, _, reply = http(server, "POST", f"/v2/models/{model}/infer", json.dumps(body).encode())
    return status, json.loads(reply)


# -- classification ------------------------------------------------------------------------------


@pytest.mark.parametrize(("binary", "shape"), [(True, None), (False, [3, 1])])
def test_text_in_label_and_score_out(repo: Path, server, binary: bool, shape) -> None:
    client = _client(server)
    result = client.infer("clf", [_text(TEXTS, binary=binary, shape=shape)])
    client.close()
    labels = [x.decode() for x in result.as_numpy("label")]
    scores = result.as_numpy("score")
    logits = result.as_numpy("logits")
    assert scores.dtype == np.float32 and scores.shape == (3,) and logits.shape == (3, 3)
    for i, text in enumerate(TEXTS):
        want_logits, want_label, want_score = _classify(repo, "clf", text)
        np.testing.assert_allclose(logits[i], want_logits, atol=1e-5, rtol=1e-4)
        assert labels[i] == want_label
        assert scores[i] == pytest.approx(want_score, abs=1e-5)
    assert len({*labels}) >= 1 and all(label in LABELS.values() for label in labels)


def test_metadata_lists_the_text_input_and_the_added_outputs(server) -> None:
    client = _client(server)
    meta = client.get_model_metadata("clf")
    client.close()
    inputs = {t["name"]: t for t in meta["inputs"]}
    outputs = {t["name"]: t for t in meta["outputs"]}
    assert inputs["text"] == {"name": "text", "datatype": "BYTES", "shape": [-1]}
    assert {"input_ids", "attention_mask", "token_type_ids"} <= set(inputs)
    assert outputs["label"]["datatype"] == "BYTES" and outputs["score"]["datatype"] == "FP32"
    assert meta["parameters"]["text_task"] == "text-classification"


def _config_tensors(config: dict) -> tuple[dict, dict]:
    """The config's inputs and outputs by name, dims as ints (gRPC's JSON writes int64 as strings)."""

    def by_name(tensors: list[dict]) -> dict:
        out = {}
        for t in tensors:
            t = {**t, "dims": [int(d) for d in t.get("dims", [])]}
            if "reshape" in t:
                t["reshape"] = {"shape": [int(d) for d in t["reshape"].get("shape", [])]}
            out[t["name"]] = t
        return out

    return by_name(config["input"]), by_name(config["output"])


@pytest.mark.parametrize("model", ["clf", "emb", "ner", "multi"])
def test_config_lists_what_metadata_lists_over_http_and_grpc(server, model: str) -> None:
    hc = _client(server)
    meta = hc.get_model_metadata(model)
    http_config = hc.get_model_config(model)
    hc.close()
    gc = tg.InferenceServerClient(server.grpc_url)
    grpc_config = gc.get_model_config(model, as_json=True)["config"]
    typed = gc.get_model_config(model).config  # tritonclient's own protobuf parses it
    gc.close()
    assert http_config["max_batch_size"] == 8  # batched: dims leave out the batch dim
    http_in, http_out = _config_tensors(http_config)
    grpc_in, grpc_out = _config_tensors(grpc_config)
    assert [t["name"] for t in meta["inputs"]] == list(http_in) == list(grpc_in)
    assert [t["name"] for t in meta["outputs"]] == list(http_out) == list(grpc_out)
    for listed, config in ((meta["inputs"], http_in), (meta["outputs"], http_out)):
        for t in listed:
            want = "TYPE_STRING" if t["datatype"] == "BYTES" else f"TYPE_{t['datatype']}"
            assert config[t["name"]]["data_type"] == want, t
            full = [-1] + (config[t["name"]]["dims"] if "reshape" not in config[t["name"]] else [])
            assert full == t["shape"], t
    for name in http_in:  # text or the token inputs: each is optional
        assert http_in[name]["optional"] is True and grpc_in[name]["optional"] is True
    assert http_in["text"] == {
        "name": "text",
        "data_type": "TYPE_STRING",
        "dims": [1],
        "reshape": {"shape": []},
        "optional": True,
    }
    assert http_in == grpc_in and http_out == grpc_out
    typed_in = {t.name: t for t in typed.input}
    assert typed_in["text"].optional and list(typed_in["text"].dims) == [1]
    assert typed_in["text"].HasField("reshape") and list(typed_in["text"].reshape.shape) == []
    added = {
        "clf": {"label": ("TYPE_STRING", [1]), "score": ("TYPE_FP32", [1])},
        "multi": {"label": ("TYPE_STRING", [1]), "score": ("TYPE_FP32", [1]), "scores": ("TYPE_FP32", [4])},
        "emb": {"embedding": ("TYPE_FP32", [32])},
        "ner": {
            "labels": ("TYPE_STRING", [-1]),
            "scores": ("TYPE_FP32", [-1]),
            "tokens": ("TYPE_STRING", [-1]),
        },
    }[model]
    for name, (dtype, dims) in added.items():
        assert (http_out[name]["data_type"], http_out[name]["dims"]) == (dtype, dims)


def test_tensor_inputs_keep_working_unchanged(repo: Path, server) -> None:
    ids = np.array([_ids(repo, "clf", TEXTS[0])], np.int64)
    body = {
        "inputs": [
            {"name": n, "shape": list(ids.shape), "datatype": "INT64", "data": a.reshape(-1).tolist()}
            for n, a in (
                ("input_ids", ids),
                ("attention_mask", np.ones_like(ids)),
                ("token_type_ids", 0 * ids),
            )
        ]
    }
    status, reply = _post(server, "clf", body)
    assert status == 200, reply
    assert [o["name"] for o in reply["outputs"]] == ["logits"]  # as before: the model's outputs only
    want_logits, want_label, _ = _classify(repo, "clf", TEXTS[0])
    np.testing.assert_allclose(reply["outputs"][0]["data"], want_logits, atol=1e-5, rtol=1e-4)
    # the added outputs can be asked for by name
    status, reply = _post(server, "clf", {**body, "outputs": [{"name": "label"}]})
    assert status == 200 and reply["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [1], "data": [want_label]}
    ]


def test_concurrent_text_requests_of_different_lengths_batch_together(
    repo: Path, repo_server_batched
) -> None:
    srv = repo_server_batched
    texts = [TEXTS[i % 3][: 4 + 3 * i] for i in range(6)]
    client = th.InferenceServerClient(srv.url.removeprefix("http://"), concurrency=6)
    handles = [client.async_infer("clf", [_text([t], binary=True)]) for t in texts]
    results = [h.get_result() for h in handles]
    metrics = http(srv, "GET", "/metrics")[2].decode()
    client.close()
    for text, result in zip(texts, results, strict=True):
        want_logits, want_label, _ = _classify(repo, "clf", text)
        np.testing.assert_allclose(result.as_numpy("logits")[0], want_logits, atol=1e-5, rtol=1e-4)
        assert result.as_numpy("label")[0].decode() == want_label
    runs = float(re.search(r'^torchport_batch_size_count\{model="clf"\} (\S+)$', metrics, re.M).group(1))
    assert runs < len(texts), f"{runs:g} runs for {len(texts)} requests"


def test_text_longer_than_the_model_is_truncated_when_the_tokenizer_says_so(repo: Path, server) -> None:
    long = " ".join(TEXTS * 3)
    assert len(_ids(repo, "trunc", long)) > 16
    status, reply = _post(
        server, "trunc", {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [long]}]}
    )
    assert status == 200, reply
    got = {o["name"]: o["data"] for o in reply["outputs"]}
    want_logits, want_label, want_score = _classify(repo, "trunc", long, truncate=16)
    np.testing.assert_allclose(got["logits"], want_logits, atol=1e-5, rtol=1e-4)
    assert got["label"] == [want_label] and got["score"][0] == pytest.approx(want_score, abs=1e-5)


def test_grpc_takes_the_same_text_input(repo: Path, server) -> None:
    client = tg.InferenceServerClient(server.grpc_url)
    arr = np.array(TEXTS, dtype=object)
    inp = tg.InferInput("text", [len(TEXTS)], "BYTES")
    inp.set_data_from_numpy(arr)
    result = client.infer("clf", [inp])
    client.close()
    assert [x.decode() for x in result.as_numpy("label")] == [_classify(repo, "clf", t)[1] for t in TEXTS]
    with pytest.raises(InferenceServerException, match=r"not valid UTF-8"):
        bad = tg.InferInput("text", [1], "BYTES")
        bad.set_data_from_numpy(np.array([b"ok \xff"], dtype=object))
        tg.InferenceServerClient(server.grpc_url).infer("clf", [bad])


# -- multi-label classification ------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def test_the_package_records_the_problem_type(repo: Path) -> None:
    text = {
        m: json.loads((repo / m / "torchport.json").read_text())["extra"]["text"] for m in ("clf", "multi")
    }
    assert text["multi"]["problem_type"] == "multi_label_classification"
    assert text["clf"]["problem_type"] is None  # the config sets none: softmax over 3 labels, as before


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_multi_label_classifier_answers_sigmoid_scores(repo: Path, server, protocol: str) -> None:
    if protocol == "http":
        client = _client(server)
        result = client.infer("multi", [_text(TEXTS, binary=True)])
    else:
        client = tg.InferenceServerClient(server.grpc_url)
        inp = tg.InferInput("text", [len(TEXTS)], "BYTES")
        inp.set_data_from_numpy(np.array(TEXTS, dtype=object))
        result = client.infer("multi", [inp])
    client.close()
    labels = [x.decode() for x in result.as_numpy("label")]
    score, scores = result.as_numpy("score"), result.as_numpy("scores")
    assert score.shape == (3,) and scores.shape == (3, 4) and scores.dtype == np.float32
    for i, text in enumerate(TEXTS):
        (logits,) = _run(repo, "multi", _ids(repo, "multi", text))
        want = _sigmoid(logits[0])  # each label on its own: Hugging Face's pipeline, sigmoid
        np.testing.assert_allclose(scores[i], want, atol=1e-5)
        assert labels[i] == TOPICS[int(want.argmax())]
        assert score[i] == pytest.approx(want.max(), abs=1e-5)
        assert abs(score[i] - _softmax(logits[0]).max()) > 0.05  # not the softmax any more
    assert not np.allclose(scores.sum(axis=1), 1.0, atol=0.05)


def test_a_package_without_the_problem_type_keeps_the_softmax_score(repo: Path, server) -> None:
    client = _client(server)
    result = client.infer("multi-old", [_text(TEXTS[:1], binary=True)])
    meta = client.get_model_metadata("multi-old")
    client.close()
    (logits,) = _run(repo, "multi-old", _ids(repo, "multi-old", TEXTS[0]))
    assert result.as_numpy("score")[0] == pytest.approx(_softmax(logits[0]).max(), abs=1e-5)
    assert result.as_numpy("scores") is None
    assert "scores" not in {t["name"] for t in meta["outputs"]}


def test_scores_follow_the_pipeline_rule_for_each_problem_type() -> None:
    from torchport.runtimes.server._text_infer import score_function

    assert score_function({}, 1) == "softmax"  # packages from before problem_type: as they were served
    assert score_function({"problem_type": "multi_label_classification"}, 4) == "sigmoid"
    assert score_function({"problem_type": None}, 1) == "sigmoid"  # one label: sigmoid, as the pipeline
    assert score_function({"problem_type": None}, 3) == "softmax"
    assert score_function({"problem_type": "single_label_classification"}, 1) == "softmax"
    assert score_function({"problem_type": "regression"}, 1) == "none"


# -- embeddings and token classification ---------------------------------------------------------


def test_embedding_model_answers_a_pooled_normalized_embedding(repo: Path, server) -> None:
    client = _client(server)
    result = client.infer("emb", [_text(TEXTS, binary=True)])
    client.close()
    assert result.get_response()["outputs"][0]["name"] == "embedding"
    emb = result.as_numpy("embedding")
    assert emb.shape == (3, 32) and emb.dtype == np.float32
    for i, text in enumerate(TEXTS):
        hidden = _run(repo, "emb", _ids(repo, "emb", text))[0][0]  # last_hidden_state [seq, hidden]
        mean = hidden.mean(axis=0)
        np.testing.assert_allclose(emb[i], mean / np.linalg.norm(mean), atol=1e-5)


def test_token_classifier_answers_a_label_per_token(repo: Path, server) -> None:
    client = _client(server)
    result = client.infer("ner", [_text(TEXTS[:2], binary=True)])
    client.close()
    labels, tokens = result.as_numpy("labels"), result.as_numpy("tokens")
    tok = Tokenizer.from_file(str(repo / "ner" / "tokenizer.json"))
    width = max(len(_ids(repo, "ner", t)) for t in TEXTS[:2])
    assert labels.shape == tokens.shape == result.as_numpy("scores").shape == (2, width)
    for i, text in enumerate(TEXTS[:2]):
        ids = _ids(repo, "ner", text)
        (logits,) = _run(repo, "ner", ids)
        want = [TAGS[int(k)] for k in logits[0].argmax(-1)]
        assert [x.decode() for x in labels[i, : len(ids)]] == want
        assert [x.decode() for x in tokens[i, : len(ids)]] == [tok.id_to_token(k) for k in ids]
        assert all(x == b"" for x in labels[i, len(ids) :])  # padding has no label


# -- bad input -----------------------------------------------------------------------------------


def _raw_binary(server, model: str, items: list[bytes]) -> tuple[int, dict]:
    blob = b"".join(len(b).to_bytes(4, "little") + b for b in items)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": [len(items)],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    ).encode()
    status, _, reply = http(
        server,
        "POST",
        f"/v2/models/{model}/infer",
        header + blob,
        {"Inference-Header-Content-Length": str(len(header))},
    )
    return status, json.loads(reply)


def test_bytes_that_are_not_utf8_are_a_400(server) -> None:
    status, reply = _raw_binary(server, "clf", [b"fine", b"caf\xe9 au lait"])
    assert status == 400 and reply["error"] == "input 'text' element 1 is not valid UTF-8 (byte 0xe9 at 3)"


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [" ".join(TEXTS * 4)]}],
            r"^input 'text' element 0 is \d+ tokens long; model 'clf' takes at most 32 \(its 'seq' range is "
            r"1\.\.32, and its tokenizer does not truncate\)$",
        ),
        (
            [
                {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]},
                {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]},
            ],
            r"^give either 'text' or the model's tensor inputs \(input_ids, attention_mask, token_type_ids\), "
            r"not both \(got 'text' and 'input_ids'\)$",
        ),
        (
            [
                {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]},
                {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]},
            ],
            r"^give either 'text' or the model's tensor inputs .* not both \(got 'text' and 'input_ids'\)$",
        ),
        (
            [{"name": "text", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}],
            r"^input 'text' has shape \[1, 2\]; expected \[batch\] or \[batch, 1\]$",
        ),
        (
            [{"name": "text", "shape": [9], "datatype": "BYTES", "data": ["a"] * 9}],
            r"^input 'text' has 9 element\(s\); model 'clf' takes a batch of 1\.\.8$",
        ),
        (
            [{"name": "text", "shape": [1], "datatype": "INT64", "data": [3]}],
            r"^input 'text' has datatype INT64, the model expects BYTES$",
        ),
    ],
)
def test_bad_text_requests_are_one_line_400s(server, inputs: list, message: str) -> None:
    status, reply = _post(server, "clf", {"inputs": inputs})
    assert status == 400 and re.search(message, reply["error"]), reply
    assert "\n" not in reply["error"]
