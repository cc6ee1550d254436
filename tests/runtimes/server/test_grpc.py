"""The gRPC endpoint (Triton's GRPCInferenceService) on a real port, driven by tritonclient.grpc."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

tg = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.runtimes.conftest import (  # noqa: E402
    http,
    make_add_package,
    make_identity_package,
    make_seq_package,
    running_server,
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("grpc-repo")
    make_add_package(root / "add")
    make_seq_package(root / "seq")
    for dtype in ("int64", "bool", "float16", "string", "uint8"):
        make_identity_package(root / f"id_{dtype}", dtype)
    return root


@pytest.fixture(scope="module")
def server(repo):
    with running_server(repo, grpc_port=0, max_queue_delay_ms=200, max_batch_size=16) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    c = tg.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


def _input(name: str, arr: np.ndarray, datatype: str) -> tg.InferInput:
    inp = tg.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr)
    return inp


def test_health_and_metadata(server, client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("add")
    with pytest.raises(InferenceServerException, match="model 'add' has no version '7'; versions: 1"):
        client.is_model_ready("add", "7")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "torchport" and "statistics" in meta["extensions"]
    md = client.get_model_metadata("add", as_json=True)
    assert md["name"] == "add" and md["platform"] == "onnxruntime_onnx" and md["versions"] == ["1"]
    assert md["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]


def test_infer_matches_the_http_endpoint(server, client):
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    res = client.infer("add", [_input("x", x, "FP32")], request_id="g-1")
    assert res.get_response().id == "g-1" and res.get_response().model_version == "1"
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": x.ravel().tolist()}]}
    )
    status, _, raw = http(server, "POST", "/v2/models/add/infer", body.encode())
    outs = {
        o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in json.loads(raw)["outputs"]
    }
    assert status == 200
    np.testing.assert_allclose(res.as_numpy("y"), outs["y"], rtol=1e-6)
    np.testing.assert_allclose(res.as_numpy("z"), x + 1)
    only_z = client.infer("add", [_input("x", x, "FP32")], outputs=[tg.InferRequestedOutput("z")])
    assert only_z.as_numpy("y") is None and only_z.as_numpy("z").shape == (3, 4)


@pytest.mark.parametrize(
    "dtype, datatype, values",
    [
        ("int64", "INT64", np.array([[1, -2, 3]], np.int64)),
        ("bool", "BOOL", np.array([[True, False, True]])),
        ("float16", "FP16", np.array([[0.5, -1.25, 2.0]], np.float16)),
        ("uint8", "UINT8", np.array([[0, 7, 255]], np.uint8)),
        ("string", "BYTES", np.array([[b"a", b"", "\u00e9".encode()]], dtype=object)),
    ],
)
def test_datatypes_round_trip(client, dtype, datatype, values):
    res = client.infer(f"id_{dtype}", [_input("x", values, datatype)])
    np.testing.assert_array_equal(res.as_numpy("y"), values)


def test_concurrent_grpc_requests_are_batched(server):
    c = tg.InferenceServerClient(server.grpc_url)
    results: list = [None] * 6
    lock, done = threading.Lock(), threading.Event()

    def cb(i):
        def inner(result, error):
            with lock:
                results[i] = error or result
                if all(r is not None for r in results):
                    done.set()

        return inner

    xs = [np.full((1, 4), i, np.float32) for i in range(6)]
    for i, x in enumerate(xs):
        c.async_infer("add", [_input("x", x, "FP32")], callback=cb(i))
    assert done.wait(timeout=30)
    for x, r in zip(xs, results, strict=True):
        np.testing.assert_array_equal(r.as_numpy("z"), x + 1)
    stats = json.loads(http(server, "GET", "/v2/models/add/stats")[2])["model_stats"][0]
    assert any(b["batch_size"] == 6 for b in stats["batch_stats"])
    text = http(server, "GET", "/metrics")[2].decode()
    assert 'torchport_requests_total{model="add",endpoint="grpc_infer",status="OK"}' in text
    c.close()


@pytest.mark.parametrize(
    "model, inputs, message",
    [
        ("nope", [("x", np.ones((1, 4), np.float32), "FP32")], "unknown model 'nope'"),
        ("add", [("x", np.ones((1, 5), np.float32), "FP32")], "input 'x' dim 1 is 5, expected 4"),
        (
            "add",
            [("x", np.ones((1, 4), np.int64), "INT64")],
            "input 'x' has datatype FP32, the request says INT64",
        ),
        ("add", [("w", np.ones((1, 4), np.float32), "FP32")], "unknown input 'w'"),
    ],
)
def test_errors_carry_status_and_message(client, model, inputs, message):
    with pytest.raises(InferenceServerException, match=message) as info:
        client.infer(model, [_input(*i) for i in inputs])
    assert info.value.status() in ("StatusCode.NOT_FOUND", "StatusCode.INVALID_ARGUMENT")


def test_unknown_output_is_refused_as_on_http(client):
    """gRPC and HTTP check the requested outputs with the same helper: same status, same message."""
    wanted = [tg.InferRequestedOutput("w")]
    with pytest.raises(InferenceServerException, match=r"unknown output 'w'; model 'add' has: y, z") as info:
        client.infer("add", [_input("x", np.ones((1, 4), np.float32), "FP32")], outputs=wanted)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    result = client.infer(
        "add", [_input("x", np.ones((1, 4), np.float32), "FP32")], outputs=[tg.InferRequestedOutput("z")]
    )
    assert result.as_numpy("z") is not None and result.as_numpy("y") is None


def test_api_key_is_required_on_grpc(repo, monkeypatch):
    monkeypatch.setenv("TP_GRPC_KEY", "0123456789abcdef")
    with running_server(repo / "add", grpc_port=0, api_key_env="TP_GRPC_KEY") as srv:
        c = tg.InferenceServerClient(srv.grpc_url)
        assert c.is_server_live()  # health stays open, as on HTTP
        x = np.ones((1, 4), np.float32)
        with pytest.raises(InferenceServerException, match="missing or wrong API key") as info:
            c.infer("add", [_input("x", x, "FP32")])
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException, match="missing or wrong API key"):
            c.infer("add", [_input("x", x, "FP32")], headers={"authorization": "Bearer wrong-key-123"})
        res = c.infer("add", [_input("x", x, "FP32")], headers={"authorization": "Bearer 0123456789abcdef"})
        np.testing.assert_array_equal(res.as_numpy("z"), x + 1)
        c.close()


def test_message_size_limit_on_grpc(repo):
    with running_server(repo / "add", grpc_port=0, max_request_bytes=4096) as srv:
        c = tg.InferenceServerClient(srv.grpc_url)
        big = np.ones((64, 4), np.float32)  # 1 KiB: fine
        assert c.infer("add", [_input("x", big, "FP32")]).as_numpy("z").shape == (64, 4)
        huge = np.ones((30000, 4), np.float32)  # 480 KB: refused by the transport before decoding
        with pytest.raises(InferenceServerException, match="RESOURCE_EXHAUSTED|larger than max"):
            c.infer("add", [_input("x", huge, "FP32")])
        c.close()
