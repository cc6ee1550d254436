"""``optimize --int4``: weight-only 4-bit MatMulNBits variants of a tiny decoder, validated against fp32,
served with ``variant = "int4"`` over a real socket, carried by the wheel, and its bad options."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("transformers")

from tests.lm_models import exported_lm  # noqa: E402
from tests.runtimes.conftest import http, running_server  # noqa: E402
from torchport.exporters import optimize_package  # noqa: E402
from torchport.exporters._onnx_passes import output_head  # noqa: E402
from torchport.runtimes import Session, UsageError  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("int4")


def _package(root: Path, name: str) -> Path:
    """A fresh copy of the tiny exported llama (optimize rewrites the package in place)."""
    dest = root / name
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(exported_lm("llama", root, level="basic").path, dest)
    return dest


def _nbits(path: Path) -> list[onnx.NodeProto]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return [n for n in graph.node if n.op_type == "MatMulNBits"]


def _attrs(node: onnx.NodeProto) -> dict[str, int]:
    return {a.name: a.i for a in node.attribute}


@pytest.fixture(scope="module")
def int4_pkg(root: Path) -> Path:
    path = _package(root, "sym")
    result = optimize_package(path, level="none", int4=True)
    assert result, str(result)
    return path


def test_int4_writes_a_validated_matmulnbits_variant(int4_pkg: Path) -> None:
    from torchport.runtimes import ModelPackage

    pkg = ModelPackage.load(int4_pkg)
    variant = pkg.manifest.variants["int4"]
    assert variant.file == "model.int4.onnx" and variant.precision == "int4"
    assert variant.parity["passed"] and variant.parity["reference"] == "fp32"
    assert pkg.manifest.validated
    report = pkg.parity_report()["variants_vs_fp32"]["variants"]["int4"]
    logits = report["outputs"][0]
    assert logits["name"] == "logits" and logits["cosine"] >= 0.95 and logits["top1"] >= 0.75
    nodes = _nbits(int4_pkg / "model.int4.onnx")
    # q/k/v merged, o, gate/up merged, down per layer (2 layers) + the output head
    assert len(nodes) == 9
    assert all(_attrs(n)["bits"] == 4 and _attrs(n)["block_size"] == 32 for n in nodes)
    assert all(len(n.input) == 3 for n in nodes)  # symmetric: no zero points
    graph = onnx.load(str(int4_pkg / "model.int4.onnx"))
    inits = {i.name for i in graph.graph.initializer}
    float_linear = [n for n in graph.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    assert float_linear == []  # the head too: genai's recipe
    record = next(p for p in variant.passes if p["name"] == "int4")
    assert record["details"]["block_size"] == 32 and record["details"]["symmetric"] is True
    assert pkg.manifest.extra["optimization"]["int4"] == {
        "block_size": 32,
        "symmetric": True,
        "head": True,
        "embeddings": False,
    }


def test_inspect_shows_the_int4_variant(int4_pkg: Path) -> None:
    from torchport.runtimes import inspect_package

    summary = inspect_package(int4_pkg)
    int4 = next(v for v in summary.variants if v.name == "int4")
    assert int4.op_histogram.get("com.microsoft.MatMulNBits", int4.op_histogram.get("MatMulNBits")) == 9
    text = str(summary)
    assert "int4" in text and "model.int4.onnx" in text


def test_generate_with_int4_gives_tokens_close_to_fp32(int4_pkg: Path) -> None:
    rng = np.random.default_rng(0)
    prompts = [[1, *rng.integers(3, 96, 7).tolist()] for _ in range(4)]
    fp32 = Session.from_package(int4_pkg).generate(prompts, max_new_tokens=16, ignore_eos=True).tokens
    int4 = Session.from_package(int4_pkg, variant="int4").generate(
        prompts, max_new_tokens=16, ignore_eos=True
    )
    assert [len(t) for t in int4.tokens] == [16] * 4
    assert all(0 <= t < 96 for row in int4.tokens for t in row)
    # first tokens come from the same prompt logits (cosine >= 0.95): most agree
    assert np.mean([a[0] == b[0] for a, b in zip(fp32, int4.tokens, strict=True)]) >= 0.5


def test_asymmetric_block_16_float_head_and_quantized_embeddings(root: Path) -> None:
    path = _package(root, "asym")
    result = optimize_package(
        path,
        level="none",
        int4=True,
        int4_block_size=16,
        int4_symmetric=False,
        int4_head=False,
        int4_embeddings=True,
    )
    assert result, str(result)
    file = path / "model.int4.onnx"
    nodes = _nbits(file)
    assert nodes and all(_attrs(n)["block_size"] == 16 and len(n.input) == 4 for n in nodes)  # zero points
    model = onnx.load(str(file))
    head = output_head(model, "logits")
    assert head is not None and next(n for n in model.graph.node if n.name == head).op_type == "MatMul"
    gathers = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    assert len(gathers) == 1 and {a.name: a.i for a in gathers[0].attribute}["block_size"] == 16
    assert Session.from_package(path, variant="int4").generate([[1, 5, 9]], max_new_tokens=4).tokens[0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"int4": True, "int4_block_size": 48},
            r"--int4-block-size 48 is not one MatMulNBits takes; use one of: 16, 32",
        ),
        ({"int4": True, "int4_block_size": 8}, r"--int4-block-size 8 is not one"),
        ({"int4_block_size": 64}, r"^--int4-block-size is only used with --int4$"),
        (
            {"int4_symmetric": False, "int4_embeddings": True},
            r"--int4-asymmetric, --int4-embeddings is only used",
        ),
        ({"int4": True, "disable": ["int4"]}, r"--disable int4 switches off; drop one"),
    ],
)
def test_bad_int4_options_are_one_line_errors(int4_pkg: Path, kwargs: dict, message: str) -> None:
    before = sorted(p.name for p in int4_pkg.iterdir())
    with pytest.raises(UsageError, match=message) as info:
        optimize_package(int4_pkg, level="none", **kwargs)
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in int4_pkg.iterdir()) == before


def test_cli_int4_block_size_error(int4_pkg: Path) -> None:
    import subprocess
    import sys

    args = ["optimize", str(int4_pkg), "--level", "none", "--int4", "--int4-block-size", "20"]
    out = subprocess.run(
        [sys.executable, "-m", "torchport.cli", *args], capture_output=True, text=True, timeout=300
    )
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--int4-block-size 20 is not one MatMulNBits takes; use one of: 16" in lines[0]


def test_serving_variant_int4_over_a_socket(int4_pkg: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(int4_pkg, repo / "llama")
    (tmp_path / "serve.toml").write_text('[models.llama]\nvariant = "int4"\n')
    from torchport.runtimes.server import ServerConfig

    cfg = ServerConfig.from_toml(tmp_path / "serve.toml", port=0)
    assert cfg.model_settings("llama").variant == "int4"
    local = Session.from_package(int4_pkg, variant="int4").generate(
        "hello", max_new_tokens=6, ignore_eos=True
    )
    with running_server(repo, variant="int4") as srv:
        status, _, body = http(srv, "GET", "/v2/models/llama")
        assert status == 200 and json.loads(body)["parameters"]["variant"] == "int4"
        req = {"text_input": "hello", "max_tokens": 6, "ignore_eos": True}
        status, _, body = http(srv, "POST", "/v2/models/llama/generate", json.dumps(req).encode())
        assert status == 200, body
        assert json.loads(body)["text_output"] == local.text[0]


def test_the_wheel_carries_the_int4_variant(int4_pkg: Path, tmp_path: Path) -> None:
    from torchport.deploy import build_wheel

    for variant in ("int4", "all"):
        wheel = build_wheel(int4_pkg, tmp_path / variant, variant=variant)
        with zipfile.ZipFile(wheel.path) as zf:
            names = zf.namelist()
            model_dir = next(n for n in names if n.endswith("/model.int4.onnx")).rsplit("/", 1)[0]
            manifest = json.loads(zf.read(f"{model_dir}/torchport.json"))
        assert "int4" in wheel.variants and "int4" in manifest["variants"]
        if variant == "int4":
            assert not any(n.endswith("/model.onnx") for n in names) or "fp32" in manifest["variants"]
