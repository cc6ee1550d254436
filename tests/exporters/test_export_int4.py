"""``torchport export FOLDER --int4``: a causal LM exported straight to a package with the int4 variant
(weight-only MatMulNBits), validated at export like ``--int8``; bad int4 options are refused before exporting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest

pytest.importorskip("transformers")

from tests.lm_models import save_causal_lm  # noqa: E402
from torchport.exporters import export_model  # noqa: E402
from torchport.runtimes import ModelPackage, Session, UsageError  # noqa: E402


def test_export_int4_writes_a_validated_matmulnbits_variant(tmp_path: Path) -> None:
    src = save_causal_lm("llama", tmp_path / "src")
    out = tmp_path / "pkg"
    cli = subprocess.run(
        [sys.executable, "-m", "torchport.cli", "export", str(src), "-o", str(out), "-q", "--int4",
         "--int4-block-size", "16"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    pkg = ModelPackage.load(out)
    variant = pkg.manifest.variants["int4"]
    assert variant.file == "model.int4.onnx" and variant.precision == "int4"
    assert variant.parity is not None and variant.parity["passed"], variant.parity
    assert pkg.manifest.validated and pkg.manifest.extra["optimization"]["int4"] is True
    nodes = onnx.load(str(out / "model.int4.onnx"), load_external_data=False).graph.node
    blocks = {a.i for n in nodes if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "block_size"}
    bits = {a.i for n in nodes if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"}
    assert blocks == {16} and bits == {4}
    got = Session.from_package(out, variant="int4").generate("hello", max_new_tokens=4, ignore_eos=True)
    assert len(got.tokens[0]) == 4
    # the Python API refuses int4 options without int4 before any export work, nothing written
    with pytest.raises(UsageError, match="--int4-asymmetric is only used with --int4"):
        export_model(str(src), tmp_path / "bad", int4_symmetric=False, quiet=True)
    assert not (tmp_path / "bad").exists()
