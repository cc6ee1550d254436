"""`torchport export --task` on a causal LM folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("transformers")

from tests.lm_models import save_causal_lm  # noqa: E402
from torchport.cli import app  # noqa: E402
from torchport.runtimes import UsageError, ValidationError  # noqa: E402


def test_export_task_text_generation(tmp_path: Path) -> None:
    src = save_causal_lm("gpt2", tmp_path / "gpt2")
    result = CliRunner().invoke(
        app, ["export", str(src), "-o", str(tmp_path / "pkg"), "--task", "text-generation", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert "past_key_values.0.key:float32[batch,4,past_seq,8]" in result.output
    assert "present.1.value" in result.output
    manifest = json.loads((tmp_path / "pkg" / "torchport.json").read_text())
    assert manifest["export"]["task"] == "text-generation" and manifest["validated"] is True

    bad = CliRunner().invoke(app, ["export", str(src), "-o", str(tmp_path / "bad"), "--task", "chat"])
    assert bad.exit_code == 1
    assert (
        "error: unknown --task 'chat'; use one of: auto, text-generation, text2text-generation, automatic-speech-recognition, default"
        in bad.output
    )
    assert "Traceback" not in bad.output and not (tmp_path / "bad").exists()


def test_export_help_shows_task() -> None:
    out = CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "200"}).output
    assert "--task" in out and "text-generation" in out


def test_validate_text_generation_package(tmp_path: Path) -> None:
    """validate runs the decoder over a prompt and decode steps: fp32 vs eager, int8 vs model.onnx; the
    record lands in the package; another model's weights fail."""
    src = save_causal_lm("llama", tmp_path / "llama")
    pkg = tmp_path / "pkg"
    args = [
        "export",
        str(src),
        "-o",
        str(pkg),
        "--int8",
        "dynamic",
        "--level",
        "basic",
        "--no-validate",
        "-q",
    ]
    exported = CliRunner().invoke(app, args)
    assert exported.exit_code == 0, exported.output
    assert json.loads((pkg / "torchport.json").read_text())["validated"] is False

    result = CliRunner().invoke(app, ["validate", str(pkg), "--n", "3"])
    assert result.exit_code == 0, result.output
    assert "parity PASSED" in result.output and "on 4 inputs" in result.output
    manifest = json.loads((pkg / "torchport.json").read_text())
    assert manifest["validated"] is True
    assert manifest["variants"]["fp32"]["parity"]["reference"] == "eager"
    assert manifest["variants"]["int8"]["parity"]["reference"] == "fp32"
    report = json.loads((pkg / "parity.json").read_text())
    assert report["cases"] == ["prompt batch 3 seq 8", "decode step 1", "decode step 2", "decode step 3"]
    fp32 = {o["name"]: o for o in report["variants"]["fp32"]["outputs"]}
    assert set(fp32) == {"logits"} | {f"present.{i}.{kv}" for i in range(2) for kv in ("key", "value")}
    assert all(o["passed"] and o["max_abs"] < 1e-3 for o in fp32.values())

    other = save_causal_lm("llama", tmp_path / "other", seed=1, tokenizer=False)
    failed = CliRunner().invoke(app, ["validate", str(pkg), "--model", str(other), "--n", "2"])
    assert failed.exit_code == 1
    assert "parity FAILED" in failed.output and "elements beyond atol" in failed.output
    assert "differs from the one this package was exported from" in failed.output
    assert json.loads((pkg / "torchport.json").read_text())["validated"] is True  # record kept

    # user errors: TorchportError (one line, exit 1 in the console script)
    samples = CliRunner().invoke(app, ["validate", str(pkg), "--samples", str(tmp_path / "s.npz")])
    assert isinstance(samples.exception, UsageError)
    assert str(samples.exception).startswith("--samples is not used for a text-generation package")
    mlp = CliRunner().invoke(
        app, ["validate", str(pkg), "--model", "torchport.exporters.examples.mlp:make_model"]
    )
    assert isinstance(mlp.exception, ValidationError)
    assert "is a text-generation package; --model must be the Hugging Face causal LM" in str(mlp.exception)
