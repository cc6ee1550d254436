"""The v2 server on a real socket, driven by tritonclient.http (JSON and binary) and raw HTTP."""

from __future__ import annotations

import gzip
import json
import re
import socket
import struct
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from tests.runtimes.conftest import (
    corrupt,
    http,
    make_add_package,
    make_bf16_package,
    make_fixed_package,
    make_identity_package,
    make_reshape_package,
    make_seq_package,
    running_server,
)

DTYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "string": "BYTES",
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    make_add_package(root / "add" / "1", version="1")
    make_add_package(root / "add" / "2", version="2")
    make_seq_package(root / "seq")
    make_fixed_package(root / "fixed")
    make_reshape_package(root / "reshape")
    make_bf16_package(root / "bf16")
    for dtype in DTYPES:
        make_identity_package(root / f"id_{dtype}", dtype)
    corrupt(make_add_package(root / "broken", name="broken"))
    return root


@pytest.fixture(scope="module")
def server(repo):
    with running_server(repo, version_policy="all") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    c = th.InferenceServerClient(server.url.removeprefix("http://"), concurrency=8)
    yield c
    c.close()


def ort_run(pkg_path: Path, feeds: dict) -> dict:
    sess = ort.InferenceSession(str(pkg_path / "model.onnx"), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


def post_json(server, path: str, obj, headers=None):
    status, hdrs, body = http(server, "POST", path, json.dumps(obj).encode(), headers)
    return status, hdrs, json.loads(body) if body else None


# -- health & metadata ---------------------------------------------------------------------------


def test_health_and_metadata(server, client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "torchport" and "binary_tensor_data" in meta["extensions"]
    md = client.get_model_metadata("add")
    assert md["versions"] == ["1", "2"]
    assert md["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in md["outputs"]] == ["y", "z"]
    assert md["parameters"]["provider"] == "CPUExecutionProvider"
    assert md["parameters"]["dynamic_batching"] is True
    assert client.get_model_metadata("fixed")["parameters"]["dynamic_batching"] is False
    assert client.is_model_ready("add") and client.is_model_ready("add", "1")
    assert http(server, "GET", "/v2/models/add/versions/1")[0] == 200
    assert http(server, "GET", "/v2/health/live")[2] == b'{"live":true}'


def test_repository_index_reports_the_broken_package(server):
    status, _, body = post_json(server, "/v2/repository/index", {})
    assert status == 200
    index = {(m["name"], m["version"]): m for m in body}
    assert index[("add", "2")]["state"] == "READY"
    broken = index[("broken", "1")]
    assert broken["state"] == "UNAVAILABLE"
    assert (
        "'broken'" in broken["reason"] and "model.onnx" in broken["reason"] and "sha256" in broken["reason"]
    )


def test_broken_package_is_refused_while_others_serve(server, client):
    assert not client.is_model_ready("broken")
    status, _, body = post_json(
        server,
        "/v2/models/broken/infer",
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0] * 4}]},
    )
    assert status == 503 and "'broken'" in body["error"] and "sha256" in body["error"]
    assert client.is_server_ready()  # the others serve
    x = np.ones((1, 4), np.float32)
    inp = th.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(x)
    assert client.infer("add", [inp]).as_numpy("z").tolist() == [[2.0] * 4]


# -- infer ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True])
def test_infer_matches_in_process_onnxruntime(server, client, repo, binary):
    x = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    inp = th.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outs = [
        th.InferRequestedOutput("y", binary_data=binary),
        th.InferRequestedOutput("z", binary_data=binary),
    ]
    res = client.infer("add", [inp], outputs=outs, request_id="req-42", model_version="1")
    ref = ort_run(repo / "add" / "1", {"x": x})
    np.testing.assert_array_equal(res.as_numpy("y"), ref["y"])
    np.testing.assert_array_equal(res.as_numpy("z"), ref["z"])
    resp = res.get_response()
    assert resp["id"] == "req-42" and resp["model_name"] == "add" and resp["model_version"] == "1"


def test_default_version_is_the_highest_and_requested_outputs_are_honoured(server, client):
    x = np.zeros((2, 4), np.float32)
    inp = th.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(x)
    res = client.infer("add", [inp], outputs=[th.InferRequestedOutput("z")])
    resp = res.get_response()
    assert resp["model_version"] == "2"
    assert [o["name"] for o in resp["outputs"]] == ["z"]
    assert res.as_numpy("y") is None


def test_mixed_binary_and_json_outputs_and_request_level_binary(server):
    body = {
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [[1, 2, 3, 4]]}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}],
    }
    status, hdrs, raw = http(server, "POST", "/v2/models/add/infer", json.dumps(body).encode())
    assert status == 200 and hdrs["content-type"] == "application/octet-stream"
    hl = int(hdrs["inference-header-content-length"])
    header = json.loads(raw[:hl])
    y, z = header["outputs"]
    assert y["parameters"]["binary_data_size"] == 12 and len(raw) - hl == 12
    assert z["data"] == [2.0, 3.0, 4.0, 5.0]
    # request-level parameters.binary_data_output: every output binary
    body = {"inputs": body["inputs"], "parameters": {"binary_data_output": True}}
    status, hdrs, raw = http(server, "POST", "/v2/models/add/infer", json.dumps(body).encode())
    hl = int(hdrs["inference-header-content-length"])
    header = json.loads(raw[:hl])
    assert [o["parameters"]["binary_data_size"] for o in header["outputs"]] == [12, 16]
    np.testing.assert_array_equal(np.frombuffer(raw[hl + 12 :], "<f4"), [2, 3, 4, 5])


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("binary", [False, True])
def test_every_datatype_round_trips(client, dtype, binary):
    datatype = DTYPES[dtype]
    rng = np.random.default_rng(7)
    if dtype == "string":
        x = np.array([["a", "bé", ""], ["xyz", "1", "2"]], dtype=object)
    elif dtype == "bool":
        x = rng.integers(0, 2, (2, 3)).astype(bool)
    else:
        x = (rng.standard_normal((2, 3)) * 20).astype(dtype)
    inp = th.InferInput("x", [2, 3], datatype)
    inp.set_data_from_numpy(x, binary_data=binary)
    res = client.infer(f"id_{dtype}", [inp], outputs=[th.InferRequestedOutput("y", binary_data=binary)])
    got = res.as_numpy("y")
    if dtype == "string":
        assert [[v.decode() if isinstance(v, bytes) else v for v in row] for row in got] == x.tolist()
    else:
        assert got.dtype == x.dtype
        np.testing.assert_array_equal(got, x)


def test_bf16_json_and_binary(server):
    values = [1.5, -2.0, 3.0, 0.1]
    body = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "BF16", "data": values}]}
    status, _, out = post_json(server, "/v2/models/bf16/infer", body)
    assert status == 200, out
    got = out["outputs"][0]
    assert got["datatype"] == "BF16"
    np.testing.assert_allclose(got["data"], [1.5, 0.0, 3.0, 0.1], rtol=1e-2)
    bits = (np.array(values, np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [2, 2], "datatype": "BF16", "parameters": {"binary_data_size": 8}}
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()
    status, hdrs, raw = http(
        server,
        "POST",
        "/v2/models/bf16/infer",
        header + bits,
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 200
    out_bits = np.frombuffer(raw[int(hdrs["inference-header-content-length"]) :], "<u2")
    as_float = (out_bits.astype(np.uint32) << 16).view(np.float32)
    assert as_float[0] == 1.5 and as_float[1] == 0.0 and as_float[2] == 3.0


def test_nested_json_data_and_gzip_body(server):
    body = {
        "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [[1, 1, 1, 1], [2, 2, 2, 2]]}]
    }
    status, _, out = post_json(server, "/v2/models/add/infer", body)
    assert status == 200 and out["outputs"][1]["data"] == [2.0] * 4 + [3.0] * 4
    status, _, raw = http(
        server,
        "POST",
        "/v2/models/add/infer",
        gzip.compress(json.dumps(body).encode()),
        {"Content-Encoding": "gzip"},
    )
    assert status == 200 and json.loads(raw)["outputs"][1]["data"] == [2.0] * 4 + [3.0] * 4


def test_keep_alive_pipelining_and_expect_continue(server):
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]}
    ).encode()
    req = (
        f"POST /v2/models/add/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
        + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(req)
        data = b""
        while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b'{"live":true}'):
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
        assert data.index(b'"model_name":"add"') < data.index(b'{"live":true}')  # in order
        s.sendall(
            f"POST /v2/models/add/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(body)
        assert b'"model_name":"add"' in s.recv(65536)


# -- errors --------------------------------------------------------------------------------------


def _x(data=(0, 0, 0, 0), shape=(1, 4), datatype="FP32", name="x"):
    return {"name": name, "shape": list(shape), "datatype": datatype, "data": list(data)}


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        (
            "/v2/models/nope/infer",
            {"inputs": [_x()]},
            404,
            r"unknown model 'nope'; this server serves: add, bf16",
        ),
        (
            "/v2/models/add/versions/9/infer",
            {"inputs": [_x()]},
            404,
            r"model 'add' has no version '9'; versions: 1, 2",
        ),
        (
            "/v2/models/add/infer",
            {"inputs": [_x(datatype="FP64")]},
            400,
            r"input 'x' has datatype FP64, the model expects FP32",
        ),
        (
            "/v2/models/add/infer",
            {"inputs": [_x(data=[1, 2, 3])]},
            400,
            r"input 'x': shape \[1, 4\] needs 4 values, 'data' has 3",
        ),
        (
            "/v2/models/add/infer",
            {"inputs": [_x(data=[0] * 5, shape=(1, 5))]},
            400,
            r"input 'x' dim 1 is 5, expected 4",
        ),
        (
            "/v2/models/add/infer",
            {"inputs": [_x(data=[0] * 260, shape=(65, 4))]},
            400,
            r"input 'x' dim 0 \('batch'\) is 65, outside its range 1..64",
        ),
        (
            "/v2/models/add/infer",
            {"inputs": [_x(name="q")]},
            400,
            r"unknown input 'q'; model 'add' expects: x",
        ),
        ("/v2/models/seq/infer", {"inputs": [_x(name="a", shape=(1, 4))]}, 400, r"missing input 'b'"),
        (
            "/v2/models/add/infer",
            {"inputs": [_x()], "outputs": [{"name": "w"}]},
            400,
            r"unknown output 'w'; model 'add' has: y, z",
        ),
        (
            "/v2/models/add/infer",
            {"inputs": [_x(data=["a", "b", "c", "d"])]},
            400,
            r"input 'x': data does not match datatype FP32",
        ),
        (
            "/v2/models/add/infer",
            {"inputs": [_x(datatype="FP99")]},
            400,
            r"input 'x': unknown datatype 'FP99'",
        ),
        ("/v2/models/add/infer", {"inputs": []}, 400, r"request must have a non-empty 'inputs' list"),
        ("/v2/models/broken/infer", {"inputs": [_x()]}, 503, r"model 'broken' \(version 1\) failed to load"),
    ],
)
def test_error_statuses_and_messages(server, path, body, status, message):
    got, _, out = post_json(server, path, body)
    assert got == status, out
    assert re.search(message, out["error"]), out["error"]


def test_malformed_bodies(server):
    status, _, raw = http(server, "POST", "/v2/models/add/infer", b"{not json")
    assert status == 400 and b"request body is not valid JSON" in raw
    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}
            ]
        }
    ).encode()
    status, _, raw = http(
        server,
        "POST",
        "/v2/models/add/infer",
        header + b"\0" * 8,
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 400 and b"binary_data_size 16 runs past the end of the binary data (8 bytes left)" in raw
    status, _, raw = http(
        server, "POST", "/v2/models/add/infer", header, {"Inference-Header-Content-Length": "999"}
    )
    assert status == 400 and b"Inference-Header-Content-Length is 999" in raw


def test_other_http_errors(server):
    assert http(server, "GET", "/v2/models/add/infer")[0] == 405
    assert http(server, "GET", "/nope")[0] == 404
    status, hdrs, raw = http(server, "HEAD", "/v2/health/ready")
    assert status == 200 and raw == b"" and hdrs["content-length"] == "14"
    status, _, raw = http(server, "GET", "/v2/models/broken")
    assert status == 503 and b"failed to load" in raw
    assert http(server, "GET", "/v2/models/broken/ready")[0] == 503


def test_failure_inside_the_model_is_a_500_without_internals(server, caplog):
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    status, _, out = post_json(server, "/v2/models/reshape/infer", body)
    assert status == 500
    assert out == {"error": "model 'reshape' failed while running this request (see the server log)"}
    ok, _, out = post_json(
        server,
        "/v2/models/reshape/infer",
        {"inputs": [{**body["inputs"][0], "shape": [1, 3], "data": [1, 2, 3]}]},
    )
    assert ok == 200 and out["outputs"][0]["shape"] == [1, 3]


def test_tritonclient_raises_the_server_message(client):
    inp = th.InferInput("x", [1, 5], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 5), np.float32))
    with pytest.raises(InferenceServerException, match="input 'x' dim 1 is 5, expected 4"):
        client.infer("add", [inp])


# -- batching ------------------------------------------------------------------------------------


def _metric(text: str, name: str, model: str) -> float:
    m = re.search(rf'^{name}\{{model="{model}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_concurrent_requests_are_batched(repo):
    # max_batch_size=6: the six "add" requests go out together as soon as all are in; the long
    # delay lets the seq pairs meet even on a slow, loaded machine
    with running_server(repo, max_batch_size=6, max_queue_delay_ms=3000) as srv:
        c = th.InferenceServerClient(srv.url.removeprefix("http://"), concurrency=8)
        xs = [np.full((1, 4), i, np.float32) for i in range(6)]
        handles = []
        for x in xs:
            inp = th.InferInput("x", [1, 4], "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            handles.append(c.async_infer("add", [inp], model_version="2"))
        results = [h.get_result() for h in handles]
        for x, r in zip(xs, results, strict=True):
            np.testing.assert_array_equal(r.as_numpy("z"), x + 1)
        # different non-batch dims are not merged: seq=2 and seq=3 go to separate runs
        seq_handles = []
        for seq in (2, 3, 2, 3):
            a = np.ones((1, seq), np.float32)
            ins = [th.InferInput("a", [1, seq], "FP32"), th.InferInput("b", [1, seq], "FP32")]
            ins[0].set_data_from_numpy(a)
            ins[1].set_data_from_numpy(a * 2)
            seq_handles.append((seq, c.async_infer("seq", ins)))
        for seq, h in seq_handles:
            assert h.get_result().as_numpy("s").tolist() == [[2.0 * seq]]
        # a model without a batch dim is never batched
        fixed = [th.InferInput("x", [2, 2], "FP32") for _ in range(4)]
        for f in fixed:
            f.set_data_from_numpy(np.ones((2, 2), np.float32))
        for h in [c.async_infer("fixed", [f]) for f in fixed]:
            assert h.get_result().as_numpy("y").tolist() == [[2.0, 2.0], [2.0, 2.0]]
        text = http(srv, "GET", "/metrics")[2].decode()
        c.close()
    assert _metric(text, "torchport_batch_size_count", "add") == 1  # 6 requests, one run
    assert _metric(text, "torchport_batch_size_sum", "add") == 6
    assert 'torchport_batch_size_bucket{model="add",le="4"} 0' in text
    assert 'torchport_batch_size_bucket{model="add",le="8"} 1' in text
    assert _metric(text, "torchport_requests_per_batch_sum", "seq") == 4
    assert _metric(text, "torchport_requests_per_batch_count", "seq") == 2  # seq=2 pair, seq=3 pair
    assert _metric(text, "torchport_batch_size_count", "fixed") == 4
    assert _metric(text, "torchport_queue_duration_seconds_count", "add") == 6
    assert 'torchport_requests_total{model="add",endpoint="infer",status="200"} 6' in text
    assert 'torchport_model_info{model="add",version="2",provider="CPUExecutionProvider"} 1' in text
    assert 'torchport_model_ready{model="broken",version="1"} 0' in text


def test_metrics_count_errors(server):
    post_json(server, "/v2/models/nope/infer", {"inputs": [_x()]})
    text = http(server, "GET", "/metrics")[2].decode()
    assert re.search(r'^torchport_request_errors_total\{model="",status="404"\} [1-9]', text, re.M)
    assert 'model="nope"' not in text  # unknown names never become label values
    assert re.search(
        r'^torchport_requests_total\{model="add",endpoint="metadata",status="200"\} [1-9]', text, re.M
    )
    assert re.search(r'^torchport_request_duration_seconds_count\{model="add"\} [1-9]', text, re.M)


# -- auth & limits -------------------------------------------------------------------------------


def test_api_key_auth(repo, monkeypatch, tmp_path):
    monkeypatch.setenv("TP_TEST_KEY", "s3cret-key-123")
    with running_server(repo / "fixed", api_key_env="TP_TEST_KEY") as srv:
        assert http(srv, "GET", "/v2/health/live")[0] == 200
        assert http(srv, "GET", "/v2/health/ready")[0] == 200
        status, hdrs, raw = http(srv, "GET", "/v2/models/fixed")
        assert (
            status == 401
            and b"Authorization: Bearer <key>" in raw
            and hdrs["www-authenticate"].startswith("Bearer")
        )
        assert (
            http(srv, "GET", "/v2/models/fixed", headers={"Authorization": "Bearer wrong-key-000"})[0] == 401
        )
        assert http(srv, "GET", "/metrics")[0] == 401
        c = th.InferenceServerClient(srv.url.removeprefix("http://"))
        inp = th.InferInput("x", [2, 2], "FP32")
        inp.set_data_from_numpy(np.ones((2, 2), np.float32))
        res = c.infer("fixed", [inp], headers={"Authorization": "Bearer s3cret-key-123"})
        assert res.as_numpy("y").tolist() == [[2.0, 2.0], [2.0, 2.0]]
        with pytest.raises(InferenceServerException, match="missing or wrong API key"):
            c.infer("fixed", [inp])
        c.close()
    key_file = tmp_path / "key"
    key_file.write_text("file-key-4567\n")
    with running_server(repo / "fixed", api_key_file=str(key_file)) as srv:
        assert (
            http(srv, "GET", "/v2/models/fixed", headers={"Authorization": "Bearer file-key-4567"})[0] == 200
        )


def test_auth_configuration_errors(repo, monkeypatch):
    from torchport.runtimes import ServingError
    from torchport.runtimes.server import InferenceServer, ServerConfig

    monkeypatch.delenv("TP_UNSET_KEY", raising=False)
    with pytest.raises(ServingError, match="environment variable TP_UNSET_KEY is not set"):
        InferenceServer(repo / "fixed", ServerConfig(api_key_env="TP_UNSET_KEY"))


def test_request_size_limit(repo):
    with running_server(repo / "fixed", max_request_bytes=2048) as srv:
        status, _, raw = http(srv, "POST", "/v2/models/fixed/infer", b"x" * 5000)
        assert status == 413 and b"exceeds the limit of 2048 bytes" in raw
        body = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        assert post_json(srv, "/v2/models/fixed/infer", body)[0] == 200


def test_empty_repository_and_bad_config(tmp_path):
    from torchport.runtimes import ServingError, UsageError
    from torchport.runtimes.server import InferenceServer, ServerConfig

    with pytest.raises(ServingError, match="no model package in"):
        InferenceServer(tmp_path)
    with pytest.raises(UsageError, match="--max-batch-size must be >= 1"):
        ServerConfig(max_batch_size=0)


def test_single_package_path_serves_under_its_manifest_name(repo):
    with running_server(repo / "seq") as srv:
        status, _, md = http(srv, "GET", "/v2/models/seq")
        assert status == 200 and json.loads(md)["name"] == "seq"


def test_a_folder_of_numeric_versions_is_one_model(repo):
    with running_server(repo / "add", version_policy="all") as srv:
        status, _, md = http(srv, "GET", "/v2/models/add")
        assert status == 200 and json.loads(md)["versions"] == ["1", "2"]


def test_binary_bytes_wire_format(server):
    elems = [b"hi", b"", "é".encode()]
    blob = b"".join(struct.pack("<I", len(e)) + e for e in elems) + struct.pack("<I", 1) + b"z" * 1
    blob += struct.pack("<I", 0) * 2
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 3],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": False}}],
        }
    ).encode()
    status, _, raw = http(
        server,
        "POST",
        "/v2/models/id_string/infer",
        header + blob,
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 200, raw
    assert json.loads(raw)["outputs"][0]["data"] == ["hi", "", "é", "z", "", ""]


def test_idle_connections_are_closed(repo):
    with running_server(repo / "fixed", idle_timeout=0.3) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"200 OK" in s.recv(4096)
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\n")  # stalls mid-request
            assert s.recv(4096) == b""  # closed by the server, not by the 5 s client timeout


def test_oversized_pipelined_request_waits_for_the_in_flight_response(repo):
    with running_server(repo / "add", max_request_bytes=4096, max_queue_delay_ms=300) as srv:
        body = json.dumps({"inputs": [_x(data=[1, 1, 1, 1])]}).encode()
        first = (
            f"POST /v2/models/add/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        second = b"POST /v2/models/add/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 99999\r\n\r\n"
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(first + second)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data.index(b"HTTP/1.1 200") < data.index(b"HTTP/1.1 413")
        assert b"exceeds the limit of 4096 bytes" in data


def test_not_ready_until_warm_up_is_done(tmp_path):
    from onnx import helper, numpy_helper

    from tests.runtimes.conftest import save_package
    from torchport.runtimes import DimRange, TensorSpec
    from torchport.runtimes.server import InferenceServer, ServerConfig

    w = numpy_helper.from_array(np.eye(256, dtype=np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", "W"], [f"h{i + 1}"]) for i in range(40)]
    nodes.append(helper.make_node("Identity", ["h40"], ["y"]))
    save_package(
        tmp_path / "slow",
        "slow",
        nodes,
        [TensorSpec("x", "float32", ["batch", 256])],
        [TensorSpec("y", "float32", ["batch", 256])],
        initializers=[w],
        dynamic_dims={"batch": DimRange(1, 256)},
    )
    srv = InferenceServer(tmp_path / "slow", ServerConfig(port=0, warmup=30, access_log=False))
    srv.start_in_thread(wait_ready=False)
    try:
        assert http(srv, "GET", "/v2/health/live")[0] == 200
        assert http(srv, "GET", "/v2/health/ready")[0] == 503
        status, _, raw = http(srv, "GET", "/v2/models/slow")
        assert status == 503 and b"model 'slow' is loading" in raw
        assert srv._loaded.wait(60)
        assert http(srv, "GET", "/v2/health/ready")[0] == 200
        assert http(srv, "GET", "/v2/models/slow/ready")[0] == 200
    finally:
        srv.stop()


@pytest.mark.gpu
@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="needs onnxruntime-gpu and a CUDA device (CUDAExecutionProvider)",
)
def test_serving_on_cuda(repo):
    with running_server(repo / "add", providers=["cuda"]) as srv:
        c = th.InferenceServerClient(srv.url.removeprefix("http://"))
        assert c.get_model_metadata("add")["parameters"]["provider"] == "CUDAExecutionProvider"
        x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
        inp = th.InferInput("x", [3, 4], "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        np.testing.assert_allclose(c.infer("add", [inp]).as_numpy("z"), x + 1, rtol=1e-6)
        c.close()


def test_one_bad_request_does_not_fail_its_batch(tmp_path):
    from onnx import helper

    from tests.runtimes.conftest import save_package
    from torchport.runtimes import DimRange, TensorSpec

    save_package(
        tmp_path / "gather",
        "gather",
        [helper.make_node("GatherElements", ["x", "idx"], ["y"], axis=1)],
        [
            TensorSpec("x", "float32", ["batch", 4]),
            TensorSpec("idx", "int64", ["batch", 1]),  # no value range: the bad index reaches ORT
        ],
        [TensorSpec("y", "float32", ["batch", 1])],
        dynamic_dims={"batch": DimRange(1, 16)},
    )
    # the batch is dispatched when its three rows are in (the long delay only bounds a hang),
    # so a slow machine cannot split the three requests into two batches
    with running_server(tmp_path / "gather", max_batch_size=3, max_queue_delay_ms=20000) as srv:
        c = th.InferenceServerClient(srv.url.removeprefix("http://"), concurrency=4)
        handles = []
        for index in (2, 99, 1):  # 99 is out of range: fails inside ONNX Runtime
            x = th.InferInput("x", [1, 4], "FP32")
            x.set_data_from_numpy(np.array([[10, 11, 12, 13]], np.float32))
            idx = th.InferInput("idx", [1, 1], "INT64")
            idx.set_data_from_numpy(np.array([[index]], np.int64))
            handles.append(c.async_infer("gather", [x, idx]))
        assert handles[0].get_result().as_numpy("y").tolist() == [[12.0]]
        with pytest.raises(
            InferenceServerException, match="model 'gather' failed while running this request"
        ):
            handles[1].get_result()
        assert handles[2].get_result().as_numpy("y").tolist() == [[11.0]]
        text = http(srv, "GET", "/metrics")[2].decode()
        c.close()
    assert 'torchport_requests_total{model="gather",endpoint="infer",status="500"} 1' in text
    assert _metric(text, "torchport_requests_per_batch_count", "gather") == 1  # the three shared one batch
    assert _metric(text, "torchport_requests_per_batch_sum", "gather") == 3
