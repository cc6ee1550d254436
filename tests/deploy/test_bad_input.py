"""Bad input to every deploy command: one line `error: ...`, exit 1, nothing written."""

from __future__ import annotations

import os
import zipfile

import pytest

from tests.deploy.conftest import torchport
from tests.runtimes.conftest import corrupt, make_add_package
from torchport.deploy import Model, build_wheel
from torchport.runtimes import PackageError

COMMANDS = {
    "package": ["package"],
    "container": ["deploy", "container"],
    "k8s": ["deploy", "k8s", "--image", "add:1"],
    "kserve": ["deploy", "kserve", "--image", "add:1"],
    "triton": ["deploy", "triton"],
}


def run(kind: str, pkg, out, *extra: str, env: dict | None = None):
    cmd = COMMANDS[kind]
    return torchport(
        *cmd[:2] if kind != "package" else cmd[:1], str(pkg), *cmd[2:], "-o", str(out), *extra, env=env
    )


def assert_one_line_error(proc, message: str) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", list(COMMANDS))
def test_missing_package(kind, tmp_path):
    proc = run(kind, tmp_path / "nope", tmp_path / "out")
    assert_one_line_error(proc, "does not exist")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", list(COMMANDS))
def test_tampered_package(kind, tmp_path):
    pkg = make_add_package(tmp_path / "add")
    corrupt(pkg)
    proc = run(kind, pkg.path, tmp_path / "out")
    assert_one_line_error(proc, "'model.onnx' does not match its sha256")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["add"]


@pytest.mark.parametrize("kind", [k for k in COMMANDS if k != "package"])
def test_existing_output_needs_force(kind, tmp_path):
    pkg = make_add_package(tmp_path / "add")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    proc = run(kind, pkg.path, tmp_path / "out")
    assert_one_line_error(proc, "already exists; pass --force")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_container_context_without_wheels_to_get_leaves_nothing(tmp_path):
    """pip cannot reach an index (PIP_NO_INDEX, no find-links): one line, no half-written context."""
    pkg = make_add_package(tmp_path / "add")
    env = {
        **os.environ,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(tmp_path / "empty"),
        "PIP_CONFIG_FILE": os.devnull,
    }
    (tmp_path / "empty").mkdir()
    proc = run("container", pkg.path, tmp_path / "ctx", env=env)
    assert_one_line_error(proc, "cannot download")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["add", "empty"]


def test_a_tampered_installed_wheel_is_refused_on_load(tmp_path):
    pkg = make_add_package(tmp_path / "add")
    site = tmp_path / "site"
    zipfile.ZipFile(build_wheel(pkg.path, tmp_path / "dist").path).extractall(site)
    model_file = site / "add" / "models" / "add" / "model.onnx"
    model_file.write_bytes(model_file.read_bytes()[:-1] + b"\x00")
    with pytest.raises(PackageError, match="'model.onnx' does not match its sha256"):
        Model.load(site / "add" / "models" / "add")
