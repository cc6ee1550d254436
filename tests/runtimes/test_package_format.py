"""The model package format: manifest round trip, hash verification, atomic writes, schema versions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from torchport.runtimes import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    DimRange,
    Manifest,
    ModelPackage,
    PackageError,
    TensorSpec,
    dim_sample_points,
    inspect_package,
    random_inputs,
    update_package,
    write_package,
)


def _tiny_onnx(path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Neg", ["h"], ["y"])], "g", [x], [y]
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def _manifest() -> Manifest:
    return Manifest(
        name="tiny",
        version="3",
        inputs=[TensorSpec("x", "float32", ["batch", 4])],
        outputs=[TensorSpec("y", "float32", ["batch", 4])],
        dynamic_dims={"batch": DimRange(1, 8)},
        producer={"torchport": "0.1.0", "opset": 18},
        source={"kind": "test", "reference": "tests", "sha256": None},
    )


@pytest.fixture
def package(tmp_path: Path) -> ModelPackage:
    with write_package(tmp_path / "pkg") as w:
        _tiny_onnx(w.path / "model.onnx")
        return w.commit(_manifest(), parity={"passed": True})


def test_round_trip_keeps_every_field(package: ModelPackage) -> None:
    loaded = ModelPackage.load(package.path)
    m = loaded.manifest
    assert m.name == "tiny" and m.version == "3" and m.schema_version == SCHEMA_VERSION
    assert m.inputs[0].shape == ["batch", 4] and m.dynamic_dims["batch"] == DimRange(1, 8)
    assert set(m.files) == {"model.onnx", "parity.json"}
    assert m.files["model.onnx"].size == (package.path / "model.onnx").stat().st_size
    assert loaded.parity_report() == {"passed": True}
    assert json.loads((package.path / MANIFEST_NAME).read_text())["schema_version"] == SCHEMA_VERSION


def test_tampered_file_is_refused_naming_the_file(package: ModelPackage) -> None:
    data = bytearray((package.path / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (package.path / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"'model.onnx' does not match its sha256"):
        ModelPackage.load(package.path)


def test_truncated_file_is_refused_naming_the_file(package: ModelPackage) -> None:
    path = package.path / "model.onnx"
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(PackageError, match=r"'model.onnx' is 10 bytes.*truncated"):
        ModelPackage.load(package.path)


def test_missing_file_and_missing_manifest(package: ModelPackage, tmp_path: Path) -> None:
    (package.path / "parity.json").unlink()
    with pytest.raises(PackageError, match=r"'parity.json' listed in torchport.json is missing"):
        ModelPackage.load(package.path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackageError, match="not a torchport package: torchport.json is missing"):
        ModelPackage.load(tmp_path / "empty")
    with pytest.raises(PackageError, match="does not exist"):
        ModelPackage.load(tmp_path / "nowhere")


def test_newer_schema_is_refused_older_is_read(package: ModelPackage) -> None:
    path = package.path / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(data))
    with pytest.raises(PackageError, match="newer than this torchport reads"):
        ModelPackage.load(package.path)
    data["schema_version"] = 1
    del data["extra"], data["passes"]  # fields a schema-1 writer may omit
    path.write_text(json.dumps(data))
    assert ModelPackage.load(package.path).manifest.passes == []


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with write_package(tmp_path / "pkg") as w:
            _tiny_onnx(w.path / "model.onnx")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_destination_needs_overwrite(package: ModelPackage) -> None:
    with pytest.raises(PackageError, match="already exists; pass --force"):
        with write_package(package.path):
            pass


def test_update_swaps_atomically_and_rehashes(package: ModelPackage) -> None:
    with update_package(package) as w:
        (w.path / "notes.txt").write_text("hello")
        m = package.manifest.replace(version="4")
        w.commit(m)
    loaded = ModelPackage.load(package.path)
    assert loaded.manifest.version == "4" and "notes.txt" in loaded.manifest.files
    assert [p.name for p in package.path.parent.iterdir()] == ["pkg"]


def test_missing_variant_is_named(package: ModelPackage) -> None:
    with pytest.raises(PackageError, match="no variant 'int8'; available: fp32"):
        package.model_path("int8")


def test_inspect_reports_signature_ops_and_files(package: ModelPackage) -> None:
    summary = inspect_package(package.path)
    assert summary.variants[0].op_histogram == {"Relu": 1, "Neg": 1}
    text = str(summary)
    assert "Inputs\n  x:float32[batch,4]\nOutputs\n" in text
    assert "batch    1    8" in text and "model.onnx" in text and "ai.onnx 18" in text


def test_random_inputs_follow_the_signature() -> None:
    specs = [
        TensorSpec("ids", "int64", ["batch", "seq"], value_range=(0, 99)),
        TensorSpec("m", "bool", ["batch", "seq"]),
    ]
    points = dim_sample_points({"batch": DimRange(1, 4), "seq": DimRange(2, 16)}, 6, rng=0)
    assert points[0] == {"batch": 1, "seq": 2} and points[1] == {"batch": 4, "seq": 16}
    for p in points:
        arrays = random_inputs(specs, p, rng=1)
        assert arrays["ids"].shape == (p["batch"], p["seq"]) and arrays["ids"].dtype == np.int64
        assert arrays["ids"].min() >= 0 and arrays["ids"].max() <= 99 and arrays["m"].dtype == bool
