"""Metrics and statistics queue observations and fold them in bulk; access lines are queued as
values and formatted when written out; signatures remember accepted declarations. What a reader
sees is the same as with immediate updates and full checks."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from torchport.runtimes import DimRange, TensorSpec
from torchport.runtimes._errors import InferenceInputError
from torchport.runtimes.server._accesslog import configure_logging, flush_access_log, log_access
from torchport.runtimes.server._metrics import _FOLD_AT, Histogram
from torchport.runtimes.server._signature import InputSignature
from torchport.runtimes.server._stats import ModelStats


def test_histogram_renders_queued_observations_and_folds_when_the_queue_fills():
    h = Histogram("t_seconds", "test", ["model"], (0.1, 1.0))
    for v in (0.05, 0.5, 5.0):
        h.observe(v, "m")
    h.observe(0.5, "other")
    out: list[str] = []
    h.render(out)
    text = "".join(out)
    assert 't_seconds_bucket{model="m",le="0.1"} 1' in text
    assert 't_seconds_bucket{model="m",le="1.0"} 2' in text
    assert 't_seconds_bucket{model="m",le="+Inf"} 3' in text
    assert 't_seconds_sum{model="m"} 5.55' in text and 't_seconds_count{model="other"} 1' in text
    for _ in range(_FOLD_AT):
        h.observe(0.01, "m")
    assert len(h._pending) < _FOLD_AT  # folded on the way, not held without bound
    assert h.series[("m",)][0] == 1 + _FOLD_AT


def test_model_stats_report_queued_requests_and_runs():
    stats = ModelStats()
    stats.request_done(0.002, 0.001, 4)
    stats.batch_done(4, 2, 0.0005)
    stats.batch_done(4, 1, 0.0005)
    t = stats.to_triton("m", "1")
    assert t["inference_count"] == 4 and t["execution_count"] == 2 and t["last_inference"] > 0
    assert t["inference_stats"]["success"] == {"count": 1, "ns": 2_000_000}
    assert t["inference_stats"]["compute_infer"] == {"count": 3, "ns": 1_000_000}
    assert t["batch_stats"][0]["batch_size"] == 4 and t["batch_stats"][0]["compute_infer"]["count"] == 2


def test_access_lines_are_json_with_escaped_values_when_formatted_later():
    buf = io.StringIO()
    configure_logging(True, buf)

    async def serve_two() -> None:  # on a loop, lines are queued and written by a timer
        log_access(
            client="127.0.0.1:5000",
            method="POST",
            path='/v2/models/"odd\\name\n/infer',
            status=200,
            duration=0.0001234,
            bytes_in=10,
            bytes_out=20,
            model='"odd',
            request_id='id "7"',
        )
        log_access(
            client="127.0.0.1:5000",
            method="GET",
            path="/v2/health/ready",
            status=503,
            duration=2.5,
            bytes_in=0,
            bytes_out=16,
            model=None,
            request_id=None,
        )
        assert buf.getvalue() == ""  # not written yet: formatted and written in one go

    asyncio.run(serve_two())
    flush_access_log()
    configure_logging(False, io.StringIO())
    first, second = (json.loads(line) for line in buf.getvalue().splitlines())
    assert first["path"] == '/v2/models/"odd\\name\n/infer' and first["model"] == '"odd'
    assert first["request_id"] == 'id "7"' and first["duration_ms"] == 0.123 and first["status"] == 200
    assert first["ts"].endswith("Z") and first["bytes_in"] == 10 and first["bytes_out"] == 20
    assert second == {
        "ts": second["ts"],
        "client": "127.0.0.1:5000",
        "method": "GET",
        "path": "/v2/health/ready",
        "status": 503,
        "duration_ms": 2500.0,
        "bytes_in": 0,
        "bytes_out": 16,
    }


def test_remembered_declarations_still_check_that_named_dims_agree():
    sig = InputSignature(
        "m",
        [TensorSpec("a", "float32", ["batch", 4]), TensorSpec("b", "float32", ["batch", 2])],
        {"batch": DimRange(1, 8)},
    )
    for batch in (2, 3):  # both requests pass and are remembered
        seen: dict = {}
        sig.check_declared("a", "FP32", (batch, 4), seen)
        sig.check_declared("b", "FP32", (batch, 2), seen)
    seen = {}
    sig.check_declared("a", "FP32", (2, 4), seen)
    with pytest.raises(InferenceInputError, match=r"'batch'\) is 3 but input 'a' has batch=2"):
        sig.check_declared("b", "FP32", (3, 2), seen)  # each remembered, together inconsistent
    with pytest.raises(InferenceInputError, match="outside its range 1..8"):
        sig.check_declared("a", "FP32", (9, 4), {})
