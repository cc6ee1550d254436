"""Property-based fuzzing of the v2 infer grammar (JSON and binary tensors): a client mistake is never a 5xx.

Hypothesis builds requests from the grammar (inputs, shapes, datatypes, data, parameters, outputs,
binary sizes, the Inference-Header-Content-Length header, gzip) with both plausible and wrong values,
and posts them to a real server on loopback. Every answer must be a 200 or a 4xx whose body is
``{"error": "<message>"}``; the connection must stay usable.
"""

from __future__ import annotations

import gzip
import http.client
import json
import struct

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.reliability._net import make_repository  # noqa: E402
from tests.runtimes.conftest import running_server  # noqa: E402

MODELS = ["add", "text", "tok", "bag", "nope"]
NAMES = ["x", "ids", "s", "nope", ""]
DATATYPES = ["FP32", "FP16", "FP64", "BF16", "INT64", "INT32", "INT8", "UINT8", "UINT64", "BOOL", "BYTES"]
CASES = {"json": 0, "binary": 0}

json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)
dims = st.one_of(
    st.integers(min_value=0, max_value=5),
    st.integers(min_value=-3, max_value=2**66),
    st.sampled_from([2**31, 2**54 + 1, 2**63, 2**64 - 1]),
)
shapes = st.one_of(
    st.lists(dims, max_size=4),
    st.lists(st.integers(min_value=1, max_value=1), min_size=33, max_size=100),
    json_value,
)
numbers = st.one_of(st.integers(min_value=-300, max_value=300), st.floats(width=32, allow_nan=False))
data = st.one_of(
    st.lists(numbers, max_size=70),
    st.lists(st.lists(numbers, max_size=5), max_size=5),
    st.lists(st.text(max_size=4), max_size=20),
    st.lists(json_scalar, max_size=10),
    json_value,
)
flags = st.one_of(st.booleans(), st.sampled_from(["false", "true", 0, 1, None]))


#: shapes whose element count wraps int64 (or has too many dims), with as many values as the wrapped count
LYING = [
    ([2**54 + 1, 3, 32, 32], 3072),
    ([2**62, 4], 0),
    ([2**32, 2**32], 0),
    ([2**63, 2], 0),
    ([1] * 65, 1),
    ([1] * 100, 1),
]


@st.composite
def input_entries(draw, binary: bool = False):
    if not binary and draw(st.integers(0, 5)) == 0:
        shape, count = draw(st.sampled_from(LYING))
        return {
            "name": draw(st.sampled_from(NAMES)),
            "datatype": draw(st.sampled_from(DATATYPES)),
            "shape": shape,
            "data": [draw(st.sampled_from([0, 1, True, "a"]))] * count,
        }
    entry: dict = {}
    if draw(st.integers(0, 9)):
        entry["name"] = draw(st.one_of(st.sampled_from(NAMES), st.text(max_size=6), json_scalar))
    if draw(st.integers(0, 9)):
        entry["datatype"] = draw(st.one_of(st.sampled_from(DATATYPES), st.text(max_size=5)))
    if draw(st.integers(0, 9)):
        entry["shape"] = draw(shapes)
    if binary:
        entry["parameters"] = {
            "binary_data_size": draw(
                st.one_of(st.integers(-2, 300), st.sampled_from([2**40, "8", None, True]))
            )
        }
    elif draw(st.integers(0, 9)):
        entry["data"] = draw(data)
    return entry


@st.composite
def requests(draw, binary: bool = False):
    req: dict = {}
    if draw(st.booleans()):
        req["id"] = draw(json_value)
    req["inputs"] = draw(st.one_of(st.lists(input_entries(binary), min_size=1, max_size=3), json_value))
    if draw(st.integers(0, 3)) == 0:
        req["outputs"] = draw(
            st.one_of(
                st.lists(
                    st.fixed_dictionaries(
                        {"name": st.sampled_from(["y", "z", "emb", "out", "nope"])},
                        optional={"parameters": st.fixed_dictionaries({"binary_data": flags})},
                    ),
                    max_size=3,
                ),
                json_value,
            )
        )
    if draw(st.integers(0, 3)) == 0:
        req["parameters"] = draw(st.one_of(st.fixed_dictionaries({"binary_data_output": flags}), json_value))
    return req


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = make_repository(tmp_path_factory.mktemp("repo") / "repo")
    with running_server(repo, max_request_bytes=1 << 20) as srv:
        yield srv
    print(f"\nfuzz cases tried: {CASES}")


class Poster:
    """One keep-alive connection, reopened when the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, bool]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        self.conn.request("POST", path, body=body, headers=headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        if resp.getheader("connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        return resp.status, raw, resp.getheader("content-type", "")


@pytest.fixture(scope="module")
def poster(server):
    return Poster(server.port)


def check(status: int, raw: bytes, content_type: str) -> None:
    assert status < 500, raw[:500]
    assert status in (200, 400, 404, 413, 415), (status, raw[:500])
    if status != 200:
        error = json.loads(raw)["error"]
        assert isinstance(error, str) and error and "Traceback" not in error
    elif "json" in content_type:
        assert "outputs" in json.loads(raw)


COMMON = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@COMMON
@given(model=st.sampled_from(MODELS), req=requests(), raw_mode=st.integers(0, 9), gz=st.integers(0, 9))
def test_json_requests_never_get_a_5xx(poster, model, req, raw_mode, gz):
    CASES["json"] += 1
    body = json.dumps(req).encode()
    if raw_mode == 0:
        body = body[: len(body) // 2]  # truncated JSON
    headers = {"Content-Type": "application/json"}
    if gz == 0:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    elif gz == 1:
        headers["Content-Encoding"] = "gzip"  # claims gzip, is not
    check(*poster.post(f"/v2/models/{model}/infer", body, headers))


@COMMON
@given(
    model=st.sampled_from(MODELS),
    req=requests(binary=True),
    blob=st.one_of(
        st.binary(max_size=300),
        st.lists(st.binary(max_size=6), max_size=20).map(
            lambda items: b"".join(struct.pack("<I", len(i)) + i for i in items)
        ),
    ),
    header_delta=st.one_of(st.just(0), st.integers(-5, 5), st.sampled_from([-(10**6), 10**9])),
    header_text=st.one_of(st.none(), st.sampled_from(["abc", "", "-1", "1e3", " 12", "9" * 30])),
)
def test_binary_requests_never_get_a_5xx(poster, model, req, blob, header_delta, header_text):
    CASES["binary"] += 1
    header = json.dumps(req).encode()
    hl = str(len(header) + header_delta) if header_text is None else header_text
    headers = {"Inference-Header-Content-Length": hl, "Content-Type": "application/octet-stream"}
    check(*poster.post(f"/v2/models/{model}/infer", header + blob, headers))


def test_valid_requests_from_the_grammar_are_answered(poster):
    """The grammar reaches the models: one well-formed request per model succeeds."""
    cases = {
        "add": {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [0.5] * 8},
        "text": {"name": "x", "shape": [1, 3], "datatype": "BYTES", "data": ["a", "b", "c"]},
        "tok": {"name": "ids", "shape": [1, 2], "datatype": "INT64", "data": [0, 9]},
        "bag": {"name": "s", "shape": [2], "datatype": "BYTES", "data": ["p", "q"]},
    }
    for model, entry in cases.items():
        status, raw, _ = poster.post(
            f"/v2/models/{model}/infer", json.dumps({"inputs": [entry]}).encode(), {}
        )
        assert status == 200, raw
