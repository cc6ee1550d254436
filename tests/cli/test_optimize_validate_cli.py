"""`torchport optimize` and `torchport validate` through the real CLI (typer app + main())."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from tests.exporters._pkgutil import make_package
from torchport.cli import main
from torchport.cli._app import app
from torchport.exporters.examples import mlp
from torchport.runtimes import ModelPackage, update_package

MLP = "torchport.exporters.examples.mlp:make_model"
runner = CliRunner()


@pytest.fixture()
def mlp_pkg(tmp_path):
    return make_package(
        mlp.make_model(), mlp.example_inputs(), tmp_path / "mlp", dynamic={"input": {0: ("batch", 1, 64)}}
    ).path


def test_optimize_then_validate_passes_and_writes_parity(mlp_pkg):
    r = runner.invoke(app, ["optimize", str(mlp_pkg), "--level", "all", "--fp16", "--int8", "dynamic"])
    assert r.exit_code == 0, r.output
    assert "int8_dynamic" in r.output and "model.int8.onnx" in r.output
    assert "parity PASSED" in r.output and "vs model.onnx (fp32)" in r.output  # variants checked vs fp32
    assert set(ModelPackage.load(mlp_pkg).manifest.variants) == {"fp32", "fp16", "int8"}

    r = runner.invoke(app, ["validate", str(mlp_pkg), "--model", MLP, "--n", "4"])
    assert r.exit_code == 0, r.output
    assert "parity PASSED" in r.output and "int8" in r.output
    report = json.loads((mlp_pkg / "parity.json").read_text())
    assert report["passed"] and len(report["cases"]) == 4
    assert ModelPackage.load(mlp_pkg).manifest.validated


def test_validate_failure_exits_1_with_table_and_localization(mlp_pkg):
    pkg = ModelPackage.load(mlp_pkg)
    with update_package(pkg) as w:  # plant a wrong activation
        m = onnx.load(str(w.path / "model.onnx"))
        for node in m.graph.node:
            if node.op_type in ("Gelu", "Erf"):
                node.op_type = "Sigmoid" if node.op_type == "Gelu" else "Tanh"
                del node.attribute[:]
                break
        onnx.save(m, str(w.path / "model.onnx"))
        w.commit(pkg.manifest)
    r = runner.invoke(app, ["validate", str(mlp_pkg), "--model", MLP, "--n", "3", "--variant", "fp32"])
    assert r.exit_code == 1
    assert "parity FAILED" in r.output and "first diverging node" in r.output
    assert "Sigmoid" in r.output and "module: 1 (GELU)" in r.output
    assert json.loads((mlp_pkg / "parity.json").read_text())["passed"] is False
    r = runner.invoke(app, ["validate", str(mlp_pkg), "--model", MLP, "--n", "2", "--json", "--no-localize"])
    assert r.exit_code == 1 and json.loads(r.output)["variants"]["fp32"]["localization"] is None


def test_samples_and_user_errors_are_one_line(mlp_pkg, tmp_path, capsys):
    np.savez(tmp_path / "s.npz", input=np.ones((2, 16), np.float32))
    r = runner.invoke(
        app, ["validate", str(mlp_pkg), "--model", MLP, "--n", "1", "--samples", str(tmp_path / "s.npz")]
    )
    assert r.exit_code == 0 and "sample 0" not in r.output  # the table lists outputs, not cases
    assert json.loads((mlp_pkg / "parity.json").read_text())["cases"][-1] == "sample 0"

    for argv, message in (
        (["optimize", str(mlp_pkg), "--level", "max"], "unknown optimization level 'max'"),
        (["optimize", str(mlp_pkg), "--disable", "nope"], "unknown pass 'nope' in --disable"),
        (
            ["optimize", str(mlp_pkg), "--int8", "static", "--calibration", str(tmp_path / "no.npz")],
            "does not exist",
        ),
        (["validate", str(mlp_pkg), "--model", MLP, "--variant", "int8"], "has no variant 'int8'"),
        (["validate", str(tmp_path / "nothing"), "--model", MLP], "does not exist"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err
        assert err.count("\n") == 1


def test_static_int8_with_calibration_file(mlp_pkg, tmp_path):
    np.savez(
        tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal((8, 4, 16)).astype(np.float32)
    )
    r = runner.invoke(
        app,
        [
            "optimize",
            str(mlp_pkg),
            "--int8",
            "static",
            "--calibration",
            str(tmp_path / "calib.npz"),
            "--n",
            "4",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    passes = json.loads(r.output)["passes"]
    assert passes[-1]["name"] == "int8_static" and passes[-1]["details"]["calibration_samples"] == 8
    r = runner.invoke(app, ["validate", str(mlp_pkg), "--model", MLP, "--n", "4", "--variant", "int8"])
    assert r.exit_code == 0, r.output


def test_static_int8_without_calibration_says_so_loudly(mlp_pkg, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["optimize", str(mlp_pkg), "--level", "none", "--int8", "static"])
    captured = capsys.readouterr()
    assert exit_info.value.code in (0, None)
    assert (
        "warning: --int8 static without --calibration: calibrating on generated random inputs" in captured.err
    )
    assert "Please consider to run pre-processing" not in captured.err + captured.out
    m = ModelPackage.load(mlp_pkg).manifest
    assert m.extra["optimization"]["calibration"] == "generated"


def test_export_cli_validates_and_takes_optimization_options(tmp_path, capsys):
    r = runner.invoke(
        app, ["export", MLP, "-o", str(tmp_path / "m"), "--level", "basic", "--int8", "dynamic", "-q"]
    )
    assert r.exit_code == 0, r.output
    m = ModelPackage.load(tmp_path / "m").manifest
    assert m.validated and set(m.variants) == {"fp32", "int8"} and m.passes[0]["name"] == "optimize"
    r = runner.invoke(app, ["export", MLP, "-o", str(tmp_path / "n"), "--no-validate", "-q"])
    assert r.exit_code == 0, r.output
    assert ModelPackage.load(tmp_path / "n").manifest.validated is False
    with pytest.raises(SystemExit) as exit_info:
        main(["export", MLP, "-o", str(tmp_path / "o"), "--disable", "nope", "-q"])
    assert exit_info.value.code == 1 and "unknown pass 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


MODEL_PY = """
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(x) * SCALE


SCALE = {scale}


def example_inputs():
    return (torch.randn(2, 6),)


DYNAMIC_DIMS = {{"x": {{0: ("batch", 1, 8)}}}}
"""


def test_validate_defaults_to_the_recorded_source_and_guards_the_record(tmp_path, monkeypatch):
    src = tmp_path / "models" / "net.py"
    src.parent.mkdir()
    src.write_text(MODEL_PY.format(scale=1.0))
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["export", "models/net.py:Net", "-o", "pkg", "-q"])
    assert r.exit_code == 0, r.output
    m = ModelPackage.load(tmp_path / "pkg").manifest
    assert m.source["reference"] == f"{src}:Net"  # absolute: validate works from any folder

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = runner.invoke(app, ["validate", str(tmp_path / "pkg"), "--n", "3"])
    assert r.exit_code == 0, r.output
    assert "parity PASSED" in r.output and "note:" not in r.output

    src.write_text(MODEL_PY.format(scale=2.0))  # the model changed since export
    before = (tmp_path / "pkg" / "parity.json").read_text()
    r = runner.invoke(app, ["validate", str(tmp_path / "pkg"), "--n", "3", "--no-localize"])
    assert r.exit_code == 1 and "parity FAILED" in r.output
    assert "differs from the one this package was exported from" in r.output and "--record" in r.output
    assert (tmp_path / "pkg" / "parity.json").read_text() == before  # the passing record is kept
    assert ModelPackage.load(tmp_path / "pkg").manifest.validated

    r = runner.invoke(app, ["validate", str(tmp_path / "pkg"), "--n", "3", "--no-localize", "--record"])
    assert r.exit_code == 1
    assert ModelPackage.load(tmp_path / "pkg").manifest.validated is False
