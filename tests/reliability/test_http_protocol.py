"""HTTP/1.1 edge cases a careless or hostile client sends: every one gets a 4xx, in order, and one log line."""

from __future__ import annotations

import json
import logging
import socket

import pytest

from tests.reliability._net import API_KEY, exchange, get, post, read_response, wait_closed
from tests.runtimes.conftest import running_server

INFER = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'


def test_pipelined_requests_before_a_malformed_one_are_all_answered_in_order(server):
    good = [post("/v2/models/add/infer", INFER), get("/v2/health/live"), get("/v2/models/add/ready")]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"".join(good) + b"GARBAGE / HTTP/1.1\r\n\r\n")
        buf = bytearray()
        answers = [read_response(s, buf) for _ in range(4)]
        assert wait_closed(s)
    assert [a[0] for a in answers] == [200, 200, 200, 400]
    assert json.loads(answers[0][2])["model_name"] == "add"
    assert answers[1][2] == b'{"live":true}'
    assert json.loads(answers[2][2])["name"] == "add"
    assert b"malformed HTTP request" in answers[3][2] and answers[3][1]["connection"] == "close"


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"GET http://a:1/v2/health/live HTTP/1.1\r\nHost: a\r\n\r\n", "must be a path"),
        (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\n", "CONNECT is not supported"),
        (b"GET /v2/health/live HTTP/1.1\r\n\r\n", "must have a Host header"),
    ],
    ids=["absolute-form", "connect", "http11-without-host"],
)
def test_requests_a_server_must_refuse_get_400_and_one_log_line(server, caplog, raw, message):
    with caplog.at_level(logging.INFO, logger="torchport"):
        status, headers, body = exchange(server.port, raw)
    assert status == 400, body
    assert message in json.loads(body)["error"]
    assert headers["connection"] == "close"
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_an_upgrade_request_is_answered_plainly_and_the_connection_closed(server):
    raw = b"GET /v2/health/live HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nHost: a\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(raw + b"\x81\x85websocket-frame")
        status, headers, body = read_response(s)
        assert (status, body, headers["connection"]) == (200, b'{"live":true}', "close")
        assert wait_closed(s)


def test_http10_without_host_is_fine(server):
    assert exchange(server.port, b"GET /v2/health/live HTTP/1.0\r\n\r\n")[0] == 200


def test_bearer_scheme_is_case_insensitive(repo, monkeypatch):
    monkeypatch.setenv("RELIABILITY_KEY", API_KEY)
    with running_server(repo / "add", api_key_env="RELIABILITY_KEY") as srv:
        for scheme in ("Bearer", "bearer", "BEARER"):
            raw = get("/v2/models/add", extra=f"Authorization: {scheme} {API_KEY}\r\n")
            assert exchange(srv.port, raw)[0] == 200, scheme
        assert (
            exchange(srv.port, get("/v2/models/add", extra=f"Authorization: Basic {API_KEY}\r\n"))[0] == 401
        )
        assert (
            exchange(srv.port, get("/v2/models/add", extra="Authorization: bearer wrong-key-1234\r\n"))[0]
            == 401
        )
