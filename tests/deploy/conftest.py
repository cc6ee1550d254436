"""Fixtures for deploy tests: tiny model packages (built with onnx.helper, no torch) and CLI runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tests.runtimes.conftest import make_add_package, save_package
from torchport.runtimes import DimRange, ModelPackage, TensorSpec, Variant, write_package
from torchport.runtimes._manifest import Manifest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def add_pkg(tmp_path: Path) -> ModelPackage:
    return make_add_package(tmp_path / "add")


def make_external_data_package(dest: Path, name: str = "big") -> ModelPackage:
    """y = x @ W with W (16x8 float32) stored as external data in model.onnx.data."""
    w = np.arange(16 * 8, dtype=np.float32).reshape(16, 8) / 100
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        name,
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 8])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    manifest = Manifest(
        name=name,
        inputs=[TensorSpec("x", "float32", ["batch", 16])],
        outputs=[TensorSpec("y", "float32", ["batch", 8])],
        dynamic_dims={"batch": DimRange(1, 8)},
        variants={"fp32": Variant(file="model.onnx", data_files=["model.onnx.data"])},
    )
    with write_package(dest) as wr:
        onnx.save(
            model,
            wr.path / "model.onnx",
            save_as_external_data=True,
            location="model.onnx.data",
            size_threshold=0,
        )
        return wr.commit(manifest)


def make_two_variant_package(dest: Path, name: str = "duo") -> ModelPackage:
    """The add model as fp32 (model.onnx) plus a second 'int8' variant file (same graph, for packaging)."""
    pkg = make_add_package(dest, name=name)
    from torchport.runtimes import update_package

    with update_package(pkg) as wr:
        (wr.path / "model.int8.onnx").write_bytes((pkg.path / "model.onnx").read_bytes())
        manifest = pkg.manifest.replace(
            variants={**pkg.manifest.variants, "int8": Variant(file="model.int8.onnx", precision="int8")}
        )
        return wr.commit(manifest)


__all__ = ["make_add_package", "save_package"]


def torchport(
    *args: str, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (exit code, one-line errors)."""
    return subprocess.run(
        [sys.executable, "-m", "torchport.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


BASE_IMAGE = "localhost/torchport-base:bookworm"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory) -> Path:
    """Every wheel a serving image installs (pip's cache keeps repeat runs quick)."""
    from torchport.deploy._wheelhouse import build_wheelhouse

    dest = tmp_path_factory.mktemp("wheelhouse")
    build_wheelhouse(dest, python_version=f"{sys.version_info.major}.{sys.version_info.minor}")
    return dest


@pytest.fixture(scope="session")
def base_image() -> str:
    """The local Debian bookworm base image, built once per machine by scripts/base_image.sh."""
    import shutil

    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (scripts/setup.sh installs it)")
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "base_image.sh"), BASE_IMAGE], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return BASE_IMAGE
