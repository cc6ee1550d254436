"""`torchport export`: success, --help, and bad input as one clear line with exit code 1 and no traceback.

In-process through typer's CliRunner on the real app; --pdb and one end-to-end run through a
subprocess (`python -m torchport.cli`), the way a user runs it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from torchport.cli import app

MLP = "torchport.exporters.examples.mlp:make_model"
BRANCHY_INPUT = ["--input", "x:float32[batch,4]", "--dim", "batch=1..8"]


def invoke(*args: str):
    return CliRunner().invoke(app, ["export", *args])


def _assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    err = result.stderr
    assert err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli_models")
    (folder / "models.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            def make_model():
                return nn.Linear(4, 2).eval()

            def broken():
                raise RuntimeError("weights are corrupt")

            def not_a_module():
                return 42

            class Branchy(nn.Module):
                def forward(self, x):
                    if x.sum() > 0:
                        return x * 2
                    return x - 1

            def branchy():
                return Branchy()
            """
        )
    )
    return folder


def test_help_explains_every_option_with_an_example() -> None:
    result = CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert result.exit_code == 0
    text = result.output
    assert "input_ids:int64[batch,seq]" in text and "batch=1..64" in text
    # every option's help carries an example: read them from the command's own parameters
    import typer.core
    import typer.main

    command = typer.main.get_command(app).commands["export"]
    options = [p for p in command.params if isinstance(p, typer.core.TyperOption) and p.name != "help"]
    assert len(options) >= 12
    for option in options:
        assert option.opts[0] in text, option.opts
        assert "e.g." in (option.help or ""), f"{option.opts[0]} has no example in its help"


def test_export_success(tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    result = invoke(
        MLP,
        "-o",
        str(out),
        "--dim",
        "batch=1..8",
        "--name",
        "tiny-mlp",
        "--model-version",
        "3",
        "--opset",
        "18",
    )
    assert result.exit_code == 0, result.output
    assert f"exported tiny-mlp v3 to {out}" in result.stdout
    assert "inputs:  input:float32[batch,16]" in result.stdout
    for stage in ("✓ load", "✓ inputs", "✓ eager run", "✓ export", "✓ save", "✓ commit"):
        assert stage in result.stderr
    manifest = json.loads((out / "torchport.json").read_text())
    assert manifest["name"] == "tiny-mlp" and manifest["version"] == "3"
    assert manifest["dynamic_dims"] == {"batch": {"min": 1, "max": 8}}
    assert manifest["export"]["opset"] == 18


def test_export_with_input_specs_quiet(tmp_path: Path, models: Path) -> None:
    out = tmp_path / "pkg"
    result = invoke(
        f"{models / 'models.py'}:make_model",
        "-o",
        str(out),
        "--input",
        "input:float32[batch,4]",
        "--dim",
        "batch=2..16",
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    manifest = json.loads((out / "torchport.json").read_text())
    assert manifest["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 4]}]
    assert manifest["dynamic_dims"]["batch"] == {"min": 2, "max": 16}


def test_existing_output_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    assert invoke(MLP, "-o", str(out), "-q").exit_code == 0
    _assert_user_error(invoke(MLP, "-o", str(out), "-q"), "already exists", "--force")
    assert invoke(MLP, "-o", str(out), "-q", "--force").exit_code == 0


@pytest.mark.parametrize(
    ("source", "extra", "fragments"),
    [
        ("{models}/missing.py:make_model", [], ["model file not found", "missing.py"]),
        ("{models}/models.py:make_modle", [], ["make_modle", "make_model"]),
        ("{models}/models.py:broken", [], ["weights are corrupt"]),
        ("{models}/models.py:not_a_module", [], ["not_a_module", "nn.Module"]),
        (
            "{models}/models.py:make_model",
            ["--input", "x:complex64[batch,4]"],
            ["unsupported dtype 'complex64'"],
        ),
        (
            "{models}/models.py:make_model",
            ["--input", "x float32"],
            ["--input 'x float32'", "name:dtype[dims]"],
        ),
        (
            "{models}/models.py:make_model",
            ["--input", "input:float32[batch,4]", "--dim", "batch=1-8"],
            ["--dim 'batch=1-8'", "min..max"],
        ),
        (
            "{models}/models.py:make_model",
            ["--input", "input:float32[batch,4]", "--dim", "batch"],
            ["--dim 'batch'", "name=min..max"],
        ),
        (MLP, ["--strategy", "fastest"], ["unknown --strategy 'fastest'"]),
        (MLP, ["--outputs", "logits"], ["--outputs logits: the model returns no output of that name"]),
        (MLP, ["--sample", "{models}/nope.npz"], ["sample file not found", "nope.npz"]),
    ],
    ids=[
        "missing-file",
        "missing-attr",
        "factory-raises",
        "not-a-module",
        "bad-dtype",
        "malformed-input",
        "malformed-dim",
        "dim-without-range",
        "unknown-strategy",
        "unknown-output",
        "missing-sample",
    ],
)
def test_bad_input_is_one_clear_line(
    source: str, extra: list[str], fragments: list[str], models: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pkg"
    args = [source.format(models=models), "-o", str(out), "-q", *[a.format(models=models) for a in extra]]
    result = invoke(*args)
    _assert_user_error(result, *fragments)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists()


def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def test_capture_error_via_subprocess_exit_code(models: Path, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torchport.cli",
            "export",
            f"{models / 'models.py'}:branchy",
            "-o",
            str(out),
            "-q",
            *BRANCHY_INPUT,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=_python_env(),
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: capture failed")
    assert (
        "if x.sum() > 0:" in proc.stderr and "torch.cond(x.sum() > 0, true_fn, false_fn, (x,))" in proc.stderr
    )
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_pdb_opens_at_the_users_line(models: Path, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torchport.cli",
            "export",
            f"{models / 'models.py'}:branchy",
            "-o",
            str(out),
            "-q",
            "--pdb",
            *BRANCHY_INPUT,
        ],
        input="p x.shape\nwhere\nq\n",
        capture_output=True,
        text=True,
        timeout=300,
        env=_python_env(),
    )
    assert proc.returncode == 1, proc.stderr
    assert f"> {models / 'models.py'}(" in proc.stdout and ")forward()" in proc.stdout
    assert "-> if x.sum() > 0:" in proc.stdout
    # `p x.shape` ran in the user's frame, on the real example tensor (eager re-run), not a fake one
    assert "re-running the model eagerly" in proc.stdout
    assert re.search(r"torch\.Size\(\[\d+, 4\]\)", proc.stdout), proc.stdout
    assert "error: capture failed" in proc.stderr
    assert not out.exists()
