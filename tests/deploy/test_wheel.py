"""`torchport package`: reproducible model wheels that install without torch and predict like ONNX Runtime."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import venv
import zipfile

import numpy as np
import onnxruntime as ort
import pytest

from tests.deploy.conftest import make_external_data_package, make_two_variant_package, torchport
from tests.runtimes.conftest import corrupt, make_add_package
from torchport.deploy import Model, build_wheel
from torchport.runtimes import InferenceInputError, PackageError, UsageError


def test_wheel_layout_metadata_and_entry_points(add_pkg, tmp_path):
    result = build_wheel(add_pkg.path, tmp_path / "dist", version="1.2.0")
    assert result.path.name == "add-1.2.0-py3-none-any.whl"
    with zipfile.ZipFile(result.path) as zf:
        names = zf.namelist()
        meta = zf.read("add-1.2.0.dist-info/METADATA").decode()
        entry_points = zf.read("add-1.2.0.dist-info/entry_points.txt").decode()
        record = zf.read("add-1.2.0.dist-info/RECORD").decode()
        manifest = json.loads(zf.read("add/models/add/torchport.json"))
    assert names[-1] == "add-1.2.0.dist-info/RECORD"
    assert {"add/__init__.py", "add/models/add/model.onnx", "add/models/add/torchport.json"} <= set(names)
    assert (
        "Requires-Dist: torchport[serve]>=" in meta and 'extra == "cpu"' in meta and 'extra == "gpu"' in meta
    )
    assert "torch " not in meta and "torch>" not in meta and "Requires-Dist: torch\n" not in meta
    assert "add-serve = add:serve" in entry_points
    assert "[torchport.models]\nadd = add:package_path" in entry_points
    assert all(line.count(",") == 2 for line in record.strip().splitlines())
    assert manifest["files"]["model.onnx"]["sha256"] == add_pkg.manifest.files["model.onnx"].sha256


def test_same_package_gives_byte_identical_wheel_and_source_date_epoch_is_honoured(
    add_pkg, tmp_path, monkeypatch
):
    first = build_wheel(add_pkg.path, tmp_path / "a").path.read_bytes()
    second = build_wheel(add_pkg.path, tmp_path / "b").path.read_bytes()
    assert first == second
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    later = build_wheel(add_pkg.path, tmp_path / "c").path
    assert later.read_bytes() != first
    with zipfile.ZipFile(later) as zf:
        assert {info.date_time for info in zf.infolist()} == {(2023, 11, 14, 22, 13, 20)}


def test_external_data_is_packaged_and_loads(tmp_path):
    pkg = make_external_data_package(tmp_path / "big")
    wheel = build_wheel(pkg.path, tmp_path / "dist").path
    extracted = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(extracted)
    assert (extracted / "big/models/big/model.onnx.data").read_bytes() == (
        pkg.path / "model.onnx.data"
    ).read_bytes()
    model = Model.load(extracted / "big" / "models" / "big")
    x = np.ones((2, 16), np.float32)
    expected = ort.InferenceSession(str(pkg.path / "model.onnx")).run(None, {"x": x})[0]
    np.testing.assert_array_equal(model.predict(x=x)["y"], expected)


def test_variant_selection(tmp_path):
    pkg = make_two_variant_package(tmp_path / "duo")
    only_int8 = build_wheel(pkg.path, tmp_path / "d1", variant="int8").path
    names = zipfile.ZipFile(only_int8).namelist()
    assert "duo/models/duo/model.int8.onnx" in names and "duo/models/duo/model.onnx" not in names
    manifest = json.loads(zipfile.ZipFile(only_int8).read("duo/models/duo/torchport.json"))
    assert list(manifest["variants"]) == ["int8"] and "model.onnx" not in manifest["files"]
    both = zipfile.ZipFile(build_wheel(pkg.path, tmp_path / "d2", variant="all").path).namelist()
    assert {"duo/models/duo/model.int8.onnx", "duo/models/duo/model.onnx"} <= set(both)
    with pytest.raises(UsageError, match="no 'fp16' variant; it has: fp32, int8"):
        build_wheel(pkg.path, tmp_path / "d3", variant="fp16")


def test_model_predict_validates_like_the_server(add_pkg):
    model = Model.load(add_pkg.path)
    assert [s.name for s in model.signature.inputs] == ["x"]
    assert model.signature.dynamic_dims == {"batch": (1, 64)}
    with pytest.raises(InferenceInputError, match="input 'x' has dtype float64, expected float32"):
        model.predict(x=np.zeros((1, 4)))
    with pytest.raises(InferenceInputError, match="missing input 'x'"):
        model.predict()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "my-model"], "--name 'my-model' is not a valid Python module / distribution name"),
        (["--name", "class"], "--name 'class' is not a valid Python module"),
        (["--model-version", "1.0-beta"], "--model-version '1.0-beta' is not a PEP 440 version"),
        (["--variant", "fp8"], "--variant 'fp8' is not one of fp32, fp16, int8, int4, all"),
    ],
)
def test_bad_input_is_one_line_exit_1_nothing_written(add_pkg, tmp_path, args, message):
    out = tmp_path / "dist"
    proc = torchport("package", str(add_pkg.path), "-o", str(out), *args)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_model_version_names_the_wheel_and_old_version_spelling_still_works(add_pkg, tmp_path):
    proc = torchport("package", str(add_pkg.path), "-o", str(tmp_path / "a"), "--model-version", "1.2.0")
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["add-1.2.0-py3-none-any.whl"]
    for command in (["package"], ["deploy", "container"]):  # the old spelling is hidden
        text = torchport(*command, "--help", env={**os.environ, "COLUMNS": "200"}).stdout
        assert "--model-version" in text and not re.search(r"(?<![\w-])--version\b", text)
    proc = torchport("package", str(add_pkg.path), "-o", str(tmp_path / "b"), "--version", "2.0")
    assert (
        proc.returncode == 0 and "warning: --version is deprecated here; use --model-version" in proc.stderr
    )
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["add-2.0-py3-none-any.whl"]
    proc = torchport(
        "package", str(add_pkg.path), "-o", str(tmp_path / "c"), "--version", "2", "--model-version", "3"
    )
    assert proc.returncode == 1 and "--version 2 and --model-version 3 disagree" in proc.stderr


def test_tampered_or_missing_package_is_refused_and_nothing_written(tmp_path):
    pkg = make_add_package(tmp_path / "add")
    corrupt(pkg)
    proc = torchport("package", str(pkg.path), "-o", str(tmp_path / "dist"))
    assert proc.returncode == 1 and "does not match its sha256" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "dist").exists()
    with pytest.raises(PackageError, match="does not exist"):
        build_wheel(tmp_path / "nope", tmp_path / "dist")
    assert not (tmp_path / "dist").exists()


def test_existing_wheel_needs_force(add_pkg, tmp_path):
    build_wheel(add_pkg.path, tmp_path)
    with pytest.raises(UsageError, match="already exists; pass --force"):
        build_wheel(add_pkg.path, tmp_path)
    assert build_wheel(add_pkg.path, tmp_path, force=True).path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".whl") == ["add-1-py3-none-any.whl"]


@pytest.mark.slow
def test_wheel_installs_without_torch_predicts_and_serves(add_pkg, tmp_path, wheelhouse):
    wheel = build_wheel(add_pkg.path, tmp_path / "dist", name="adder", version="2.0.0").path
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    py = str(env_dir / "bin" / "python")
    # as a user installs it: pip resolves the wheel's requirements (torchport from the wheelhouse, as it
    # is not on the index; the rest from the index) with the cpu extra
    install = subprocess.run(
        [py, "-m", "pip", "install", "-q", "--find-links", str(wheelhouse), f"{wheel}[cpu]"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-2000:]
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np, adder\n"
        f"m = adder.load(provider='cpu')\nout = m.predict(x=np.load({str(tmp_path / 'x.npy')!r}))\n"
        f"np.savez({str(tmp_path / 'out.npz')!r}, **out)\n"
        "print(m.signature, 'torch' in sys.modules)\n"
    )
    run = subprocess.run([py, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("False")  # no torch imported (and none installed)
    assert subprocess.run([py, "-c", "import torch"], capture_output=True, cwd=tmp_path).returncode != 0
    got = np.load(tmp_path / "out.npz")
    expected = ort.InferenceSession(str(add_pkg.path / "model.onnx")).run(None, {"x": x})
    np.testing.assert_array_equal(got["y"], expected[0])
    np.testing.assert_array_equal(got["z"], expected[1])
    # the entry point: `torchport serve --installed adder` and the console script both serve it
    from tests.deploy.test_serve_installed import serve_and_infer

    for cmd in (
        [str(env_dir / "bin" / "torchport"), "serve", "--installed", "adder"],
        [str(env_dir / "bin" / "adder-serve")],
    ):
        status, body = serve_and_infer(cmd, "add", x, cwd=tmp_path)
        assert status == 200, body
        np.testing.assert_allclose(np.array(body["outputs"][0]["data"]).reshape(3, 3), expected[0], rtol=1e-6)
    # torchport installed from a wheel (no checkout): deploy repacks its installed files for an image
    rewheel = subprocess.run(
        [py, "-c", "from pathlib import Path; from torchport.deploy._wheelhouse import torchport_wheel; "
         "torchport_wheel(Path('rewheel'))"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert rewheel.returncode == 0, rewheel.stderr
    (original,) = wheelhouse.glob("torchport-*.whl")
    (repacked,) = (tmp_path / "rewheel").glob("torchport-*.whl")
    assert repacked.name == original.name
    assert set(zipfile.ZipFile(repacked).namelist()) == set(zipfile.ZipFile(original).namelist())
    missing = subprocess.run(
        [str(env_dir / "bin" / "torchport"), "serve", "--installed", "nosuch"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert (
        missing.returncode == 1 and "no installed model wheel 'nosuch' (installed: adder)" in missing.stderr
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))


@pytest.mark.slow
def test_a_model_over_2_gb_still_packages(tmp_path):
    """External data past the 2 GiB zip limit goes in as a ZIP64 entry, stored, with its hash in RECORD."""
    import hashlib

    from torchport.runtimes import Manifest, TensorSpec, Variant, write_package

    size = 2_200_000_000
    small = make_add_package(tmp_path / "small")
    with write_package(tmp_path / "huge") as wr:
        (wr.path / "model.onnx").write_bytes((small.path / "model.onnx").read_bytes())
        with open(wr.path / "model.onnx.data", "wb") as f:  # sparse: cheap on disk, real bytes to read
            f.seek(size - 1)
            f.write(b"\x01")
        manifest = Manifest(
            name="huge",
            inputs=[TensorSpec("x", "float32", ["batch", 4])],
            outputs=[TensorSpec("y", "float32", ["batch", 3]), TensorSpec("z", "float32", ["batch", 4])],
            variants={"fp32": Variant(file="model.onnx", data_files=["model.onnx.data"])},
        )
        pkg = wr.commit(manifest)
    wheel = build_wheel(pkg.path, tmp_path / "dist").path
    with zipfile.ZipFile(wheel) as zf:
        info = zf.getinfo("huge/models/huge/model.onnx.data")
        assert info.file_size == size and info.compress_type == zipfile.ZIP_STORED
        digest = hashlib.sha256()
        with zf.open(info) as entry:
            while chunk := entry.read(1 << 22):
                digest.update(chunk)
        record = zf.read("huge-1.dist-info/RECORD").decode()
    assert digest.hexdigest() == pkg.manifest.files["model.onnx.data"].sha256
    assert "huge/models/huge/model.onnx.data,sha256=" in record and f",{size}\n" in record


def test_outputs_honour_the_umask(add_pkg, tmp_path):
    import os

    from torchport.deploy import write_triton_repository

    old = os.umask(0o022)
    try:
        wheel = build_wheel(add_pkg.path, tmp_path / "dist").path
        write_triton_repository(add_pkg.path, tmp_path / "repo")
    finally:
        os.umask(old)
    assert wheel.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "repo").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "repo" / "add" / "config.pbtxt").stat().st_mode & 0o777 == 0o644
