"""`torchport deploy container`: a build context that builds the serving image offline, from itself alone.

The context::

    Containerfile        (also Dockerfile: the same file) base image as ``ARG BASE_IMAGE``
    .dockerignore
    entrypoint.sh        maps TORCHPORT_* environment variables to `torchport serve` options
    wheels/              the model wheel and every wheel the image installs (no torch)
    torchport-context.json   what was written (model, sha256 of the package, base image, wheels)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from torchport import __version__ as TORCHPORT_VERSION
from torchport.deploy._names import check_module_name, default_module_name
from torchport.deploy._output import atomic_dir
from torchport.deploy._wheel import build_wheel
from torchport.deploy._wheelhouse import build_wheelhouse
from torchport.runtimes import MANIFEST_NAME, ModelPackage, UsageError, sha256_file

DEFAULT_CPU_BASE = "python:3.11-slim-bookworm"
DEFAULT_GPU_BASE = "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04"
DEFAULT_PORT = 8000
USER_ID = 10001
VENV = "/opt/torchport"
CONTEXT_RECORD = "torchport-context.json"

_ENTRYPOINT = """#!/bin/sh
# Serve the model installed in this image; settings come from the environment:
#   TORCHPORT_PORT (default {port}), TORCHPORT_HOST (0.0.0.0), TORCHPORT_PROVIDER ({provider}),
#   TORCHPORT_VARIANT, TORCHPORT_MAX_BATCH_SIZE, TORCHPORT_MAX_QUEUE_DELAY_MS, TORCHPORT_THREADS,
#   TORCHPORT_INTRA_OP_THREADS, TORCHPORT_API_KEY_FILE (Bearer key; health stays open),
#   TORCHPORT_ACCESS_LOG (1/0), TORCHPORT_GRPC_PORT (also serve gRPC there; off by default).
#   Extra arguments go to `torchport serve`.
set -eu
set -- --host "${{TORCHPORT_HOST:-0.0.0.0}}" --port "${{TORCHPORT_PORT:-{port}}}" \\
  --provider "${{TORCHPORT_PROVIDER:-{provider}}}" --variant "${{TORCHPORT_VARIANT:-{variant}}}" \\
  --max-batch-size "${{TORCHPORT_MAX_BATCH_SIZE:-32}}" \\
  --max-queue-delay-ms "${{TORCHPORT_MAX_QUEUE_DELAY_MS:-0}}" \\
  --intra-op-threads "${{TORCHPORT_INTRA_OP_THREADS:-1}}" "$@"
if [ -n "${{TORCHPORT_THREADS:-}}" ]; then set -- "$@" --threads "$TORCHPORT_THREADS"; fi
if [ -n "${{TORCHPORT_API_KEY_FILE:-}}" ]; then set -- "$@" --api-key-file "$TORCHPORT_API_KEY_FILE"; fi
if [ "${{TORCHPORT_ACCESS_LOG:-1}}" = 0 ]; then set -- "$@" --no-access-log; fi
if [ -n "${{TORCHPORT_GRPC_PORT:-}}" ]; then set -- "$@" --grpc-port "$TORCHPORT_GRPC_PORT"; fi
exec {venv}/bin/torchport serve --installed {name} "$@"
"""

_CONTAINERFILE = """# torchport serving image for model {model!r} (version {version}), built offline from this folder:
#   podman build -t {name}:{version} .        (or: docker build -t {name}:{version} .)
#   podman run --rm -p {port}:{port} {name}:{version}
# Another base: --build-arg BASE_IMAGE=...  (it needs python3 >= 3.10 with the venv module{python_note}).
ARG BASE_IMAGE={base}

# Slimming: pip/setuptools, tests, stubs, C sources and the offline tools of ONNX Runtime go;
# on CPU also libonnxruntime.so (the C API: Python uses its own module, which links the runtime in).
FROM ${{BASE_IMAGE}} AS build
COPY wheels/ /tmp/wheels/
{python_setup}RUN python3 -m venv {venv} \\
 && {venv}/bin/python -m pip install --no-index --no-deps --no-compile --no-cache-dir \\
      --disable-pip-version-check -q /tmp/wheels/*.whl \\
 && cd {venv}/lib/python3*/site-packages \\
 && rm -rf pip pip-* setuptools setuptools-* pkg_resources _distutils_hack distutils-precedence.pth \\
      onnxruntime/transformers onnxruntime/quantization onnxruntime/tools numpy/_core/include numpy/f2py {slim} \\
 && find . -depth -type d \\( -name tests -o -name __pycache__ \\) -exec rm -rf {{}} + \\
 && find . -type f \\( -name '*.pyi' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name '*.c' \\
      -o -name '*.h' \\) -delete \\
 && rm -f {venv}/bin/pip* {venv}/bin/f2py {venv}/bin/onnxruntime_test

FROM ${{BASE_IMAGE}}
ARG BASE_IMAGE
LABEL org.opencontainers.image.title="{name}" \\
      org.opencontainers.image.version="{version}" \\
      org.opencontainers.image.description="torchport model {model!r} served over the Open Inference Protocol v2" \\
      org.opencontainers.image.base.name="${{BASE_IMAGE}}" \\
      io.torchport.model.name="{model}" \\
      io.torchport.model.version="{version}" \\
      io.torchport.package.sha256="{package_sha256}" \\
      io.torchport.version="{torchport_version}" \\
      io.torchport.provider="{provider}"
{python_setup}COPY --from=build {venv} {venv}
COPY --chmod=0755 entrypoint.sh {venv}/bin/torchport-entrypoint
RUN echo 'torchport:x:{uid}:{uid}:torchport:/tmp:/usr/sbin/nologin' >> /etc/passwd \\
 && echo 'torchport:x:{uid}:' >> /etc/group
ENV PATH={venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONUNBUFFERED=1 \\
    HOME=/tmp \\
    TORCHPORT_PORT={port} \\
    TORCHPORT_PROVIDER={provider}
USER {uid}:{uid}
WORKDIR /tmp
EXPOSE {port}
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \\
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('TORCHPORT_PORT', '{port}'), timeout=2)"]
ENTRYPOINT ["{venv}/bin/torchport-entrypoint"]
"""

_GPU_PYTHON = """# CUDA runtime images carry no Python: install it from the distribution when missing (the one step
# that needs the distribution's package mirror; a base image with python3 skips it).
RUN command -v python3 >/dev/null 2>&1 || (apt-get update && apt-get install -y --no-install-recommends \\
      python3 python3-venv && rm -rf /var/lib/apt/lists/*)
"""

_DOCKERIGNORE = """# the image needs only these
*
!wheels/
!entrypoint.sh
"""


@dataclass
class ContainerContext:
    """What :func:`write_container_context` wrote."""

    path: Path
    name: str
    version: str
    base_image: str
    gpu: bool
    wheels: list[str] = field(default_factory=list)
    image: str | None = None

    def __str__(self) -> str:
        built = f"; image {self.image}" if self.image else ""
        return f"{self.path} ({len(self.wheels)} wheels, base {self.base_image}{built})"


def package_sha256(pkg: ModelPackage) -> str:
    """sha256 of the package's manifest, which pins every file's sha256: one hash for the whole package."""
    return sha256_file(pkg.path / MANIFEST_NAME)


def containerfile(
    *,
    name: str,
    version: str,
    model: str,
    package_sha256: str,
    base_image: str,
    gpu: bool,
    port: int = DEFAULT_PORT,
) -> str:
    """The Containerfile text (the same file is written as Dockerfile)."""
    return _CONTAINERFILE.format(
        name=name,
        version=version,
        model=model,
        base=base_image,
        venv=VENV,
        uid=USER_ID,
        port=port,
        package_sha256=package_sha256,
        torchport_version=TORCHPORT_VERSION,
        provider="cuda" if gpu else "cpu",
        python_setup=_GPU_PYTHON if gpu else "",
        slim="" if gpu else "onnxruntime/capi/libonnxruntime.so.*",
        python_note="; CUDA images get it from apt" if gpu else "",
    )


def write_container_context(
    package: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    gpu: bool = False,
    base_image: str | None = None,
    name: str | None = None,
    version: str | None = None,
    variant: str = "fp32",
    python_version: str | None = None,
    build_tag: str | None = None,
    force: bool = False,
) -> ContainerContext:
    """Write a build context that builds the serving image offline, from the context alone.

    Args:
        package: the model package folder (hashes verified).
        out: the context folder to create (refused if it exists, unless ``force``).
        gpu: CUDA runtime base, onnxruntime-gpu, and the CUDA provider required (no silent CPU).
        base_image: default for ``ARG BASE_IMAGE`` (python slim for CPU, CUDA runtime for GPU).
        name / version / variant: as for :func:`~torchport.deploy.build_wheel`.
        python_version: the base image's Python (``3.11`` for CPU, ``3.12`` for the GPU default).
        build_tag: also build the image with podman or docker under this tag; if the build fails,
            the context is not left behind either.

    Example:
        >>> write_container_context("out/cnn", "out/cnn-image")          # doctest: +SKIP
        ContainerContext(path=PosixPath('out/cnn-image'), ...)

    Raises:
        PackageError: the package is missing or tampered with.
        UsageError: the output exists, a bad name/version, or pip could not get a wheel.
    """
    pkg = ModelPackage.load(package)
    out = Path(out)
    if out.exists() and not force:
        raise UsageError(
            f"output folder {str(out)!r} already exists; pass --force to replace it or choose another -o"
        )
    module = check_module_name(name) if name else default_module_name(pkg.manifest.name)
    base = base_image or (DEFAULT_GPU_BASE if gpu else DEFAULT_CPU_BASE)
    py = python_version or ("3.12" if gpu and base_image is None else "3.11")
    builder = find_builder() if build_tag else None  # no builder: say so before writing anything
    with atomic_dir(out, force=force) as tmp:
        wheels = tmp / "wheels"
        wheel = build_wheel(pkg.path, wheels, name=module, version=version, variant=variant)
        build_wheelhouse(wheels, gpu=gpu, python_version=py, text=bool(pkg.manifest.extra.get("text")))
        text = containerfile(
            name=wheel.name,
            version=wheel.version,
            model=pkg.manifest.name,
            package_sha256=package_sha256(pkg),
            base_image=base,
            gpu=gpu,
        )
        (tmp / "Containerfile").write_text(text)
        (tmp / "Dockerfile").write_text(text)
        (tmp / ".dockerignore").write_text(_DOCKERIGNORE)
        default_variant = wheel.variants[0] if "fp32" not in wheel.variants else "fp32"
        (tmp / "entrypoint.sh").write_text(
            _ENTRYPOINT.format(
                port=DEFAULT_PORT,
                provider="cuda" if gpu else "cpu",
                variant=default_variant,
                venv=VENV,
                name=wheel.name,
            )
        )
        os.chmod(tmp / "entrypoint.sh", 0o755)
        names = sorted(p.name for p in wheels.glob("*.whl"))
        if any(n.startswith("torch-") for n in names):  # a guard: the serving image never has torch
            raise UsageError("internal: torch ended up in the wheelhouse")
        record = {
            "model": pkg.manifest.name,
            "name": wheel.name,
            "version": wheel.version,
            "package_sha256": package_sha256(pkg),
            "base_image": base,
            "gpu": gpu,
            "python_version": py,
            "torchport_version": TORCHPORT_VERSION,
            "wheels": names,
        }
        (tmp / CONTEXT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if build_tag:
            build_image(tmp, build_tag, base_image=base_image, builder=builder)
    return ContainerContext(
        path=out,
        name=wheel.name,
        version=wheel.version,
        base_image=base,
        gpu=gpu,
        wheels=names,
        image=build_tag,
    )


def _recorded_base(ctx: Path) -> str | None:
    try:
        return json.loads((ctx / CONTEXT_RECORD).read_text())["base_image"]
    except (OSError, ValueError, KeyError):
        return None


def find_builder() -> str:
    """``podman`` or ``docker``, whichever is on PATH (podman first).

    Raises:
        UsageError: neither is installed.
    """
    for tool in ("podman", "docker"):
        if shutil.which(tool):
            return tool
    raise UsageError(
        "--build needs podman or docker and neither is installed (apt-get install podman, or build the "
        "written context elsewhere with `docker build`)"
    )


def build_image(
    context: str | os.PathLike[str],
    tag: str,
    *,
    base_image: str | None = None,
    builder: str | None = None,
    network: str | None = None,
) -> str:
    """Build the image from a context written by :func:`write_container_context`; returns ``tag``.

    Args:
        context: the context folder.
        tag: the image tag, e.g. ``cnn:1``.
        base_image: overrides ``ARG BASE_IMAGE`` (``--build-arg``).
        builder: ``podman`` or ``docker`` (default: whichever is installed).
        network: e.g. ``"none"`` to prove the build needs no network.

    Raises:
        UsageError: no builder, the base image does not exist, or the build failed (its last line).
    """
    ctx = Path(context)
    if not (ctx / "Containerfile").is_file():
        raise UsageError(
            f"{str(ctx)!r} is not a build context (no Containerfile); write one with `torchport deploy container`"
        )
    tool = builder or find_builder()
    base = base_image or _recorded_base(ctx)
    local = (
        subprocess.run([tool, "image", "inspect", base], capture_output=True).returncode == 0
        if base
        else True
    )
    cmd = [tool, "build", "-t", tag, "-f", str(ctx / "Containerfile")]
    if tool == "podman":
        cmd += ["--format", "docker"]  # keeps HEALTHCHECK (the OCI format has none)
    if base_image:
        cmd += ["--build-arg", f"BASE_IMAGE={base_image}"]
    if network:
        cmd += ["--network", network]
    cmd.append(str(ctx))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stdout + "\n" + proc.stderr).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.lower().startswith("error")]
        detail = (errors or lines or [f"exit code {proc.returncode}"])[-1]
        if not local:
            raise UsageError(f"base image {base!r} does not exist here and could not be pulled: {detail}")
        raise UsageError(f"{tool} build of {ctx} failed: {detail}")
    return tag
