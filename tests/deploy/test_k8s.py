"""`torchport deploy k8s|kserve`: every manifest validates against the Kubernetes API schema (offline)."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import torchport
from tests.runtimes.conftest import make_add_package
from torchport.deploy import write_k8s_manifests, write_kserve_manifests
from torchport.runtimes import UsageError

K8S_VERSION = "1.30"


def load_docs(folder):
    return {p.name: list(yaml.safe_load_all(p.read_text())) for p in sorted(folder.glob("*.yaml"))}


def validate(doc) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_every_k8s_manifest_validates_and_the_deployment_is_locked_down(tmp_path):
    pkg = make_add_package(tmp_path / "add")
    result = write_k8s_manifests(pkg.path, tmp_path / "k8s", image="registry.example.com/add:1", gpu=True)
    assert result.files == ["deployment.yaml", "hpa.yaml", "pdb.yaml", "secret.yaml", "service.yaml"]
    docs = load_docs(tmp_path / "k8s")
    for docs_in_file in docs.values():
        for doc in docs_in_file:
            validate(doc)
    (deploy,) = docs["deployment.yaml"]
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    sec = container["securityContext"]
    assert sec["runAsNonRoot"] and sec["readOnlyRootFilesystem"] and sec["allowPrivilegeEscalation"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["memory"].endswith("Mi")
    threads = next(e["value"] for e in container["env"] if e["name"] == "TORCHPORT_THREADS")
    assert threads == container["resources"]["limits"]["cpu"]
    (pdb,) = docs["pdb.yaml"]
    assert pdb["spec"]["maxUnavailable"] == 1
    key_volume = next(v for v in pod["volumes"] if v["name"] == "api-key")
    (secret,) = docs["secret.yaml"]
    assert key_volume["secret"]["secretName"] == secret["metadata"]["name"] == "add-api-key"
    assert len(secret["stringData"]["api-key"]) >= 32
    assert (tmp_path / "k8s" / "secret.yaml").stat().st_mode & 0o077 == 0
    (hpa,) = docs["hpa.yaml"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deploy["metadata"]["name"]
    (svc,) = docs["service.yaml"]
    assert svc["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]


def test_a_schema_violation_is_caught_by_the_validator(tmp_path):
    """The validator is not a rubber stamp: a wrong field type in our Deployment fails it."""
    pkg = make_add_package(tmp_path / "add")
    write_k8s_manifests(pkg.path, tmp_path / "k8s", image="add:1")
    (deploy,) = load_docs(tmp_path / "k8s")["deployment.yaml"]
    deploy["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deploy)


def test_resources_grow_with_the_model(tmp_path):
    from torchport.deploy._k8s import resources

    pkg = make_add_package(tmp_path / "add")
    small = resources(pkg)
    pkg.manifest.files["model.onnx"].size = 2 * 1024**3
    big = resources(pkg)
    mib = lambda q: int(q.removesuffix("Mi"))  # noqa: E731
    assert mib(big["requests"]["memory"]) > 4096 > mib(small["requests"]["memory"])
    assert "nvidia.com/gpu" not in small["limits"]


def test_kserve_runtime_and_inference_services(tmp_path):
    pkg = make_add_package(tmp_path / "add")
    result = write_kserve_manifests(pkg.path, tmp_path / "kserve", image="registry.example.com/add:1")
    assert result.files == ["inferenceservice-custom.yaml", "inferenceservice.yaml", "servingruntime.yaml"]
    docs = load_docs(tmp_path / "kserve")
    (runtime,) = docs["servingruntime.yaml"]
    (isvc,) = docs["inferenceservice.yaml"]
    (custom,) = docs["inferenceservice-custom.yaml"]
    assert runtime["kind"] == "ServingRuntime" and runtime["spec"]["protocolVersions"] == ["v2"]
    assert isvc["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
    assert isvc["spec"]["predictor"]["model"]["protocolVersion"] == "v2"
    # KServe embeds plain Kubernetes containers: validate them inside a Pod against the API schema
    for containers in (runtime["spec"]["containers"], custom["spec"]["predictor"]["containers"]):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "x"},
            "spec": {"containers": containers},
        }
        pod["spec"]["volumes"] = [{"name": "tmp", "emptyDir": {}}]
        validate(pod)
        (container,) = containers
        assert container["name"] == "kserve-container"
        assert container["ports"][0]["containerPort"] == 8080
        assert {"name": "TORCHPORT_PORT", "value": "8080"} in container["env"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image", "bad image"], "--image 'bad image' is not an image reference"),
        (["--image", "add:1", "--replicas", "0"], "--replicas must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_nothing_written(tmp_path, args, message):
    pkg = make_add_package(tmp_path / "add")
    proc = torchport("deploy", "k8s", str(pkg.path), "-o", str(tmp_path / "k8s"), *args)
    assert proc.returncode == 1 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "k8s").exists()


def test_existing_output_needs_force(tmp_path):
    pkg = make_add_package(tmp_path / "add")
    write_kserve_manifests(pkg.path, tmp_path / "out", image="add:1")
    with pytest.raises(UsageError, match="already exists; pass --force"):
        write_kserve_manifests(pkg.path, tmp_path / "out", image="add:2")
    write_kserve_manifests(pkg.path, tmp_path / "out", image="add:2", force=True)
    assert "add:2" in (tmp_path / "out" / "servingruntime.yaml").read_text()
