"""Hostile or broken model packages: malformed manifests, files outside the package, permissions.

A package may come from anyone. Its manifest is checked against the schema (one line naming the
field, never a traceback, in load, ``torchport inspect`` and the server); a file that resolves
outside the package is refused; errors served over HTTP name package-relative files only; and
package folders honour the umask.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.runtimes.conftest import http, make_add_package, running_server
from torchport.cli import main
from torchport.runtimes import MANIFEST_NAME, ModelPackage, PackageError, Session, sha256_file, write_package


@pytest.fixture
def package(tmp_path: Path) -> ModelPackage:
    return make_add_package(tmp_path / "pkg")


def _edit_manifest(pkg: ModelPackage, edit: Callable[[dict[str, Any]], None]) -> None:
    path = pkg.path / MANIFEST_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit setting ``a.b.0.c`` (dots; integers index arrays) to ``value``."""

    def edit(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value

    return edit


def _assert_inspect_fails(path: Path, capsys: pytest.CaptureFixture[str], pattern: str) -> None:
    """`torchport inspect PATH` as the console script runs it: one `error:` line, exit 1, no traceback."""
    import re

    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["inspect", str(path)])
    err = capsys.readouterr().err
    assert info.value.code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]


# --------------------------------------------------------------------------- malformed manifests

FIELD_CASES = [
    ("schema_version", True, r"torchport\.json: schema_version must be an integer >= 1, got true"),
    ("schema_version", "1", r"schema_version must be an integer >= 1, got the string '1'"),
    ("validated", "no", r"torchport\.json: validated must be true or false, got the string 'no'"),
    ("name", 5, r"torchport\.json: name must be a non-empty string .*got the integer 5"),
    ("version", [1], r"torchport\.json: version must be a non-empty string .*got an array"),
    ("inputs", {}, r"torchport\.json: inputs must be an array, got an object"),
    ("inputs.0", "x", r"torchport\.json: inputs\[0\] must be an object, got the string 'x'"),
    (
        "inputs.0.dtype",
        "complex128",
        r"inputs\[0\]\.dtype must be one of .*float32.*got the string 'complex128'",
    ),
    (
        "inputs.0.shape.1",
        -3,
        r"inputs\[0\]\.shape\[1\] must be an integer >= 0, a dim name or null, got the integer -3",
    ),
    ("inputs.0.shape", "batch,4", r"inputs\[0\]\.shape must be an array, got the string 'batch,4'"),
    ("outputs.0.value_range", [1], r"outputs\[0\]\.value_range must be \[low, high\], got an array"),
    ("dynamic_dims.batch.min", "1", r"dynamic_dims\.batch\.min must be an integer >= 0, got the string '1'"),
    ("dynamic_dims.batch", [1, 4], r"dynamic_dims\.batch must be an object, got an array"),
    ("files.model\\.onnx", None, None),  # placeholder replaced below (dotted key)
    ("variants.fp32", "model.onnx", r"variants\.fp32 must be an object, got the string 'model\.onnx'"),
    ("variants.fp32.data_files", "x", r"variants\.fp32\.data_files must be an array, got the string 'x'"),
    ("parity", [], r"torchport\.json: parity must be an object, got an array"),
    ("producer", "torch", r"torchport\.json: producer must be an object, got the string 'torch'"),
    ("passes", [1], r"torchport\.json: passes\[0\] must be an object, got the integer 1"),
]
FIELD_CASES = [c for c in FIELD_CASES if c[2] is not None]


def _files_edit(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data["files"]["model.onnx"][key] = value

    return edit


EDITS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        f"{path}={value!r}",
        _set(path, value),
        pattern if pattern.startswith("torchport") else rf"torchport\.json: {pattern}",
    )
    for path, value, pattern in FIELD_CASES
] + [
    (
        "files.size=-1",
        _files_edit("size", -1),
        r"torchport\.json: files\['model\.onnx'\]\.size must be an integer >= 0, got the integer -1",
    ),
    (
        "files.sha256=zz",
        _files_edit("sha256", "zz"),
        r"torchport\.json: files\['model\.onnx'\]\.sha256 must be 64 lowercase hex digits, got the string 'zz'",
    ),
    (
        "extra.text.problem_type=multi",
        lambda d: d.setdefault("extra", {}).update(text={"problem_type": "multi"}),
        r"torchport\.json: extra\.text\.problem_type must be one of single_label_classification, "
        r"multi_label_classification, regression or null, got the string 'multi'",
    ),
    (
        "extra.text=[]",
        lambda d: d.setdefault("extra", {}).update(text=[]),
        r"torchport\.json: extra\.text must be an object, got an array",
    ),
    ("no name", lambda d: d.pop("name"), r"torchport\.json: name is missing"),
    ("no schema_version", lambda d: d.pop("schema_version"), r"torchport\.json has no schema_version"),
]


@pytest.mark.parametrize(("edit", "pattern"), [(e, p) for _, e, p in EDITS], ids=[i for i, _, _ in EDITS])
def test_malformed_field_is_one_line_naming_it(
    package: ModelPackage, edit, pattern: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _edit_manifest(package, edit)
    with pytest.raises(PackageError, match=rf"^package .*pkg: {pattern}") as info:
        ModelPackage.load(package.path)
    assert "\n" not in str(info.value)
    _assert_inspect_fails(package.path, capsys, pattern)


DOCUMENTS = [
    ("array", b"[1,2,3]", r"torchport\.json must hold a JSON object, got an array"),
    ("null", b"null", r"torchport\.json must hold a JSON object, got null"),
    ("number", b"42", r"torchport\.json must hold a JSON object, got the integer 42"),
    ("deep-array", b"[" * 100_000 + b"]" * 100_000, r"torchport\.json nests deeper than 64 levels"),
    ("deep-object", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, r"torchport\.json nests deeper than 64 levels"),
    (
        "deep-in-extra",
        b'{"schema_version": 1, "name": "x", "extra": ' + b"[" * 900 + b"]" * 900 + b"}",
        r"torchport\.json nests deeper than 64 levels",
    ),
    (
        "not-utf8",
        b'{"schema_version": 1, "name": "\xff\xfe"}',
        r"torchport\.json is not UTF-8 text: byte 0xff at offset 31",
    ),
    ("not-json", b'{"schema_version": 1,', r"torchport\.json is not valid JSON: Expecting property name"),
    ("empty", b"", r"torchport\.json is not valid JSON: Expecting value at line 1 column 1"),
]


@pytest.mark.parametrize(
    ("raw", "pattern"), [(r, p) for _, r, p in DOCUMENTS], ids=[i for i, _, _ in DOCUMENTS]
)
def test_malformed_document_is_one_line(
    package: ModelPackage, raw: bytes, pattern: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (package.path / MANIFEST_NAME).write_bytes(raw)
    with pytest.raises(PackageError, match=pattern):
        ModelPackage.load(package.path)
    _assert_inspect_fails(package.path, capsys, pattern)


def test_server_serves_the_good_model_next_to_broken_manifests(tmp_path: Path) -> None:
    """Before: json.loads' RecursionError (deep nesting) escaped at start-up and no model was served."""

    root = tmp_path / "repo"
    make_add_package(root / "add")
    for name, raw, _ in DOCUMENTS:
        folder = root / name
        folder.mkdir()
        shutil.copy(root / "add" / "model.onnx", folder / "model.onnx")
        (folder / MANIFEST_NAME).write_bytes(raw)
    with running_server(root) as server:
        status, _, body = http(server, "POST", "/v2/repository/index")
        assert status == 200
        index = {item["name"]: item for item in json.loads(body)}
        assert index["add"]["state"] == "READY"
        for name, _, pattern in DOCUMENTS:
            item = index[name]
            assert item["state"] == "UNAVAILABLE", item
            assert "\n" not in item["reason"] and str(tmp_path) not in item["reason"], item
            import re

            assert re.search(
                rf"model '{name}' \(version 1\) failed to load: package {name}/1: {pattern}", item["reason"]
            )
        request = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
        status, _, body = http(server, "POST", "/v2/models/add/infer", json.dumps(request).encode())
        assert status == 200, body
        z = next(o for o in json.loads(body)["outputs"] if o["name"] == "z")
        np.testing.assert_allclose(z["data"], [2, 3, 4, 5])
        status, _, body = http(server, "GET", "/v2/models/array/ready")
        assert status == 503 and json.loads(body)["ready"] is False
        status, _, body = http(server, "POST", "/v2/models/array/infer", json.dumps(request).encode())
        assert status == 503 and b"torchport.json must hold a JSON object, got an array" in body


# --------------------------------------------------------------------------- files outside the package


def _outside_variant(pkg: ModelPackage, tmp_path: Path, how: str) -> str:
    """Point the fp32 variant at a valid ONNX file outside the package (listed with its true hash)."""
    outside = tmp_path / "outside.onnx"
    shutil.copy(pkg.path / "model.onnx", outside)
    if how == "dotdot":
        name = "../outside.onnx"
    elif how == "absolute":
        name = str(outside)
    else:
        raise AssertionError(how)
    record = {"sha256": sha256_file(outside), "size": outside.stat().st_size}
    _edit_manifest(
        pkg, lambda d: (d["files"].__setitem__(name, record), d["variants"]["fp32"].__setitem__("file", name))
    )
    return name


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_variant_path_outside_the_package_is_refused(
    package: ModelPackage, tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: the outside file was loaded and served."""
    name = _outside_variant(package, tmp_path, how)
    with pytest.raises(PackageError, match=r"torchport\.json: files key .* is not a file inside the package"):
        Session.from_package(package.path)
    _assert_inspect_fails(package.path, capsys, r"is not a file inside the package \(file names are relative")
    _edit_manifest(package, lambda d: d["files"].pop(name))
    with pytest.raises(PackageError, match=r"variants\.fp32\.file .* is not a file inside the package"):
        ModelPackage.load(package.path)


@pytest.mark.parametrize("what", ["model.onnx", "folder"])
def test_symlink_out_of_the_package_is_refused(
    package: ModelPackage, tmp_path: Path, what: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """model.onnx symlinked to an identical file outside (hash matches): before, it was served."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    if what == "model.onnx":
        shutil.copy(package.path / "model.onnx", outside / "model.onnx")
        (package.path / "model.onnx").unlink()
        (package.path / "model.onnx").symlink_to(outside / "model.onnx")
    else:
        (package.path / "weights").symlink_to(outside, target_is_directory=True)
    with pytest.raises(
        PackageError,
        match=rf"'{'model.onnx' if what == 'model.onnx' else 'weights'}' resolves outside the package",
    ):
        Session.from_package(package.path)
    _assert_inspect_fails(package.path, capsys, r"resolves outside the package")


def test_symlinked_package_folder_still_loads(package: ModelPackage, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(package.path, target_is_directory=True)
    assert Session.from_package(link).run({"x": np.ones((1, 4), np.float32)})


def test_index_reveals_no_outside_file_size_or_absolute_path(tmp_path: Path) -> None:
    """Before: 'file '/…/secret.bin' is 12345 bytes, manifest says 1' was served by the index."""
    root = tmp_path / "repo"
    make_add_package(root / "add")
    pkg = make_add_package(root / "leak")
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"s" * 12345)
    _edit_manifest(
        pkg,
        _set(
            "files",
            {
                **json.loads((pkg.path / MANIFEST_NAME).read_text())["files"],
                str(secret): {"sha256": "0" * 64, "size": 1},
            },
        ),
    )
    with running_server(root) as server:
        status, _, body = http(server, "POST", "/v2/repository/index")
        text = body.decode()
        assert status == 200 and '"name":"add","version":"1","state":"READY"' in text.replace(" ", "")
        leak = next(item for item in json.loads(body) if item["name"] == "leak")
        assert leak["state"] == "UNAVAILABLE"
        assert "12345" not in text and str(tmp_path) not in text
        assert leak["reason"] == (
            "model 'leak' (version 1) failed to load: package leak/1: torchport.json: files key an absolute "
            "path ending in 'secret.bin' is not a file inside the package (file names are relative, without '..')"
        )
        status, _, body = http(server, "POST", "/v2/models/leak/infer", b"{}")
        assert status == 503 and b"12345" not in body and str(root).encode() not in body


def test_load_error_served_over_http_names_package_relative_files(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    pkg = make_add_package(root / "add")
    data = bytearray((pkg.path / "model.onnx").read_bytes())
    (pkg.path / "model.onnx").write_bytes(bytes(data[:-1]))
    with running_server(root) as server:
        _, _, body = http(server, "POST", "/v2/repository/index")
    reason = json.loads(body)[0]["reason"]
    assert reason.startswith("model 'add' (version 1) failed to load: package add/1: file 'model.onnx' is ")
    assert str(tmp_path) not in reason


# --------------------------------------------------------------------------- permissions


@pytest.mark.parametrize(
    ("umask", "folder_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)]
)
def test_package_folder_honours_the_umask(
    tmp_path: Path, umask: int, folder_mode: int, file_mode: int
) -> None:
    """Before: the folder was always 0700 (a mkdtemp folder renamed into place)."""
    old = os.umask(umask)
    try:
        pkg = make_add_package(tmp_path / "pkg")
        with write_package(tmp_path / "pkg", overwrite=True) as w:  # rewriting keeps honouring it
            shutil.copy(pkg.path / "model.onnx", w.path / "model.onnx")
            w.commit(pkg.manifest)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "pkg").stat().st_mode) == folder_mode
    for file in (tmp_path / "pkg").iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == file_mode, file


def test_plain_triton_version_folder_with_model_symlinked_out_is_refused(tmp_path: Path) -> None:
    """A Triton repository (no torchport.json) gets the same containment check."""
    from torchport.runtimes.server._triton_layout import open_package

    pkg = make_add_package(tmp_path / "built")
    version = tmp_path / "triton" / "add" / "1"
    version.mkdir(parents=True)
    (version.parent / "config.pbtxt").write_text('name: "add"\nplatform: "onnxruntime_onnx"\n')
    shutil.copy(pkg.path / "model.onnx", version / "model.onnx")
    assert Session.from_package(open_package(version)).run({"x": np.ones((1, 4), np.float32)})
    (version / "model.onnx").unlink()
    (version / "model.onnx").symlink_to(pkg.path / "model.onnx")
    with pytest.raises(PackageError, match=r"'model\.onnx' resolves outside the package"):
        Session.from_package(open_package(version))
