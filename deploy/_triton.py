"""`torchport deploy triton`: a Triton Inference Server model repository for the package.

    REPO/NAME/config.pbtxt          platform onnxruntime_onnx, Triton datatypes and dims,
                                    max_batch_size + dynamic_batching when the model has a batch dim
    REPO/NAME/1/model.onnx          (+ its external data), torchport.json and parity.json beside it

Triton ignores the extra files; they keep the version folder a verified torchport package, so
`torchport serve REPO` serves the same repository.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from torchport.deploy._names import default_module_name
from torchport.deploy._output import atomic_dir
from torchport.runtimes import (
    MANIFEST_NAME,
    PARITY_NAME,
    PROTOCOL_DATATYPES,
    ModelPackage,
    TensorSpec,
    UsageError,
)
from torchport.runtimes._manifest import Manifest

#: manifest dtype -> Triton data type (model_config.proto): the protocol's name, BYTES is TYPE_STRING
TRITON_DTYPES = {
    dtype: "TYPE_STRING" if dt == "BYTES" else f"TYPE_{dt}" for dtype, dt in PROTOCOL_DATATYPES.items()
}


@dataclass
class TritonRepository:
    """What :func:`write_triton_repository` wrote."""

    path: Path
    name: str
    max_batch_size: int
    files: list[str]

    def __str__(self) -> str:
        return f"{self.path} (model {self.name!r}, max_batch_size {self.max_batch_size})"


def batch_dim(manifest: Manifest) -> str | None:
    """The dynamic dim at axis 0 of every input and output, if there is one."""
    first = [s.shape[0] if s.shape else None for s in manifest.inputs + manifest.outputs]
    if first and isinstance(first[0], str) and all(d == first[0] for d in first):
        return first[0]
    return None


def _tensor(spec: TensorSpec, batched: bool) -> str:
    dims = spec.shape[1:] if batched else spec.shape
    dims_text = ", ".join(str(d) if isinstance(d, int) else "-1" for d in dims)
    return f'  {{\n    name: "{spec.name}"\n    data_type: {TRITON_DTYPES[spec.dtype]}\n    dims: [ {dims_text} ]\n  }}'


def config_pbtxt(
    manifest: Manifest, name: str, *, gpu: bool = False, max_batch_size: int | None = None
) -> str:
    """The config.pbtxt text for ``manifest`` (Triton's ModelConfig in protobuf text format)."""
    batch = batch_dim(manifest)
    mbs = 0
    if batch is not None:
        limit = manifest.dynamic_dims[batch].max if batch in manifest.dynamic_dims else 32
        mbs = min(limit, max_batch_size or limit)
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        'default_model_filename: "model.onnx"',
        f"max_batch_size: {mbs}",
        "input [\n" + ",\n".join(_tensor(s, mbs > 0) for s in manifest.inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor(s, mbs > 0) for s in manifest.outputs) + "\n]",
        f"instance_group [\n  {{\n    count: 1\n    kind: {'KIND_GPU' if gpu else 'KIND_CPU'}\n  }}\n]",
    ]
    if mbs > 0:
        lines.append("dynamic_batching {\n  max_queue_delay_microseconds: 2000\n}")
    return "\n".join(lines) + "\n"


def write_triton_repository(
    package: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    name: str | None = None,
    variant: str = "fp32",
    gpu: bool = False,
    max_batch_size: int | None = None,
    force: bool = False,
) -> TritonRepository:
    """Write a Triton model repository (``NAME/config.pbtxt``, ``NAME/1/model.onnx`` + external data).

    Example:
        >>> write_triton_repository("out/cnn", "triton-repo")        # doctest: +SKIP
        TritonRepository(path=PosixPath('triton-repo'), name='cnn', max_batch_size=64, ...)

    Raises:
        PackageError: the package is missing or tampered with.
        UsageError: the output exists (without ``force``), no such variant, a bad name.
    """
    pkg = ModelPackage.load(package)
    manifest = pkg.manifest
    name = name or default_module_name(manifest.name)
    if not name or "/" in name or name.startswith("."):
        raise UsageError(f"--name {name!r} is not a usable Triton model name")
    if variant not in manifest.variants:
        raise UsageError(f"the package has no {variant!r} variant; it has: {', '.join(manifest.variants)}")
    if max_batch_size is not None and max_batch_size < 1:
        raise UsageError(f"--max-batch-size must be >= 1, got {max_batch_size}")
    chosen = manifest.variants[variant]
    text = config_pbtxt(manifest, name, gpu=gpu, max_batch_size=max_batch_size)
    with atomic_dir(out, force=force) as tmp:
        version_dir = tmp / name / "1"
        version_dir.mkdir(parents=True)
        (tmp / name / "config.pbtxt").write_text(text)
        # the chosen variant becomes model.onnx; the package files come along so the folder stays a
        # verified torchport package (fp32 only, renamed variants would break its hashes)
        if variant == "fp32":
            for rel in manifest.files:
                (version_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(pkg.path / rel, version_dir / rel)
            shutil.copy2(pkg.path / MANIFEST_NAME, version_dir / MANIFEST_NAME)
        else:
            shutil.copy2(pkg.path / chosen.file, version_dir / "model.onnx")
            for rel in chosen.data_files:
                shutil.copy2(pkg.path / rel, version_dir / rel)
            if (pkg.path / PARITY_NAME).is_file():
                shutil.copy2(pkg.path / PARITY_NAME, version_dir / PARITY_NAME)
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    mbs = int(text.split("max_batch_size: ")[1].split("\n")[0])
    return TritonRepository(path=Path(out), name=name, max_batch_size=mbs, files=files)
