"""serve.toml and per-model settings, model names, metadata, /config, /stats, readiness, metrics access."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from tests.runtimes.conftest import corrupt, http, make_add_package, running_server
from tests.runtimes.server._models import make_scale_package
from torchport.runtimes import UsageError
from torchport.runtimes._errors import ServingError
from torchport.runtimes.server import InferenceServer, ServerConfig, VersionPolicy


def infer(url: str, model: str, x: np.ndarray, version: str = "") -> np.ndarray:
    c = th.InferenceServerClient(url.removeprefix("http://"))
    try:
        inp = th.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        return c.infer(model, [inp], model_version=version).as_numpy("y")
    finally:
        c.close()


# -- version policies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, selected",
    [
        ("latest", ["10"]),
        ("latest:2", ["2", "10"]),
        ({"latest": {"num_versions": 3}}, ["1", "2", "10"]),
        ({"latest": 2}, ["2", "10"]),
        ("all", ["1", "2", "10"]),
        ({"all": {}}, ["1", "2", "10"]),
        ("specific:1,10", ["1", "10"]),
        ([2], ["2"]),
        ({"specific": {"versions": [1, 2]}}, ["1", "2"]),
    ],
)
def test_version_policies_select_versions_numerically(value, selected):
    assert VersionPolicy.parse(value).select(["2", "10", "1"]) == selected


@pytest.mark.parametrize(
    "value", ["newest", "latest:0", "latest:x", "specific:", {"latest": 1, "all": {}}, 3]
)
def test_bad_version_policy_says_what_is_accepted(value):
    with pytest.raises(UsageError, match="expected 'latest', 'latest:N', 'all' or 'specific:1,3'"):
        VersionPolicy.parse(value)


# -- serve.toml -------------------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    make_scale_package(root / "scale" / "1", 2.0, int8_factor=3.0)
    make_scale_package(root / "scale" / "2", 4.0, version="2", int8_factor=5.0)
    make_add_package(root / "add")
    return root


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("[server]\nprot = 1\n", r"\[server\]: unknown key 'prot'; did you mean 'port'\?"),
        (
            "[models.scale]\nmax_batch = 4\n",
            r"\[models.scale\]: unknown key 'max_batch'; did you mean 'max_batch_size'\?",
        ),
        (
            "[models.scale]\nmax_batch_size = '4'\n",
            r"\[models.scale\]: max_batch_size must be an integer, got '4'",
        ),
        ("[models.scale]\nvariant = 'int2'\n", r"variant must be one of fp32, fp16, int8, int4, got 'int2'"),
        ("[models.scale]\nmax_batch_size = 0\n", r"max_batch_size must be >= 1"),
        (
            "[models.scale]\nversion_policy = 'newest'\n",
            r"\[models.scale\]: version_policy: expected 'latest'",
        ),
        ("[models.scale]\nwarmup_inputs = 'nope.npz'\n", r"warmup_inputs .*nope.npz' is not a file"),
        ("[server]\nstrict_readiness = 1\n", r"strict_readiness must be true or false"),
        ("[server]\nmodel_control = 'auto'\n", r"--model-control must be one of none, explicit, poll"),
        ("[modles.scale]\n", r"unknown key 'modles'; did you mean 'models'\?"),
        ("[server\n", r"not valid TOML"),
    ],
)
def test_config_errors_are_one_line_with_a_fix(tmp_path, text, message):
    with pytest.raises(UsageError, match=message):
        ServerConfig.from_toml(write(tmp_path / "serve.toml", text))


def test_config_naming_a_missing_folder_suggests_the_closest(repo, tmp_path):
    cfg = ServerConfig.from_toml(write(tmp_path / "serve.toml", "[models.scal]\nvariant = 'int8'\n"), port=0)
    with pytest.raises(
        UsageError, match=r"\[models.scal\] names no model folder .*did you mean \[models.scale\]\?"
    ):
        InferenceServer(repo, cfg)


def test_flags_win_over_server_table_and_model_tables_over_flags(tmp_path):
    path = write(
        tmp_path / "serve.toml",
        "[server]\nport = 9000\nmax_batch_size = 8\nvariant = 'fp16'\n[models.scale]\nvariant = 'int8'\ninstances = 2\n",
    )
    cfg = ServerConfig.from_toml(path, port=0, max_batch_size=4)
    assert cfg.port == 0
    assert cfg.model_settings("scale").variant == "int8" and cfg.model_settings("scale").instances == 2
    assert cfg.model_settings("scale").max_batch_size == 4
    assert cfg.model_settings("other").variant == "fp16"


def test_per_model_variant_batching_policy_and_name_override(repo, tmp_path):
    """int8 for one model while an fp32-only model beside it still loads; a renamed folder; two versions."""
    path = write(
        tmp_path / "serve.toml",
        """
[models.scale]
variant = "int8"
max_batch_size = 8
max_queue_delay_ms = 1.5
instances = 2
version_policy = "latest:2"

[models.add]
name = "adder"
max_batch_size = 1
""",
    )
    with running_server(repo, **_from(path)) as srv:
        x = np.ones((2, 4), np.float32)
        np.testing.assert_allclose(infer(srv.url, "scale", x), x * 5.0)  # int8 variant of version 2
        np.testing.assert_allclose(infer(srv.url, "scale", x, "1"), x * 3.0)  # int8 variant of version 1
        status, _, body = http(srv, "GET", "/v2/models/scale")
        md = json.loads(body)
        assert status == 200 and md["versions"] == ["1", "2"] and md["platform"] == "onnxruntime_onnx"
        assert md["parameters"]["variant"] == "int8" and md["parameters"]["version"] == "2"
        assert http(srv, "GET", "/v2/models/add")[0] == 404
        adder = json.loads(http(srv, "GET", "/v2/models/adder")[2])
        assert adder["parameters"]["variant"] == "fp32" and adder["parameters"]["dynamic_batching"] is False

        c = th.InferenceServerClient(srv.url.removeprefix("http://"))
        config = c.get_model_config("scale")
        assert config["max_batch_size"] == 8 and config["platform"] == "onnxruntime_onnx"
        assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 1500
        assert config["instance_group"][0]["count"] == 2 and config["instance_group"][0]["kind"] == "KIND_CPU"
        assert config["version_policy"] == {"latest": {"num_versions": 2}}
        assert config["parameters"]["variant"] == {"string_value": "int8"}
        assert c.get_model_config("adder")["max_batch_size"] == 0  # no batching: dims keep the batch dim
        assert c.get_model_config("adder")["input"][0]["dims"] == [-1, 4]
        c.close()


def _from(path: Path, **flags) -> dict:
    """ServerConfig fields of a serve.toml, for running_server."""
    cfg = ServerConfig.from_toml(path, **flags)
    return {"models": cfg.models, "config_path": cfg.config_path, "version_policy": cfg.version_policy}


def test_warmup_inputs_are_used_and_bad_ones_fail_the_model(repo, tmp_path, caplog):
    good = tmp_path / "good.npz"
    np.savez(good, x=np.ones((3, 4), np.float32))
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.ones((3, 5), np.float32))
    caplog.set_level("INFO", "torchport.server")
    with running_server(repo / "scale" / "1", warmup=3, warmup_inputs=str(good)) as srv:
        assert http(srv, "GET", "/v2/health/ready")[0] == 200
    assert f"3 warm-up run(s) on {good}" in caplog.text
    with pytest.raises(ServingError, match=r"model 'scale' \(version 1\) failed to load: .*x"):
        with running_server(repo / "scale" / "1", warmup_inputs=str(bad)):
            pass


def test_single_package_is_served_under_its_manifest_name(tmp_path, caplog):
    """``export --name tinyllama -o pkg-llama``: the name the user gave, and the log says why."""
    make_scale_package(tmp_path / "renamed", 2.0, name="scale")
    caplog.set_level("INFO", "torchport.server")
    with running_server(tmp_path / "renamed") as srv:
        assert http(srv, "GET", "/v2/models/scale/ready")[0] == 200
        status, _, body = http(srv, "GET", "/v2/models/renamed")
        assert status == 404 and "this server serves: scale" in body.decode()
    assert "folder renamed served as model 'scale' (the package's manifest name)" in caplog.text


def test_single_package_without_a_manifest_name_is_reported_under_its_folder_name(tmp_path):
    """The manifest requires a name; one without it is named by its folder in the failure."""
    pkg = tmp_path / "unnamed"
    make_scale_package(pkg, 2.0, name="scale")
    manifest = json.loads((pkg / "torchport.json").read_text())
    del manifest["name"]
    (pkg / "torchport.json").write_text(json.dumps(manifest))
    with pytest.raises(
        ServingError, match=r"model 'unnamed' \(version 1\) failed to load: .*name is missing"
    ):
        with running_server(pkg):
            pass


def test_repository_models_are_served_under_their_folder_names(tmp_path, caplog):
    """A folder of packages is Triton's rule: the folder's name, whatever the manifests say."""
    make_scale_package(tmp_path / "repo" / "doubler" / "1", 2.0, name="scale")
    make_add_package(tmp_path / "repo" / "plus", name="add")
    caplog.set_level("INFO", "torchport.server")
    with running_server(tmp_path / "repo") as srv:
        assert http(srv, "GET", "/v2/models/doubler/ready")[0] == 200
        assert http(srv, "GET", "/v2/models/plus/ready")[0] == 200
        assert http(srv, "GET", "/v2/models/scale")[0] == 404 and http(srv, "GET", "/v2/models/add")[0] == 404
    assert "served as model" not in caplog.text


def test_serve_toml_name_overrides_the_manifest_name_of_a_single_package(tmp_path, caplog):
    make_scale_package(tmp_path / "renamed", 2.0, name="scale")
    path = write(tmp_path / "serve.toml", '[models.renamed]\nname = "doubler"\n')
    caplog.set_level("INFO", "torchport.server")
    with running_server(tmp_path / "renamed", **_from(path)) as srv:
        assert http(srv, "GET", "/v2/models/doubler/ready")[0] == 200
        assert http(srv, "GET", "/v2/models/scale")[0] == 404
    assert "folder renamed served as model 'doubler' (name set in serve.toml)" in caplog.text


def test_two_folders_served_under_one_name_are_refused_at_start(repo, tmp_path):
    path = write(tmp_path / "serve.toml", '[models.add]\nname = "scale"\n')
    with pytest.raises(
        ServingError,
        match=r"^folders '(add|scale)' and '(add|scale)' would both be served as 'scale'; give one",
    ) as e:
        InferenceServer(repo, ServerConfig.from_toml(path, port=0))
    assert "\n" not in str(e.value)


# -- statistics -------------------------------------------------------------------------------------


def test_statistics_extension_counts_requests_and_batches(repo):
    with running_server(repo, version_policy="all") as srv:
        x = np.ones((3, 4), np.float32)
        for _ in range(2):
            infer(srv.url, "scale", x)
        infer(srv.url, "scale", x, "1")
        bad = http(
            srv,
            "POST",
            "/v2/models/scale/infer",
            json.dumps(
                {"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [1] * 5}]}
            ).encode(),
        )
        assert bad[0] == 400
        c = th.InferenceServerClient(srv.url.removeprefix("http://"))
        stats = c.get_inference_statistics("scale")["model_stats"]
        by_version = {s["version"]: s for s in stats}
        assert set(by_version) == {"1", "2"}
        v2 = by_version["2"]
        assert v2["inference_stats"]["success"]["count"] == 2 and v2["inference_count"] == 6
        assert v2["execution_count"] == 2 and v2["inference_stats"]["success"]["ns"] > 0
        assert v2["inference_stats"]["compute_infer"]["count"] == 2
        assert v2["batch_stats"] == [
            {
                "batch_size": 3,
                "compute_input": {"count": 2, "ns": 0},
                "compute_infer": v2["batch_stats"][0]["compute_infer"],
                "compute_output": {"count": 2, "ns": 0},
            }
        ]
        assert by_version["1"]["inference_stats"]["success"]["count"] == 1
        one = c.get_inference_statistics("scale", "1")["model_stats"]
        assert [s["version"] for s in one] == ["1"]
        everything = c.get_inference_statistics()["model_stats"]
        assert {(s["name"], s["version"]) for s in everything} == {
            ("scale", "1"),
            ("scale", "2"),
            ("add", "1"),
        }
        with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
            c.get_inference_statistics("nope")
        assert "model_configuration" in c.get_server_metadata()["extensions"]
        c.close()


# -- readiness and failure --------------------------------------------------------------------------


def test_a_single_broken_package_exits_by_default(tmp_path):
    corrupt(make_scale_package(tmp_path / "scale", 2.0))
    with pytest.raises(ServingError, match="does not match its sha256.*exiting: --exit-on-error"):
        with running_server(tmp_path / "scale"):
            pass
    with running_server(tmp_path / "scale", exit_on_error=False) as srv:
        assert http(srv, "GET", "/v2/health/ready")[0] == 503


def test_a_missing_variant_in_a_repository_with_exit_on_error(repo):
    with pytest.raises(ServingError, match=r"model 'add' .*int8"):
        with running_server(repo, variant="int8", exit_on_error=True):
            pass


def test_strict_readiness_needs_every_model(repo):
    corrupt(make_scale_package(repo / "broken", 2.0, name="broken"))
    with running_server(repo) as srv:
        assert http(srv, "GET", "/v2/health/ready")[0] == 200
        assert http(srv, "GET", "/v2/models/broken/ready")[0] == 503
    with running_server(repo, strict_readiness=True) as srv:
        assert http(srv, "GET", "/v2/health/ready")[0] == 503
        assert http(srv, "GET", "/v2/models/scale/ready")[0] == 200
        assert http(srv, "GET", "/v2/models/scale/versions/2/ready")[0] == 200
        status, _, body = http(srv, "GET", "/v2/models/scale/versions/1/ready")
        assert status == 404 and b"versions: 2" in body  # not in the default policy (latest)


# -- metrics access ---------------------------------------------------------------------------------


def test_metrics_public_and_metrics_port(repo, monkeypatch):
    monkeypatch.setenv("TP_OPS_KEY", "0123456789abcdef")
    with running_server(repo, api_key_env="TP_OPS_KEY") as srv:
        assert http(srv, "GET", "/metrics")[0] == 401
    with running_server(repo, api_key_env="TP_OPS_KEY", metrics_public=True) as srv:
        status, _, body = http(srv, "GET", "/metrics")
        assert status == 200 and b"torchport_model_ready" in body
        assert http(srv, "GET", "/v2/models/scale")[0] == 401
    with running_server(repo, api_key_env="TP_OPS_KEY", metrics_port=0) as srv:
        assert srv.metrics_port not in (None, srv.port)

        class Other:
            port = srv.metrics_port

        status, _, body = http(Other, "GET", "/metrics")
        assert status == 200 and b'torchport_model_ready{model="scale",version="2"} 1' in body
        assert http(Other, "GET", "/v2/models/scale")[0] == 404
