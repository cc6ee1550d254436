"""`torchport deploy k8s` and `torchport deploy kserve`: manifests for the serving image.

Kubernetes: Deployment (v2 health probes, resources sized from the model, non-root, read-only root
file system with an emptyDir for /tmp, no privilege escalation), Service, HorizontalPodAutoscaler,
PodDisruptionBudget and the API-key Secret. KServe: a ServingRuntime speaking protocol v2 with an
InferenceService using it, and the custom-predictor InferenceService form.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchport.deploy._container import DEFAULT_PORT, USER_ID
from torchport.deploy._names import k8s_name
from torchport.deploy._output import atomic_dir
from torchport.runtimes import ModelPackage, UsageError

KEY_DIR = "/var/run/secrets/torchport"
KEY_FILE = f"{KEY_DIR}/api-key"
KSERVE_PORT = 8080  # KServe routes to the predictor container's 8080
_MI = 1024 * 1024


@dataclass
class ManifestSet:
    """The files :func:`write_k8s_manifests` / :func:`write_kserve_manifests` wrote."""

    path: Path
    files: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.path}: {', '.join(self.files)}"


def _yaml(docs: list[dict[str, Any]]) -> str:
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - pyyaml is a dependency
        raise UsageError("writing manifests needs PyYAML: pip install pyyaml") from e
    return "---\n".join(yaml.safe_dump(d, sort_keys=False, default_flow_style=False) for d in docs)


def model_bytes(pkg: ModelPackage) -> int:
    """Bytes of every file in the package (all variants): what the server maps into memory at most."""
    return sum(r.size for r in pkg.manifest.files.values())


def resources(pkg: ModelPackage, *, gpu: bool = False) -> dict[str, dict[str, str]]:
    """Requests and limits sized from the model: memory ~ 2x the weights + 256 MiB for the runtime."""
    mib = max(256, (2 * model_bytes(pkg)) // _MI + 256)
    limits: dict[str, str] = {"cpu": "2", "memory": f"{2 * mib}Mi"}
    if gpu:
        limits["nvidia.com/gpu"] = "1"
    return {"requests": {"cpu": "500m", "memory": f"{mib}Mi"}, "limits": limits}


def _labels(name: str, version: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/version": version,
        "app.kubernetes.io/component": "inference-server",
        "app.kubernetes.io/part-of": "torchport",
    }


def _probe(path: str, *, period: int, failures: int, initial: int = 0) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "initialDelaySeconds": initial,
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def container_spec(
    pkg: ModelPackage, image: str, *, port: int = DEFAULT_PORT, gpu: bool = False, api_key: bool = True
) -> dict[str, Any]:
    """The serving container: probes on the v2 health endpoints, resources, a locked-down security context."""
    limits = resources(pkg, gpu=gpu)
    env = [
        {"name": "TORCHPORT_PORT", "value": str(port)},
        {"name": "TORCHPORT_PROVIDER", "value": "cuda" if gpu else "cpu"},
        # inference workers = the CPU limit (the container sees the node's cores, not its quota)
        {"name": "TORCHPORT_THREADS", "value": limits["limits"]["cpu"]},
    ]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    if api_key:
        env.append({"name": "TORCHPORT_API_KEY_FILE", "value": KEY_FILE})
        mounts.append({"name": "api-key", "mountPath": KEY_DIR, "readOnly": True})
    return {
        "name": "server",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": env,
        "startupProbe": _probe("/v2/health/ready", period=2, failures=90),
        "readinessProbe": _probe("/v2/health/ready", period=5, failures=3),
        "livenessProbe": _probe("/v2/health/live", period=10, failures=3),
        "resources": limits,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": USER_ID,
            "runAsGroup": USER_ID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }


def deployment(
    pkg: ModelPackage, image: str, name: str, *, replicas: int = 2, gpu: bool = False, api_key: bool = True
) -> dict[str, Any]:
    version = str(pkg.manifest.version)
    labels = _labels(name, version)
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]
    if api_key:
        volumes.append({"name": "api-key", "secret": {"secretName": f"{name}-api-key"}})
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": USER_ID,
            "runAsGroup": USER_ID,
            "fsGroup": USER_ID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": 40,
        "containers": [container_spec(pkg, image, gpu=gpu, api_key=api_key)],
        "volumes": volumes,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(DEFAULT_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def service(name: str, version: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": _labels(name, version)},
        "spec": {
            "type": "ClusterIP",
            "selector": {"app.kubernetes.io/name": name},
            "ports": [{"name": "http", "port": DEFAULT_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def autoscaler(name: str, version: str, *, min_replicas: int = 2, max_replicas: int = 10) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "labels": _labels(name, version)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
                }
            ],
        },
    }


def disruption_budget(name: str, version: str) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "labels": _labels(name, version)},
        # one pod at a time may go (a node drain proceeds; the others keep serving)
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": name}}},
    }


def api_key_secret(name: str, version: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{name}-api-key", "labels": _labels(name, version)},
        "type": "Opaque",
        "stringData": {"api-key": secrets.token_urlsafe(32)},
    }


def _inputs(
    package: str | os.PathLike[str], image: str, name: str | None
) -> tuple[ModelPackage, str, str, str]:
    """The verified package, the checked image reference, the object name and the model version."""
    if not image or any(c.isspace() for c in image):
        raise UsageError(f"--image {image!r} is not an image reference (e.g. registry.example.com/cnn:1)")
    pkg = ModelPackage.load(package)
    return pkg, image, k8s_name(name or pkg.manifest.name), str(pkg.manifest.version)


def _write(tmp: Path, files: dict[str, list[dict[str, Any]]]) -> list[str]:
    for fname, docs in files.items():
        (tmp / fname).write_text(_yaml(docs))
    if (tmp / "secret.yaml").exists():
        os.chmod(tmp / "secret.yaml", 0o600)
    return sorted(files)


def write_k8s_manifests(
    package: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    image: str,
    name: str | None = None,
    gpu: bool = False,
    replicas: int = 2,
    api_key: bool = True,
    force: bool = False,
) -> ManifestSet:
    """Write deployment.yaml, service.yaml, hpa.yaml, pdb.yaml and secret.yaml (a fresh random API key).

    Example:
        >>> write_k8s_manifests("out/cnn", "k8s/", image="registry.example.com/cnn:1")   # doctest: +SKIP

    Raises:
        PackageError: the package is missing or tampered with.
        UsageError: the output exists (without ``force``) or a bad image reference.
    """
    if replicas < 1:
        raise UsageError(f"--replicas must be >= 1, got {replicas}")
    pkg, image, name, version = _inputs(package, image, name)
    files = {
        "deployment.yaml": [deployment(pkg, image, name, replicas=replicas, gpu=gpu, api_key=api_key)],
        "service.yaml": [service(name, version)],
        "hpa.yaml": [autoscaler(name, version, min_replicas=min(replicas, 2))],
        "pdb.yaml": [disruption_budget(name, version)],
    }
    if api_key:
        files["secret.yaml"] = [api_key_secret(name, version)]
    with atomic_dir(out, force=force) as tmp:
        written = _write(tmp, files)
    return ManifestSet(path=Path(out), files=written)


def write_kserve_manifests(
    package: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    image: str,
    name: str | None = None,
    gpu: bool = False,
    force: bool = False,
) -> ManifestSet:
    """Write servingruntime.yaml + inferenceservice.yaml (protocol v2) and inferenceservice-custom.yaml.

    The image has the model inside, so neither form needs a ``storageUri``.

    Raises:
        PackageError / UsageError: as for :func:`write_k8s_manifests`.
    """
    pkg, image, name, version = _inputs(package, image, name)
    container = container_spec(pkg, image, port=KSERVE_PORT, gpu=gpu, api_key=False)
    container["name"] = "kserve-container"
    runtime = {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": {"name": f"{name}-torchport", "labels": _labels(name, version)},
        "spec": {
            "supportedModelFormats": [{"name": "onnx", "version": "1", "autoSelect": False}],
            "protocolVersions": ["v2"],
            "containers": [container],
        },
    }
    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "labels": _labels(name, version)},
        "spec": {
            "predictor": {
                "model": {
                    "modelFormat": {"name": "onnx"},
                    "runtime": f"{name}-torchport",
                    "protocolVersion": "v2",
                }
            }
        },
    }
    custom = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": f"{name}-custom", "labels": _labels(name, version)},
        "spec": {"predictor": {"containers": [dict(container)]}},
    }
    files = {
        "servingruntime.yaml": [runtime],
        "inferenceservice.yaml": [isvc],
        "inferenceservice-custom.yaml": [custom],
    }
    with atomic_dir(out, force=force) as tmp:
        written = _write(tmp, files)
    return ManifestSet(path=Path(out), files=written)
