"""export_model from Python with a module in hand, and coverage fixes: BatchNorm through the
TorchScript fallback, example sizes well inside each range, --force checked first."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from torchport.exporters import export_model
from torchport.exporters.examples import cnn
from torchport.runtimes import ModelPackage, Session, UsageError


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)

    def forward(self, x, mask):
        return self.fc(x) * mask


def test_export_a_module_in_hand_with_example_args(tmp_path):
    model = TwoInputs().eval()
    args = (torch.randn(2, 4), torch.ones(2, 3))
    result = export_model(model, tmp_path / "m", example_args=args, dims=["batch=1..8"], quiet=True)
    m = result.package.manifest
    assert m.validated and [s.name for s in m.inputs] == ["x", "mask"]
    assert m.inputs[0].shape == ["batch", 4] and m.source["kind"] == "object"
    session = Session(result.package.model_path(), m)
    x, mask = torch.randn(5, 4), torch.ones(5, 3)
    got = session.run({"x": x, "mask": mask.tolist()})  # a torch tensor and a list are converted
    np.testing.assert_allclose(list(got.values())[0], model(x, mask).detach().numpy(), atol=1e-5)


def test_export_a_module_with_named_example_inputs(tmp_path):
    inputs = {"x": torch.randn(3, 4), "mask": torch.ones(3, 3)}
    result = export_model(TwoInputs().eval(), tmp_path / "m", example_inputs=inputs, quiet=True)
    assert [s.name for s in result.package.manifest.inputs] == ["x", "mask"]
    with pytest.raises(UsageError, match="example_args / example_inputs go with a model object"):
        export_model(
            "torchport.exporters.examples.mlp:make_model", tmp_path / "n", example_args=(torch.ones(1),)
        )


def test_torchscript_fallback_keeps_batchnorm_in_eval_mode(tmp_path):
    result = export_model(
        cnn.make_model(),
        tmp_path / "cnn",
        example_args=cnn.example_inputs(),
        strategy="torchscript",
        quiet=True,
    )
    assert result.strategy == "torchscript" and result.package.manifest.validated
    assert result.package.manifest.variants["fp32"].parity["passed"]


def test_existing_output_is_refused_before_loading(tmp_path):
    (tmp_path / "out").mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torchport.cli",
            "export",
            "no_such_file.py:make",
            "-o",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # the destination is checked first: the (missing) model is never loaded
    assert proc.returncode == 1 and "already exists; pass --force" in proc.stderr
    assert "not found" not in proc.stderr


def test_session_run_says_how_to_convert_what_it_cannot_take(tmp_path):
    result = export_model(
        TwoInputs().eval(), tmp_path / "m", example_args=(torch.randn(2, 4), torch.ones(2, 3)), quiet=True
    )
    session = Session(result.package.model_path(), result.package.manifest)
    with pytest.raises(Exception, match="cannot make a float32 array of the given list"):
        session.run({"x": [[1, 2], ["a"]], "mask": np.ones((2, 3), np.float32)})
    assert ModelPackage.load(tmp_path / "m").manifest.validated


class TupleOut(nn.Module):
    def forward(self, x):
        return x * 2, torch.softmax(x, -1)


def test_output_names_name_a_tuple_and_a_wrong_count_is_refused(tmp_path):
    x = torch.randn(2, 5)
    result = export_model(
        TupleOut(), tmp_path / "m", example_args=(x,), output_names=["logits", "probs"], quiet=True
    )
    assert [s.name for s in result.package.manifest.outputs] == ["logits", "probs"]
    assert set(Session(result.package.model_path(), result.package.manifest).run({"x": x})) == {
        "logits",
        "probs",
    }
    with pytest.raises(UsageError, match=r"--output-names gives 1 name\(s\) \(logits\) for 2 output\(s\)"):
        export_model(TupleOut(), tmp_path / "n", example_args=(x,), output_names=["logits"], quiet=True)
    assert not (tmp_path / "n").exists()


def test_sample_alone_warns_that_shapes_are_fixed(tmp_path, capsys):
    np.savez(tmp_path / "s.npz", input=np.ones((2, 16), np.float32))
    src = tmp_path / "mlp.py"
    src.write_text(
        "import torch\n\ndef make():\n    torch.manual_seed(0)\n    return torch.nn.Linear(16, 4)\n"
    )
    export_model(f"{src}:make", tmp_path / "m", sample=str(tmp_path / "s.npz"))
    captured = capsys.readouterr()
    assert "warning: the inputs of --sample" in captured.err + captured.out
