"""export_model failures: each names its stage, the op and the user's line, says what to try, and
leaves nothing at the destination. Also forced strategies and the retry record."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from torchport.exporters import STRATEGIES, export_model
from torchport.exporters._progress import Progress
from torchport.runtimes import ExportError, LoadError, ModelPackage, PackageError, UsageError, ValidationError

BRANCHY = """
    import torch
    from torch import nn

    class Branchy(nn.Module):
        def forward(self, x):
            y = x * 3
            if y.sum() > 0:
                return y * 2
            return y - 1

    def make_model():
        return Branchy()

    def example_inputs():
        return (torch.randn(3, 4),)

    DYNAMIC_DIMS = {"x": {0: ("batch", 1, 16)}}
"""

CUSTOM_OP = """
    import torch
    from torch import nn

    @torch.library.custom_op("tptest_errors::wobble", mutates_args=())
    def wobble(x: torch.Tensor) -> torch.Tensor:
        return x.sin() * 2

    @wobble.register_fake
    def _(x):
        return torch.empty_like(x)

    class Wobbly(nn.Module):
        def forward(self, x):
            return wobble(x) + 1

    def make_model():
        return Wobbly()

    def example_inputs():
        return (torch.randn(3, 4),)

    DYNAMIC_DIMS = {"x": {0: ("batch", 1, 16)}}
"""

EAGER_RAISES = """
    import torch
    from torch import nn

    class Bad(nn.Module):
        def forward(self, x):
            return x @ torch.ones(5, 2)

    def make_model():
        return Bad()

    def example_inputs():
        return (torch.randn(3, 4),)
"""


def _write(folder: Path, name: str, code: str) -> str:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(code))
    return f"{path}:make_model"


def _assert_nothing_left(out: Path) -> None:
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert leftovers == [], leftovers


def test_data_dependent_control_flow(tmp_path: Path) -> None:
    source = _write(tmp_path, "branchy", BRANCHY)
    out = tmp_path / "out"
    lines: list[str] = []

    class Capture:
        def write(self, s: str) -> None:
            lines.extend(s.splitlines())

        def flush(self) -> None:
            pass

    with pytest.raises(ExportError) as info:
        export_model(source, out, progress=Progress(stream=Capture()))
    err = info.value
    text = str(err)
    assert err.stage == "capture"
    assert f"at {tmp_path / 'branchy.py'}:8 in forward" in text
    assert "if y.sum() > 0:" in text
    assert "torch.cond(y.sum() > 0, true_fn, false_fn, (x,))" in text
    # every attempt is reported: the retry lines and the attempt list in the message
    assert any(line.startswith("↻ dynamo-nonstrict failed in capture") for line in lines)
    assert any(line.startswith("↻ skip torchscript: the model branches on tensor values") for line in lines)
    assert "  - dynamo-strict: capture failed" in text
    assert [a.strategy for a in err.attempts] == list(STRATEGIES)
    _assert_nothing_left(out)


def test_forced_torchscript_on_branchy_model(tmp_path: Path) -> None:
    """--strategy forces a strategy the automatic order skips; the tracer's warnings are recorded, and
    the parity gate (on by default) refuses the traced model, which kept only one branch."""
    source = _write(tmp_path, "branchy", BRANCHY)
    out = tmp_path / "out"
    with pytest.raises(ValidationError, match="does not match eager PyTorch"):
        export_model(source, out, strategy="torchscript", quiet=True)
    _assert_nothing_left(out)
    result = export_model(source, out, strategy="torchscript", quiet=True, validate=False)
    assert result.strategy == "torchscript" and not result.manifest.validated
    attempt = result.manifest.export["attempts"][0]
    assert attempt["ok"] and any("trace" in w.lower() for w in attempt["warnings"])


def test_unsupported_op_names_op_and_line(tmp_path: Path) -> None:
    source = _write(tmp_path, "customop", CUSTOM_OP)
    out = tmp_path / "out"
    with pytest.raises(ExportError) as info:
        export_model(source, out, quiet=True)
    err = info.value
    assert err.stage == "ONNX translation"
    text = str(err)
    assert "no ONNX translation for tptest_errors.wobble.default" in text
    assert f"at {tmp_path / 'customop.py'}:15 in forward" in text and "return wobble(x) + 1" in text
    assert "custom_translation_table" in text
    tried = {a.strategy: a for a in err.attempts}
    assert tried["dynamo-strict"].skipped and tried["dynamo-decomp-workaround"].skipped
    assert tried["torchscript"].stage == "ONNX translation"
    _assert_nothing_left(out)


def test_model_raising_in_eager(tmp_path: Path) -> None:
    source = _write(tmp_path, "bad", EAGER_RAISES)
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=r"mat1 and mat2 shapes cannot be multiplied") as info:
        export_model(source, out, quiet=True)
    assert info.value.stage == "capture"
    assert "return x @ torch.ones(5, 2)" in str(info.value)
    assert "fails in eager PyTorch" in str(info.value)
    _assert_nothing_left(out)


def test_load_and_usage_errors_leave_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(LoadError, match="model file not found"):
        export_model(f"{tmp_path / 'missing.py'}:make_model", out, quiet=True)
    _assert_nothing_left(out)
    with pytest.raises(UsageError, match="unknown --strategy 'fastest'; use one of: dynamo-nonstrict"):
        export_model("torchport.exporters.examples.mlp:make_model", out, strategy="fastest", quiet=True)
    _assert_nothing_left(out)
    with pytest.raises(UsageError, match="--dim"):
        export_model("torchport.exporters.examples.mlp:make_model", out, dims=["batch=9..2"], quiet=True)
    _assert_nothing_left(out)


def test_save_failure_is_atomic(tmp_path: Path) -> None:
    """A failure after model.onnx was written (here: in the before-commit hook) removes everything."""
    out = tmp_path / "out"
    seen = {}

    def fail(ctx):
        seen["path"] = ctx.model_path
        assert ctx.model_path.exists()
        raise PackageError("disk full (simulated by the hook)")

    with pytest.raises(PackageError, match="disk full"):
        export_model("torchport.exporters.examples.mlp:make_model", out, quiet=True, before_commit=fail)
    assert not seen["path"].exists()
    _assert_nothing_left(out)


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_model("torchport.exporters.examples.mlp:make_model", out, quiet=True)
    with pytest.raises(PackageError, match="already exists; pass --force"):
        export_model("torchport.exporters.examples.mlp:make_model", out, quiet=True)
    result = export_model(
        "torchport.exporters.examples.mlp:make_model", out, quiet=True, overwrite=True, version="2"
    )
    assert ModelPackage.load(out).manifest.version == "2" == result.manifest.version


def _run(pkg: ModelPackage, batch: int) -> tuple[np.ndarray, np.ndarray]:
    from torchport.exporters.examples.mlp import make_model

    x = np.random.default_rng(batch).standard_normal((batch, 16)).astype(np.float32)
    (got,) = ort.InferenceSession(str(pkg.model_path())).run(None, {"input": x})
    with torch.no_grad():
        ref = make_model()(torch.from_numpy(x)).numpy()
    return got, ref


@pytest.mark.parametrize("strategy", ["dynamo-strict", "dynamo-decomp-workaround", "torchscript"])
def test_forced_strategy(strategy: str, tmp_path: Path) -> None:
    result = export_model(
        "torchport.exporters.examples.mlp:make_model",
        tmp_path / "out",
        strategy=strategy,
        quiet=True,
        opset=17,
    )
    m = result.manifest
    assert result.strategy == m.export["strategy"] == strategy
    assert [a["strategy"] for a in m.export["attempts"]] == [strategy]
    assert m.export["opset"] == 17 == m.producer["opset"]
    assert m.inputs[0].shape == ["batch", 16] and m.outputs[0].shape[0] == "batch"
    for batch in (1, 9):
        got, ref = _run(result.package, batch)
        np.testing.assert_allclose(got, ref, atol=1e-4)


def test_external_data_threshold(tmp_path: Path) -> None:
    result = export_model(
        "torchport.exporters.examples.mlp:make_model",
        tmp_path / "out",
        external_data_threshold=100,
        quiet=True,
    )
    pkg = ModelPackage.load(result.path)  # verifies the hashes of both files
    assert {"model.onnx", "model.onnx.data"} <= set(pkg.manifest.files)
    assert pkg.manifest.variants["fp32"].data_files == ["model.onnx.data"]
    got, ref = _run(pkg, 5)
    np.testing.assert_allclose(got, ref, atol=1e-4)
