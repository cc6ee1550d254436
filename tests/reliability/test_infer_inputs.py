"""Infer requests that lie about their tensors: refused with a 400 (or 413) naming the problem, cheaply.

Names, datatypes and shapes are checked against the model before any data is decoded; a body larger
than any valid request for the model is refused from its headers; large bodies decode off the event
loop; JSON values are not coerced; integer inputs stay within their recorded value range.
"""

from __future__ import annotations

import json
import math
import re
import select
import socket
import struct
import time

import pytest

from tests.reliability._net import PeakRss, exchange, get, post, read_response


def infer(server, model: str, obj, headers: str = "") -> tuple[int, str]:
    status, _, body = exchange(
        server.port, post(f"/v2/models/{model}/infer", json.dumps(obj).encode(), headers)
    )
    return status, json.loads(body).get("error", "")


def x_input(**kw):
    return {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4], **kw}


@pytest.mark.parametrize(
    "entry, message",
    [
        (x_input(shape=[2**54 + 1, 3, 32, 32]), r"has rank 4 \(shape \[18014398509481985, 3, 32, 32\]\)"),
        (x_input(shape=[2**54 + 1, 4]), r"dim 0 \('batch'\) is 18014398509481985, outside its range 1..64"),
        (x_input(shape=[2**62, 2**62]), "dim 0"),
        (x_input(shape=[1] * 100), "'shape' has 100 dims; at most 32"),
        (x_input(shape=[1, 4], data=[1, None, 3, 4]), "FP32 data must be numbers, got null"),
        (x_input(shape=[1, 4], data=[1, "2", 3, 4]), "FP32 data must be numbers, got str"),
        (x_input(shape=[1, 4], data=[1, True, 3, 4]), "FP32 data must be numbers, got bool"),
        (x_input(shape=[1, 4], data=[1, [2, 3], 4, 5]), "got list"),
    ],
    ids=[
        "wraps-int64-rank",
        "wraps-int64",
        "huge-dims",
        "100-dims",
        "null",
        "string",
        "bool",
        "ragged",
    ],
)
def test_lying_shapes_and_values_get_400(server, entry, message):
    status, error = infer(server, "add", {"inputs": [entry]})
    assert status == 400, error
    assert re.search(message, error), error


def test_unbounded_model_shapes_that_wrap_int64_get_400(server):
    for shape in ([2**63 + 1], [2**64 - 1]):
        entry = {"name": "s", "shape": shape, "datatype": "BYTES", "data": ["a"]}
        status, error = infer(server, "bag", {"inputs": [entry]})
        assert status == 400 and f"needs {math.prod(shape)} values, 'data' has 1" in error
        header = {"inputs": [{**entry, "parameters": {"binary_data_size": 5}}]}
        header.pop("data", None)
        header["inputs"][0].pop("data")
        hb = json.dumps(header).encode()
        status, _, body = exchange(
            server.port,
            post(
                "/v2/models/bag/infer", hb + b"\1\0\0\0a", f"Inference-Header-Content-Length: {len(hb)}\r\n"
            ),
        )
        assert status == 400 and b"BYTES elements (4 bytes each at least)" in body
    entry = {"name": "x", "shape": [2**54 + 1, 3], "datatype": "BYTES", "data": ["a"] * 6}
    status, error = infer(server, "text", {"inputs": [entry]})
    assert status == 400 and "outside its range 1..16" in error
    entry = {"name": "x", "shape": [2, 3], "datatype": "BYTES", "data": ["a", 1, "b", "c", "d", "e"]}
    status, error = infer(server, "text", {"inputs": [entry]})
    assert status == 400 and "BYTES data must be strings, got int" in error


@pytest.mark.parametrize("where", ["output", "request"])
def test_binary_flags_must_be_booleans(server, where):
    req = {"inputs": [x_input()]}
    if where == "output":
        req["outputs"] = [{"name": "y", "parameters": {"binary_data": "false"}}]
        expected = "parameters.binary_data must be true or false, got 'false'"
    else:
        req["parameters"] = {"binary_data_output": "false"}
        expected = "parameters.binary_data_output must be true or false, got 'false'"
    status, error = infer(server, "add", req)
    assert status == 400 and expected in error


def test_token_ids_outside_the_embedding_table_get_400_naming_the_input_and_range(server, caplog):
    entry = {"name": "ids", "shape": [1, 3], "datatype": "INT64", "data": [1, 10, 2]}
    status, error = infer(server, "tok", {"inputs": [entry]})
    assert status == 400
    assert error == "input 'ids' has values outside its range 0..9 (min 1, max 10)"
    entry["data"] = [1, -1, 9]
    assert infer(server, "tok", {"inputs": [entry]})[1].endswith("(min -1, max 9)")
    entry["data"] = [0, 9, 3]
    assert infer(server, "tok", {"inputs": [entry]})[0] == 200


def test_a_body_larger_than_any_valid_request_is_refused_from_its_headers(server):
    """add takes at most 64x4 floats: 32 MiB announced (1 KiB sent) gets 413 without the rest."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(
            b"POST /v2/models/add/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 33554432\r\n\r\n" + b" " * 1024
        )
        status, _, body = read_response(s)
    assert status == 413
    assert "larger than any valid request for model 'add'" in json.loads(body)["error"]


def test_a_chunked_body_larger_than_any_valid_request_is_cut_off(server):
    chunk = b"2000\r\n" + b" " * 0x2000 + b"\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"POST /v2/models/add/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(20):  # 160 KiB, twice what add can take
                s.sendall(chunk)
        except OSError:
            pass
        status, _, body = read_response(s)
    assert status == 413 and "the most a valid request can take here" in json.loads(body)["error"]


def _bytes_request(model: str, name: str, n: int, datatype: str = "BYTES", shape=None) -> bytes:
    blob = struct.pack("<I", 0) * n
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": shape or [n],
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    ).encode()
    return post(
        f"/v2/models/{model}/infer", header + blob, f"Inference-Header-Content-Length: {len(header)}\r\n"
    )


@pytest.mark.parametrize(
    "name, datatype, shape, message",
    [
        ("nope", "BYTES", None, "unknown input 'nope'; model 'text' expects: x"),
        ("x", "FP32", [2 * 1024 * 1024, 3], "input 'x' has datatype FP32, the model expects BYTES"),
        ("x", "BYTES", [2 * 1024 * 1024, 3], r"dim 0 ('batch') is 2097152, outside its range 1..16"),
    ],
    ids=["unknown-name", "wrong-datatype", "shape-out-of-range"],
)
def test_a_mislabelled_big_tensor_is_refused_before_it_is_decoded(server, name, datatype, shape, message):
    """24 MiB of BYTES elements for a model whose body size is unbounded (BYTES input)."""
    raw = _bytes_request("text", name, 6 * 1024 * 1024, datatype, shape)
    with PeakRss() as rss:
        status, _, body = exchange(server.port, raw, timeout=30)
    assert status == 400 and message in json.loads(body)["error"]
    # the body itself is held once (24 MiB) and joined once; decoding 6M elements would add ~200 MB
    assert rss.growth < 120, f"RSS grew by {rss.growth:.0f} MB"


def test_a_large_body_decodes_off_the_event_loop(server):
    """While 3M BYTES elements decode (seconds of Python), a health ping is still answered first."""
    n = 3 * 1024 * 1024
    blob = struct.pack("<I", 0) * n
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "s",
                    "shape": [n],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "outputs": [{"name": "nope"}],  # refused only once the body is decoded
        }
    ).encode()
    raw = post("/v2/models/bag/infer", header + blob, f"Inference-Header-Content-Length: {len(header)}\r\n")
    order = []
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as big:
        big.sendall(raw)
        time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as ping:
            ping.sendall(get("/v2/health/live"))
            readable = {big: "big", ping: "ping"}
            while readable:
                for sock in select.select(list(readable), [], [], 60)[0]:
                    status, _, body = read_response(sock)
                    order.append((readable.pop(sock), status))
    assert order == [("ping", 200), ("big", 400)], order
