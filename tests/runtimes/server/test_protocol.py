"""The v2 codec on its own: JSON and binary tensors, with and without orjson."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from torchport.runtimes.server import _protocol as proto
from torchport.runtimes.server._protocol import (
    HTTPError,
    RequestedOutput,
    bf16_bits_to_float,
    decode_infer_request,
    encode_infer_response,
    float_to_bf16_bits,
)


@pytest.fixture(params=["orjson", "json"])
def codec(request, monkeypatch):
    if request.param == "json":
        monkeypatch.setattr(proto, "_orjson", None)
    elif proto._orjson is None:
        pytest.skip("orjson is not installed")
    return request.param


def test_json_round_trip(codec):
    body = json.dumps(
        {
            "id": 5,
            "inputs": [
                {"name": "a", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, 4]]},
                {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["héllo"]},
            ],
            "outputs": [{"name": "y"}],
        }
    ).encode()
    req = decode_infer_request(body)
    assert req.id == "5"
    assert req.inputs["a"].dtype == np.int32 and req.inputs["a"].tolist() == [[1, 2], [3, 4]]
    assert req.inputs["s"].tolist() == ["héllo"]
    assert req.outputs == [RequestedOutput("y", None)]
    out, hlen = encode_infer_response(
        "m", "1", req.id, {"y": np.array([[0.5, 1.5]], np.float16)}, {"y": "FP16"}, req.outputs, False
    )
    assert hlen is None
    assert json.loads(out) == {
        "model_name": "m",
        "model_version": "1",
        "id": "5",
        "outputs": [{"name": "y", "datatype": "FP16", "shape": [1, 2], "data": [0.5, 1.5]}],
    }


def test_binary_round_trip(codec):
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    strings = [b"a", b"bc"]
    blob = b"".join(struct.pack("<I", len(s)) + s for s in strings)
    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [2, 3], "datatype": "FP64", "parameters": {"binary_data_size": 48}},
                {
                    "name": "s",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)},
                },
            ]
        }
    ).encode()
    req = decode_infer_request(header + x.tobytes() + blob, len(header))
    np.testing.assert_array_equal(req.inputs["x"], x)
    assert req.inputs["s"].tolist() == ["a", "bc"]
    body, hlen = encode_infer_response(
        "m", "1", None, {"x": x, "s": req.inputs["s"]}, {"x": "FP64", "s": "BYTES"}, None, True
    )
    head = json.loads(body[:hlen])
    sizes = [o["parameters"]["binary_data_size"] for o in head["outputs"]]
    assert sizes == [48, len(blob)]
    assert body[hlen : hlen + 48] == x.tobytes() and body[hlen + 48 :] == blob


def test_bf16_rounding():
    values = np.array([1.0, 1.00390625, 1.01171875, -3.5, 1e-3], np.float32)
    bits = float_to_bf16_bits(values)
    back = bf16_bits_to_float(bits)
    np.testing.assert_allclose(back, values, rtol=2**-8)
    assert back[0] == 1.0 and back[3] == -3.5
    assert back[1] == 1.0  # halfway: round to even
    assert back[2] == 1.015625  # halfway between 1.0078125 and 1.015625: round to even


@pytest.mark.parametrize(
    "body, header_length, message",
    [
        (b"[]", None, "request body must be a JSON object"),
        (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32"}]}', None, "has neither 'data' nor"),
        (
            b'{"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": []}]}',
            None,
            "non-negative integers",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": [300]}]}',
            None,
            "data does not match datatype UINT8",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BOOL", "data": [3]}]}',
            None,
            "BOOL data must be true/false",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},'
            b' {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}',
            None,
            "input 'x' is given twice",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}XXXX',
            None,
            "not valid JSON",
        ),
    ],
)
def test_bad_requests(codec, body, header_length, message):
    with pytest.raises(HTTPError, match=message) as info:
        decode_infer_request(body, header_length)
    assert info.value.status == 400


def test_trailing_binary_data_is_rejected():
    header = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}'
    with pytest.raises(
        HTTPError, match="4 bytes of binary data that no input's binary_data_size accounts for"
    ):
        decode_infer_request(header + b"\0\0\0\0", len(header))


def _float_body(data: list, datatype: str = "FP32") -> bytes:
    return json.dumps(
        {"inputs": [{"name": "x", "shape": [len(data)], "datatype": datatype, "data": data}]}
    ).encode()


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_long_float_data_decodes_like_the_element_by_element_path(codec, datatype):
    # from proto._VECTOR_CHECK_FROM elements on, float data is checked and converted in one go
    rng = np.random.default_rng(3)
    values = rng.standard_normal(3 * proto._VECTOR_CHECK_FROM).tolist()
    values[:6] = [0, 1, 0.0, 1.0, -1, 7]  # ints and the 0/1 values a bool could hide among
    got = decode_infer_request(_float_body(values, datatype)).inputs["x"]
    expected = np.fromiter(values, proto._WIRE[datatype], len(values))
    assert got.dtype == expected.dtype and got.shape == (len(values),)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "bad, got",
    [(True, "bool"), (False, "bool"), (None, "null"), ("1", "str"), ([1.0], "list"), ({"a": 1}, "dict")],
)
@pytest.mark.parametrize("where", [1, 17, -1])
def test_long_float_data_still_refuses_non_numbers(codec, bad, got, where):
    values = [0.0, 1.0] * proto._VECTOR_CHECK_FROM  # many 0/1 values: a bool must still be found
    values[where] = bad
    with pytest.raises(
        HTTPError,
        match=rf"input 'x': data does not match datatype FP32: FP32 data must be numbers, got {got}",
    ):
        decode_infer_request(_float_body(values))


def test_long_nested_float_data_is_flattened(codec):
    rows = np.arange(4 * proto._VECTOR_CHECK_FROM, dtype=np.float32).reshape(4, -1)
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP32", "data": rows.tolist()}]}
    ).encode()
    np.testing.assert_array_equal(decode_infer_request(body).inputs["x"], rows)
