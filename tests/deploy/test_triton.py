"""`torchport deploy triton`: the config parses as Triton's ModelConfig and `torchport serve` takes the repository."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient
import tritonclient.http as httpclient
from google.protobuf import text_format

from tests.deploy.conftest import make_external_data_package, torchport
from tests.runtimes.conftest import make_add_package, make_fixed_package, running_server
from torchport.deploy import write_triton_repository
from torchport.runtimes import UsageError


def model_config_module():
    """tritonclient's generated model_config_pb2 (loaded by path: its grpc package needs grpcio)."""
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_config(path: Path):
    pb = model_config_module()
    return text_format.Parse(path.read_text(), pb.ModelConfig()), pb


def test_config_parses_and_agrees_with_the_manifest(tmp_path):
    pkg = make_add_package(tmp_path / "add", max_batch=16)
    repo = write_triton_repository(pkg.path, tmp_path / "repo")
    config, pb = parse_config(tmp_path / "repo" / "add" / "config.pbtxt")
    assert config.name == "add" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16 == repo.max_batch_size
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert [(i.name, pb.DataType.Name(i.data_type), list(i.dims)) for i in config.input] == [
        ("x", "TYPE_FP32", [4])
    ]
    assert [(o.name, pb.DataType.Name(o.data_type), list(o.dims)) for o in config.output] == [
        ("y", "TYPE_FP32", [3]),
        ("z", "TYPE_FP32", [4]),
    ]
    assert [pb.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group] == ["KIND_CPU"]
    version_dir = tmp_path / "repo" / "add" / "1"
    assert (version_dir / "model.onnx").read_bytes() == (pkg.path / "model.onnx").read_bytes()


def test_no_batch_dim_means_max_batch_size_0_and_full_dims_gpu_instance(tmp_path):
    pkg = make_fixed_package(tmp_path / "fixed")
    write_triton_repository(pkg.path, tmp_path / "repo", gpu=True)
    config, pb = parse_config(tmp_path / "repo" / "fixed" / "config.pbtxt")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [2, 2]
    assert pb.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_GPU"


def test_external_data_travels_with_the_model(tmp_path):
    pkg = make_external_data_package(tmp_path / "big")
    write_triton_repository(pkg.path, tmp_path / "repo", max_batch_size=4)
    version_dir = tmp_path / "repo" / "big" / "1"
    assert (version_dir / "model.onnx.data").is_file()
    config, _ = parse_config(tmp_path / "repo" / "big" / "config.pbtxt")
    assert config.max_batch_size == 4
    x = np.ones((2, 16), np.float32)
    got = ort.InferenceSession(str(version_dir / "model.onnx")).run(None, {"x": x})[0]
    np.testing.assert_array_equal(
        got, ort.InferenceSession(str(pkg.path / "model.onnx")).run(None, {"x": x})[0]
    )


def test_torchport_serve_serves_the_triton_repository(tmp_path):
    pkg = make_add_package(tmp_path / "add")
    write_triton_repository(pkg.path, tmp_path / "repo")
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    expected = ort.InferenceSession(str(pkg.path / "model.onnx")).run(None, {"x": x})
    with running_server(tmp_path / "repo") as server:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
        assert client.is_model_ready("add", "1")
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        result = client.infer("add", [inp])
        np.testing.assert_array_equal(result.as_numpy("y"), expected[0])
        np.testing.assert_array_equal(result.as_numpy("z"), expected[1])


def test_bad_input_is_refused_and_nothing_written(tmp_path):
    pkg = make_add_package(tmp_path / "add")
    with pytest.raises(UsageError, match="no 'int8' variant; it has: fp32"):
        write_triton_repository(pkg.path, tmp_path / "repo", variant="int8")
    assert not (tmp_path / "repo").exists()
    (tmp_path / "taken").mkdir()
    proc = torchport("deploy", "triton", str(pkg.path), "-o", str(tmp_path / "taken"))
    assert (
        proc.returncode == 1
        and "'" + str(tmp_path / "taken") + "' already exists; pass --force" in proc.stderr
    )
    assert list((tmp_path / "taken").iterdir()) == []
    proc = torchport("deploy", "triton", str(tmp_path / "missing"), "-o", str(tmp_path / "r2"))
    assert proc.returncode == 1 and "does not exist" in proc.stderr and not (tmp_path / "r2").exists()
    assert len(proc.stderr.strip().splitlines()) == 1
    ok = torchport("deploy", "triton", str(pkg.path), "-o", str(tmp_path / "taken"), "--force")
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "taken" / "add" / "1" / "torchport.json").read_text())["name"] == "add"


def test_torchport_serve_serves_a_plain_triton_repository(tmp_path):
    """A Triton repository made without torchport (no torchport.json): signature from the ONNX file."""
    pkg = make_add_package(tmp_path / "add")
    write_triton_repository(pkg.path, tmp_path / "repo")
    for extra in ("torchport.json", "parity.json"):
        (tmp_path / "repo" / "add" / "1" / extra).unlink(missing_ok=True)
    other = tmp_path / "repo" / "scripted" / "1"
    other.mkdir(parents=True)
    (other.parent / "config.pbtxt").write_text('name: "scripted"\nplatform: "pytorch_libtorch"\n')
    (other / "model.pt").write_bytes(b"not served")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    expected = ort.InferenceSession(str(pkg.path / "model.onnx")).run(None, {"x": x})
    with running_server(tmp_path / "repo") as server:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
        assert client.is_model_ready("add")
        meta = client.get_model_metadata("add")
        assert [i["name"] for i in meta["inputs"]] == ["x"] and meta["inputs"][0]["shape"] == [-1, 4]
        for binary in (False, True):
            inp = httpclient.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            result = client.infer("add", [inp])
            np.testing.assert_array_equal(result.as_numpy("y"), expected[0])
        with pytest.raises(Exception, match="scripted"):
            client.get_model_metadata("scripted")


def test_every_manifest_dtype_is_a_triton_data_type():
    from torchport.deploy._triton import TRITON_DTYPES
    from torchport.runtimes import SUPPORTED_DTYPES

    pb = model_config_module()
    assert set(TRITON_DTYPES) == set(SUPPORTED_DTYPES)
    assert all(pb.DataType.Value(t) > 0 for t in TRITON_DTYPES.values())
