"""Model control (Triton's repository extension) on a real server: explicit load/unload, polling the
folder, hot swaps under load without a failed request, a broken new version, SIGHUP config reload."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from tests.runtimes.conftest import corrupt, http, running_server
from tests.runtimes.server._models import make_scale_package


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    make_scale_package(root / "scale" / "1", 2.0)
    make_scale_package(root / "other", 3.0, name="other")
    return root


def client(srv) -> th.InferenceServerClient:
    return th.InferenceServerClient(srv.url.removeprefix("http://"))


def y_of(c: th.InferenceServerClient, model: str, version: str = "") -> float:
    inp = th.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.ones((1, 4), np.float32), binary_data=True)
    return float(c.infer(model, [inp], model_version=version).as_numpy("y")[0, 0])


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_explicit_mode_loads_only_what_is_asked_and_the_api_loads_and_unloads(repo):
    with running_server(repo, model_control="explicit", load=["scale"]) as srv:
        c = client(srv)
        assert c.is_model_ready("scale") and not c.is_model_ready("other")
        index = {m["name"]: m for m in c.get_model_repository_index()}
        assert index["other"] == {"name": "other", "state": "UNAVAILABLE", "reason": "unloaded"}
        assert index["scale"]["state"] == "READY" and index["scale"]["version"] == "1"
        with pytest.raises(InferenceServerException, match="model 'other' is not loaded"):
            y_of(c, "other")

        c.load_model("other")
        assert y_of(c, "other") == 3.0
        c.unload_model("scale")
        assert not c.is_model_ready("scale")
        assert {m["name"]: m["state"] for m in c.get_model_repository_index()}["scale"] == "UNAVAILABLE"
        with pytest.raises(
            InferenceServerException,
            match="no model 'nope' in the repository folder; models there: other, scale",
        ):
            c.load_model("nope")
        with pytest.raises(InferenceServerException, match="model 'scale' is not loaded"):
            c.unload_model("scale")
        c.load_model("scale")
        assert y_of(c, "scale") == 2.0
        c.close()


def test_load_api_is_refused_without_model_control(repo):
    with running_server(repo) as srv:
        status, _, body = http(srv, "POST", "/v2/repository/models/scale/load", b"{}")
        assert status == 400 and b"--model-control explicit" in body


def test_explicit_load_picks_up_a_new_version_and_a_broken_one_leaves_the_old_serving(repo):
    with running_server(repo, model_control="explicit", load=["scale"]) as srv:
        c = client(srv)
        make_scale_package(repo / "scale" / "2", 4.0, version="2")
        c.load_model("scale")  # latest version policy: 2 replaces 1
        assert y_of(c, "scale") == 4.0
        assert [m["version"] for m in c.get_model_repository_index() if m["name"] == "scale"] == ["2"]

        corrupt(make_scale_package(repo / "scale" / "2", 8.0, version="2"))
        with pytest.raises(InferenceServerException, match="does not match its sha256"):
            c.load_model("scale")
        assert y_of(c, "scale") == 4.0  # the old version 2 still serves
        entry = [m for m in c.get_model_repository_index() if m["name"] == "scale"][0]
        assert entry["state"] == "READY" and "does not match its sha256" in entry["reason"]
        c.close()


def test_poll_mode_loads_new_and_changed_versions_and_drops_removed_models(repo):
    with running_server(repo, model_control="poll", poll_interval=0.1) as srv:
        c = client(srv)
        assert y_of(c, "scale") == 2.0
        make_scale_package(repo / "scale" / "2", 4.0, version="2")
        wait_for(lambda: y_of(c, "scale") == 4.0)
        assert c.get_model_metadata("scale")["versions"] == ["2"]

        # a copy that is broken (bad hash) is reported and the old one keeps serving
        corrupt(make_scale_package(repo / "scale" / "2", 8.0, version="2"))
        wait_for(lambda: "reason" in [m for m in c.get_model_repository_index() if m["name"] == "scale"][0])
        assert y_of(c, "scale") == 4.0
        # ... until a good copy lands
        make_scale_package(repo / "scale" / "2", 16.0, version="2")
        wait_for(lambda: y_of(c, "scale") == 16.0)

        make_scale_package(repo / "fresh", 5.0, name="fresh")
        wait_for(lambda: c.is_model_ready("fresh"))
        assert y_of(c, "fresh") == 5.0
        shutil.rmtree(repo / "other")
        wait_for(lambda: not c.is_model_ready("other"))
        with pytest.raises(
            InferenceServerException,
            match="cannot unload .fresh. with --model-control poll: the folder decides",
        ):
            c.unload_model("fresh")  # the folder decides in poll mode
        c.close()


def test_hot_swap_under_concurrent_load_fails_no_request(repo):
    """8 clients send requests without pause while version 2 replaces version 1 and then is changed."""
    with running_server(repo, model_control="poll", poll_interval=0.05, max_queue_delay_ms=1) as srv:
        stop = threading.Event()
        seen: list[float] = []
        errors: list[BaseException] = []

        def hammer() -> None:
            c = client(srv)
            try:
                while not stop.is_set():
                    seen.append(y_of(c, "scale"))
            except BaseException as e:  # any failed request fails the test
                errors.append(e)
            finally:
                c.close()

        threads = [threading.Thread(target=hammer) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        make_scale_package(repo / "scale" / "2", 4.0, version="2")
        wait_for(lambda: seen and seen[-1] == 4.0)
        time.sleep(0.2)
        make_scale_package(repo / "scale" / "2", 6.0, version="2")
        wait_for(lambda: seen and seen[-1] == 6.0)
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]
    assert set(seen) == {2.0, 4.0, 6.0} and len(seen) > 50


def test_sighup_reload_applies_a_changed_config(repo, tmp_path):
    from torchport.runtimes.server import ServerConfig

    cfg_path = tmp_path / "serve.toml"
    cfg_path.write_text("[models.scale]\nmax_batch_size = 4\n")
    cfg = ServerConfig.from_toml(cfg_path, port=0, access_log=False, warmup=1)
    with running_server(repo, **{k: getattr(cfg, k) for k in ("models", "config_path")}) as srv:
        c = client(srv)
        assert c.get_model_config("scale")["max_batch_size"] == 4
        cfg_path.write_text("[models.scale]\nmax_batch_size = 16\n")
        srv.request_reload()
        wait_for(lambda: c.get_model_config("scale")["max_batch_size"] == 16)
        cfg_path.write_text("[models.scale]\nmax_batch = 2\n")  # a broken config is refused, nothing changes
        srv.request_reload()
        time.sleep(0.5)
        assert c.get_model_config("scale")["max_batch_size"] == 16
        assert json.loads(http(srv, "GET", "/v2/models/scale")[2])["parameters"]["max_batch_size"] == 16
        c.close()


def test_a_broken_new_version_number_leaves_the_old_version_serving(repo):
    with running_server(repo, model_control="poll", poll_interval=0.1) as srv:
        c = client(srv)
        corrupt(make_scale_package(repo / "scale" / "2", 4.0, version="2"))
        wait_for(lambda: any(m.get("version") == "2" for m in c.get_model_repository_index()))
        index = {m["version"]: m for m in c.get_model_repository_index() if m["name"] == "scale"}
        assert index["2"]["state"] == "UNAVAILABLE" and "does not match its sha256" in index["2"]["reason"]
        assert index["1"]["state"] == "READY"
        assert y_of(c, "scale") == 2.0 and c.is_server_ready()
        c.close()
