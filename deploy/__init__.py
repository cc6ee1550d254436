"""torchport.deploy — no torch: model wheels, container build contexts, Kubernetes / KServe manifests,
Triton model repositories. Everything here packs an existing model package (``torchport export``).

Example:
    >>> from torchport.deploy import build_wheel, write_container_context, build_image
    >>> build_wheel("out/cnn", "dist")                                  # doctest: +SKIP
    >>> ctx = write_container_context("out/cnn", "out/cnn-image")       # doctest: +SKIP
    >>> build_image(ctx.path, "cnn:1")                                  # doctest: +SKIP
"""

from torchport.deploy._container import (
    DEFAULT_CPU_BASE,
    DEFAULT_GPU_BASE,
    ContainerContext,
    build_image,
    find_builder,
    write_container_context,
)
from torchport.deploy._k8s import ManifestSet, write_k8s_manifests, write_kserve_manifests
from torchport.deploy._model import Model, Signature
from torchport.deploy._triton import TritonRepository, config_pbtxt, write_triton_repository
from torchport.deploy._wheel import ENTRY_POINT_GROUP, WheelResult, build_wheel

__all__ = [
    "DEFAULT_CPU_BASE",
    "DEFAULT_GPU_BASE",
    "ENTRY_POINT_GROUP",
    "ContainerContext",
    "ManifestSet",
    "Model",
    "Signature",
    "TritonRepository",
    "WheelResult",
    "build_image",
    "build_wheel",
    "config_pbtxt",
    "find_builder",
    "write_container_context",
    "write_k8s_manifests",
    "write_kserve_manifests",
    "write_triton_repository",
]
