"""Serving a Triton Inference Server model repository as it is: ``NAME/config.pbtxt``, ``NAME/<v>/model.onnx``.

A version folder that is also a torchport package (``torchport deploy triton`` writes ``torchport.json``
beside ``model.onnx``) is served as a package, hashes verified. A plain Triton version folder has no
manifest: its signature comes from the ONNX file itself (no dim ranges, no hashes), and only the
``onnxruntime_onnx`` platform / ``onnxruntime`` backend can be served.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from torchport.runtimes._errors import PackageError
from torchport.runtimes._manifest import MANIFEST_NAME, Manifest, Variant
from torchport.runtimes._package import ModelPackage

log = logging.getLogger("torchport.server")

CONFIG_NAME = "config.pbtxt"
_ONNX_RUNTIME = re.compile(r'^\s*(platform:\s*"onnxruntime_onnx"|backend:\s*"onnxruntime")', re.M)
_FILENAME = re.compile(r'^\s*default_model_filename:\s*"([^"/]+)"', re.M)


def _model_filename(model_dir: Path) -> str | None:
    """``model.onnx`` (or config's default_model_filename) when ``model_dir`` is an ONNX Runtime Triton model."""
    config = model_dir / CONFIG_NAME
    try:
        text = config.read_text()
    except OSError:
        return None
    if not _ONNX_RUNTIME.search(text):
        log.warning("skipping Triton model %s: only platform onnxruntime_onnx can be served", model_dir.name)
        return None
    match = _FILENAME.search(text)
    return match.group(1) if match else "model.onnx"


def triton_versions(model_dir: Path) -> list[tuple[str, Path]]:
    """``[(version, folder)]`` of a Triton model folder's numeric versions holding its ONNX file."""
    filename = _model_filename(model_dir)
    if filename is None:
        return []
    found = [
        (v.name, v)
        for v in model_dir.iterdir()
        if v.is_dir() and v.name.isdigit() and ((v / filename).is_file() or (v / MANIFEST_NAME).is_file())
    ]
    return sorted(found, key=lambda item: int(item[0]))


def open_package(folder: Path) -> ModelPackage:
    """The package at ``folder``: verified when it has a manifest, else a plain Triton version folder.

    Raises:
        PackageError: neither a torchport package nor a Triton ONNX Runtime version folder.
    """
    if (folder / MANIFEST_NAME).is_file():
        return ModelPackage.load(folder)
    filename = _model_filename(folder.parent)
    if filename is None or not (folder / filename).is_file():
        raise PackageError(
            f"{folder} is neither a torchport package nor a Triton onnxruntime_onnx version folder"
        )
    name = folder.parent.name
    manifest = Manifest(name=name, version=folder.name, variants={"fp32": Variant(file=filename)})
    log.info(
        "model %s version %s: plain Triton folder, signature from %s (no hashes to verify)",
        name,
        folder.name,
        filename,
    )
    package = ModelPackage(path=folder, manifest=manifest)
    package.check_contained()  # no hashes here: at least nothing may resolve outside the folder
    return package
