"""`torchport deploy container|k8s|kserve|triton PKG`: what production serving engines take. No torch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from torchport.cli._options import deprecated_version_option, model_version, model_version_option

app = typer.Typer(
    help="Container build context, Kubernetes / KServe manifests, Triton model repository for a package.",
    no_args_is_help=True,
)

_PKG = typer.Argument(..., metavar="PKG", help="The model package folder (torchport export).")
_FORCE = typer.Option(False, "--force", help="Replace the output folder if it exists.")
_GPU = typer.Option(False, "--gpu", help="Target NVIDIA GPUs (CUDA provider required, never silently CPU).")
_NAME = typer.Option(None, "--name", help="Name of the model / objects (default: the model's name).")
_IMAGE = typer.Option(..., "--image", help="The serving image, e.g. registry.example.com/cnn:1.")
_MANIFEST_OUT = typer.Option(..., "-o", "--out", help="Folder for the manifests.")


@app.command("container")
def container(
    package_dir: Path = _PKG,
    out: Path = typer.Option(..., "-o", "--out", help="Build context folder to write."),
    gpu: bool = _GPU,
    base_image: Optional[str] = typer.Option(
        None,
        "--base-image",
        help="Base image (default python:3.11-slim-bookworm; CUDA runtime with --gpu); needs python3 + venv.",
    ),
    python_version: Optional[str] = typer.Option(
        None,
        "--python-version",
        help="Python of the base image, for the wheelhouse (default 3.11; 3.12 --gpu).",
    ),
    name: Optional[str] = _NAME,
    version: Optional[str] = model_version_option("the model wheel in the image"),
    old_version: Optional[str] = deprecated_version_option(),
    variant: str = typer.Option(
        "fp32", "--variant", help="Variants in the image: fp32, fp16, int8, int4 or all."
    ),
    build: bool = typer.Option(False, "--build", help="Build the image with podman or docker (needs --tag)."),
    tag: Optional[str] = typer.Option(None, "--tag", help="Image tag for --build, e.g. --tag cnn:1."),
    force: bool = _FORCE,
) -> None:
    """Write a build context that builds offline from itself alone; --build builds it.

    Example: torchport deploy container out/cnn -o out/cnn-image --build --tag cnn:1
    """
    from torchport.deploy import write_container_context
    from torchport.runtimes import UsageError

    version = model_version(version, old_version)
    if build and not tag:
        raise UsageError("--build needs --tag, e.g. --tag cnn:1")
    ctx = write_container_context(
        package_dir,
        out,
        gpu=gpu,
        base_image=base_image,
        name=name,
        version=version,
        variant=variant,
        python_version=python_version,
        build_tag=tag if build else None,
        force=force,
    )
    typer.echo(f"wrote build context {ctx}")


@app.command("k8s")
def k8s(
    package_dir: Path = _PKG,
    image: str = _IMAGE,
    out: Path = _MANIFEST_OUT,
    gpu: bool = _GPU,
    replicas: int = typer.Option(2, "--replicas", help="Replicas (and the autoscaler's minimum, at most 2)."),
    api_key: bool = typer.Option(True, "--api-key/--no-api-key", help="Require a Bearer key from a Secret."),
    name: Optional[str] = _NAME,
    force: bool = _FORCE,
) -> None:
    """Deployment, Service, HorizontalPodAutoscaler, PodDisruptionBudget and the API-key Secret.

    Example: torchport deploy k8s out/cnn --image registry.example.com/cnn:1 -o k8s/ && kubectl apply -f k8s/
    """
    from torchport.deploy import write_k8s_manifests

    result = write_k8s_manifests(
        package_dir, out, image=image, name=name, gpu=gpu, replicas=replicas, api_key=api_key, force=force
    )
    typer.echo(f"wrote {result}")


@app.command("kserve")
def kserve(
    package_dir: Path = _PKG,
    image: str = _IMAGE,
    out: Path = _MANIFEST_OUT,
    gpu: bool = _GPU,
    name: Optional[str] = _NAME,
    force: bool = _FORCE,
) -> None:
    """A KServe ServingRuntime (protocol v2) + InferenceService, and the custom-predictor form.

    Example: torchport deploy kserve out/cnn --image registry.example.com/cnn:1 -o kserve/
    """
    from torchport.deploy import write_kserve_manifests

    typer.echo(
        f"wrote {write_kserve_manifests(package_dir, out, image=image, name=name, gpu=gpu, force=force)}"
    )


@app.command("triton")
def triton(
    package_dir: Path = _PKG,
    out: Path = typer.Option(..., "-o", "--out", help="Model repository folder to write."),
    gpu: bool = typer.Option(False, "--gpu", help="instance_group KIND_GPU instead of KIND_CPU."),
    variant: str = typer.Option(
        "fp32", "--variant", help="Variant to put in as model.onnx: fp32, fp16, int8, int4."
    ),
    max_batch_size: Optional[int] = typer.Option(
        None, "--max-batch-size", help="Cap max_batch_size (default: the batch dim's range maximum)."
    ),
    name: Optional[str] = _NAME,
    force: bool = _FORCE,
) -> None:
    """A Triton Inference Server model repository (config.pbtxt, 1/model.onnx); torchport serve takes it too.

    Example: torchport deploy triton out/cnn -o triton-repo/ && torchport serve triton-repo/
    """
    from torchport.deploy import write_triton_repository

    result = write_triton_repository(
        package_dir, out, name=name, variant=variant, gpu=gpu, max_batch_size=max_batch_size, force=force
    )
    typer.echo(f"wrote {result}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="deploy")
