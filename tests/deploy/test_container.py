"""`torchport deploy container`: a real image built offline with podman, run, and queried with tritonclient."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml

from tests.deploy.conftest import free_port, torchport
from tests.runtimes.conftest import make_add_package
from torchport.deploy import build_image, write_container_context, write_k8s_manifests
from torchport.runtimes import UsageError

pytestmark = pytest.mark.slow


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"podman {' '.join(args)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def wait_ready(port: int, timeout: float = 90) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.is_server_ready():
                return
        except Exception:
            pass
        time.sleep(0.3)
    raise AssertionError(f"server on port {port} not ready within {timeout} s")


def infer_both_ways(port: int, x: np.ndarray, headers: dict | None = None) -> list[np.ndarray]:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    results = []
    for binary in (False, True):
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("y", "z")]
        result = client.infer("add", [inp], outputs=outs, headers=headers)
        results.append([result.as_numpy("y"), result.as_numpy("z")])
    return results


@pytest.fixture(scope="module")
def image(tmp_path_factory, base_image):
    """The add model's CPU image, built with `torchport deploy container --build` on the local base."""
    root = tmp_path_factory.mktemp("image")
    pkg = make_add_package(root / "add")
    tag = f"localhost/torchport-test-add:{uuid.uuid4().hex[:8]}"
    proc = torchport(
        "deploy", "container", str(pkg.path), "-o", str(root / "ctx"), "--base-image", base_image,
        "--build", "--tag", tag,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"image {tag}" in proc.stdout
    yield tag, pkg, root / "ctx"
    podman("rmi", "-f", tag, check=False)
    podman("image", "prune", "-f", check=False)  # the build stages left untagged


def test_context_is_complete_and_has_no_torch(image):
    _, pkg, ctx = image
    text = (ctx / "Containerfile").read_text()
    assert (ctx / "Dockerfile").read_text() == text
    for needle in (
        "ARG BASE_IMAGE=localhost/torchport-base:bookworm",
        "USER 10001:10001",
        "EXPOSE 8000",
        "HEALTHCHECK",
        "/v2/health/ready",
        'io.torchport.model.name="add"',
        "io.torchport.package.sha256=",
        'ENTRYPOINT ["/opt/torchport/bin/torchport-entrypoint"]',
    ):
        assert needle in text, needle
    assert (ctx / ".dockerignore").read_text().splitlines()[1] == "*"
    wheels = sorted(p.name for p in (ctx / "wheels").glob("*.whl"))
    assert any(w.startswith("onnxruntime-") for w in wheels) and any(
        w.startswith("torchport-") for w in wheels
    )
    assert "add-1-py3-none-any.whl" in wheels
    # no torch; the tokenizer libraries only go into the images of text models
    assert not [
        w for w in wheels if w.split("-")[0] in ("torch", "onnxruntime_gpu", "sympy", "tokenizers", "jinja2")
    ]
    assert json.loads((ctx / "torchport-context.json").read_text())["wheels"] == wheels


def test_the_context_builds_without_network(image, base_image):
    _, _, ctx = image
    tag = f"localhost/torchport-test-offline:{uuid.uuid4().hex[:8]}"
    try:
        assert build_image(ctx, tag, base_image=base_image, network="none") == tag
        labels = json.loads(podman("image", "inspect", tag).stdout)[0]["Config"]["Labels"]
        assert labels["io.torchport.model.name"] == "add" and len(labels["io.torchport.package.sha256"]) == 64
        no_torch = podman("run", "--rm", "--entrypoint", "python3", tag, "-c", "import torch", check=False)
        assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    finally:
        podman("rmi", "-f", tag, check=False)


def test_image_serves_as_non_root_equal_to_onnxruntime(image, tmp_path):
    tag, pkg, _ = image
    port, grpc_port = free_port(), free_port()
    key = tmp_path / "key"
    key.write_text("s3cret-test-key-0123\n")
    key.chmod(0o644)
    name = f"torchport-test-{uuid.uuid4().hex[:8]}"
    podman(
        "run", "-d", "--name", name, "-e", f"TORCHPORT_PORT={port}", "-e", "TORCHPORT_API_KEY_FILE=/run/key",
        "-e", "TORCHPORT_MAX_BATCH_SIZE=4", "-e", f"TORCHPORT_GRPC_PORT={grpc_port}",
        "-v", f"{key}:/run/key:ro", tag,
    )  # fmt: skip
    try:
        wait_ready(port)
        x = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
        expected = ort.InferenceSession(str(pkg.path / "model.onnx")).run(None, {"x": x})
        with pytest.raises(Exception, match="401|[Uu]nauthorized|API key"):
            infer_both_ways(port, x)
        for got in infer_both_ways(port, x, headers={"Authorization": "Bearer s3cret-test-key-0123"}):
            np.testing.assert_allclose(got[0], expected[0], rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(got[1], expected[1], rtol=1e-6, atol=1e-7)
        meta = httpclient.InferenceServerClient(f"127.0.0.1:{port}").get_model_metadata(
            "add", headers={"Authorization": "Bearer s3cret-test-key-0123"}
        )
        assert meta["parameters"]["max_batch_size"] == 4  # TORCHPORT_MAX_BATCH_SIZE reached the server
        # the gRPC endpoint inside the image, called from the host with tritonclient.grpc
        gc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        with pytest.raises(Exception, match="UNAUTHENTICATED"):
            gc.infer("add", [inp])
        res = gc.infer("add", [inp], headers={"authorization": "Bearer s3cret-test-key-0123"})
        np.testing.assert_allclose(res.as_numpy("y"), expected[0], rtol=1e-6, atol=1e-7)
        config = gc.get_model_config("add", headers={"authorization": "Bearer s3cret-test-key-0123"})
        assert config.config.max_batch_size == 4
        gc.close()
        assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
        assert podman("inspect", name, "--format", "{{.Config.User}}").stdout.strip() == "10001:10001"
        podman("stop", "-t", "20", name)
        assert (
            podman("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip() == "0"
        )  # drained on SIGTERM
    finally:
        podman("rm", "-f", name, check=False)


def test_kube_play_runs_the_generated_deployment(image, tmp_path):
    """The Deployment as generated, run by `podman kube play`; podman 4.3 has no Secret objects, so the
    key comes from a hostPath file in this test only (real clusters use the Secret)."""
    tag, pkg, _ = image
    out = write_k8s_manifests(pkg.path, tmp_path / "k8s", image=tag, name=f"add-{uuid.uuid4().hex[:6]}")
    deploy = yaml.safe_load((out.path / "deployment.yaml").read_text())
    secret = yaml.safe_load((out.path / "secret.yaml").read_text())
    port = free_port()
    spec = deploy["spec"]["template"]["spec"]
    container = spec["containers"][0]
    container["ports"][0]["containerPort"] = port
    for env in container["env"]:
        if env["name"] == "TORCHPORT_PORT":
            env["value"] = str(port)
    key_dir = tmp_path / "key"
    key_dir.mkdir()
    (key_dir / "api-key").write_text(secret["stringData"]["api-key"])
    os.chmod(key_dir, 0o755)
    os.chmod(key_dir / "api-key", 0o644)
    for volume in spec["volumes"]:
        if volume["name"] == "api-key":
            volume.pop("secret")
            volume["hostPath"] = {"path": str(key_dir), "type": "Directory"}
    deploy["spec"]["replicas"] = 1
    played = tmp_path / "play.yaml"
    played.write_text(yaml.safe_dump(deploy))
    podman("kube", "play", str(played), timeout=300)
    try:
        wait_ready(port)
        x = np.ones((2, 4), np.float32)
        headers = {"Authorization": f"Bearer {secret['stringData']['api-key']}"}
        expected = ort.InferenceSession(str(pkg.path / "model.onnx")).run(None, {"x": x})
        for got in infer_both_ways(port, x, headers=headers):
            np.testing.assert_allclose(got[0], expected[0], rtol=1e-6, atol=1e-7)
        pods = podman("pod", "ps", "--format", "{{.Name}}").stdout
        assert f"{deploy['metadata']['name']}-pod" in pods
    finally:
        podman("kube", "down", str(played), check=False)


def test_a_missing_base_image_is_one_line_and_leaves_nothing(tmp_path, base_image):
    pkg = make_add_package(tmp_path / "add")
    proc = torchport(
        "deploy", "container", str(pkg.path), "-o", str(tmp_path / "ctx"),
        "--base-image", "localhost/torchport-no-such-base:1", "--build", "--tag", "localhost/torchport-never:1",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout
    assert (
        "base image 'localhost/torchport-no-such-base:1' does not exist here and could not be pulled"
        in proc.stderr
    )
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ctx").exists() and list(tmp_path.glob(".ctx*")) == []


def test_no_build_tool_is_one_line_and_nothing_written(tmp_path):
    pkg = make_add_package(tmp_path / "add")
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # python, but neither podman nor docker
    proc = torchport(
        "deploy", "container", str(pkg.path), "-o", str(tmp_path / "ctx"), "--build", "--tag", "a:1", env=env
    )
    assert proc.returncode == 1
    assert "--build needs podman or docker and neither is installed" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "ctx").exists()
    with pytest.raises(UsageError, match="not a build context"):
        build_image(tmp_path, "a:1")


def test_gpu_context_uses_cuda_base_and_onnxruntime_gpu(tmp_path):
    pkg = make_add_package(tmp_path / "add")
    ctx = write_container_context(pkg.path, tmp_path / "ctx", gpu=True)
    text = (ctx.path / "Containerfile").read_text()
    assert "ARG BASE_IMAGE=nvidia/cuda:" in text and "TORCHPORT_PROVIDER=cuda" in text
    assert "TORCHPORT_PROVIDER:-cuda" in (ctx.path / "entrypoint.sh").read_text()
    assert "--allow-fallback" not in (ctx.path / "entrypoint.sh").read_text()
    wheels = [w.split("-")[0] for w in ctx.wheels]
    assert "onnxruntime_gpu" in wheels and "onnxruntime" not in wheels and "torch" not in wheels
