"""`torchport export --task` on a causal LM folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("transformers")

from tests.lm_models import save_causal_lm  # noqa: E402
from torchport.cli import app  # noqa: E402


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
    assert "error: unknown --task 'chat'; use one of: auto, text-generation, default" in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "bad").exists()


def test_export_help_shows_task() -> None:
    out = CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "200"}).output
    assert "--task" in out and "text-generation" in out
