"""gRPC rpcs beyond inference, driven by tritonclient.grpc: ModelConfig, ModelStatistics and the model
repository (RepositoryIndex, RepositoryModelLoad/Unload); each answers what its HTTP endpoint answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

tg = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.runtimes.conftest import http, make_add_package, running_server  # noqa: E402
from tests.runtimes.server._models import make_scale_package  # noqa: E402


def grpc_call(srv, rpc: str, **fields):
    """One rpc through grpcio with torchport's own message classes (fields tritonclient never sends)."""
    import grpc

    from torchport.runtimes.server._grpc_messages import MESSAGES, METHODS

    req, resp = METHODS[rpc]
    with grpc.insecure_channel(srv.grpc_url) as channel:
        call = channel.unary_unary(
            f"/inference.GRPCInferenceService/{rpc}",
            request_serializer=MESSAGES[req].SerializeToString,
            response_deserializer=MESSAGES[resp].FromString,
        )
        return call(MESSAGES[req](**fields), timeout=10)


def _input(arr: np.ndarray) -> tg.InferInput:
    inp = tg.InferInput("x", list(arr.shape), "FP32")
    inp.set_data_from_numpy(arr)
    return inp


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpc-ext")
    make_add_package(root / "add")
    with running_server(root, grpc_port=0, max_batch_size=8, max_queue_delay_ms=1) as srv:
        c = tg.InferenceServerClient(srv.grpc_url)
        yield srv, c
        c.close()


def test_model_config_matches_the_http_config(served):
    srv, c = served
    grpc_config = c.get_model_config("add", as_json=True)["config"]
    http_config = json.loads(http(srv, "GET", "/v2/models/add/config")[2])
    assert grpc_config["name"] == http_config["name"] == "add"
    assert grpc_config["platform"] == "onnxruntime_onnx" and grpc_config["backend"] == "onnxruntime"
    assert grpc_config["max_batch_size"] == http_config["max_batch_size"] == 8
    assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in grpc_config["input"]] == [
        (t["name"], t["data_type"], t["dims"]) for t in http_config["input"]
    ]
    assert {t["name"] for t in grpc_config["output"]} == {"y", "z"}
    assert grpc_config["instance_group"][0]["kind"] == "KIND_CPU"
    assert grpc_config["parameters"]["variant"] == {"string_value": "fp32"}
    assert grpc_config["version_policy"] == {"latest": {"num_versions": 1}}
    assert grpc_config["dynamic_batching"]["max_queue_delay_microseconds"] == "1000"
    typed = c.get_model_config("add").config  # the protobuf message tritonclient parses
    assert typed.max_batch_size == 8 and typed.input[0].dims == [4]
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as info:
        c.get_model_config("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_statistics_count_grpc_requests(served):
    srv, c = served
    before = c.get_inference_statistics("add", as_json=True)["model_stats"][0]
    before_count = int(before.get("inference_count", 0))
    for _ in range(3):
        c.infer("add", [_input(np.ones((2, 4), np.float32))])
    stats = c.get_inference_statistics("add", as_json=True)["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("add", "1")]
    assert int(stats[0]["inference_count"]) == before_count + 6
    assert int(stats[0]["inference_stats"]["success"]["count"]) >= 3
    http_stats = json.loads(http(srv, "GET", "/v2/models/add/stats")[2])["model_stats"][0]
    assert http_stats["inference_count"] == int(stats[0]["inference_count"])
    every = c.get_inference_statistics(as_json=True)["model_stats"]
    assert [s["name"] for s in every] == ["add"]
    with pytest.raises(InferenceServerException, match="has no version '9'"):
        c.get_inference_statistics("add", "9")


def test_repository_rpcs_are_refused_without_model_control(served):
    _, c = served
    index = c.get_model_repository_index(as_json=True)["models"]
    assert index == [{"name": "add", "version": "1", "state": "READY"}]
    with pytest.raises(InferenceServerException, match="model control is off") as info:
        c.load_model("add")
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_load_and_unload_over_grpc(tmp_path: Path):
    root = tmp_path / "repo"
    make_scale_package(root / "scale" / "1", 2.0)
    make_scale_package(root / "other", 3.0, name="other")
    with running_server(root, grpc_port=0, model_control="explicit", load=["scale"]) as srv:
        c = tg.InferenceServerClient(srv.grpc_url)
        index = {m["name"]: m for m in c.get_model_repository_index(as_json=True)["models"]}
        assert index["other"] == {"name": "other", "state": "UNAVAILABLE", "reason": "unloaded"}
        ready_only = grpc_call(srv, "RepositoryIndex", ready=True)  # tritonclient does not send `ready`
        assert [(m.name, m.state) for m in ready_only.models] == [("scale", "READY")]
        with pytest.raises(InferenceServerException, match="model 'other' is not loaded"):
            c.infer("other", [_input(np.ones((1, 4), np.float32))])
        c.load_model("other")
        assert c.is_model_ready("other")
        assert c.infer("other", [_input(np.ones((1, 4), np.float32))]).as_numpy("y")[0, 0] == 3.0
        c.unload_model("scale")
        assert not c.is_model_ready("scale")  # known but unloaded: not ready (not an error)
        with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
            c.is_model_ready("nope")
        with pytest.raises(InferenceServerException, match="no model 'nope' in the repository folder"):
            c.load_model("nope")
        c.close()
