"""`torchport generate PKG "text"`: the text and tokens/s of one generation, one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("transformers")

from tests.seq2seq_models import exported_seq2seq  # noqa: E402
from torchport.cli import app  # noqa: E402
from torchport.runtimes import Session, UsageError  # noqa: E402


def test_generate_prints_the_text_and_tokens_per_second(tmp_path: Path) -> None:
    pkg = exported_seq2seq("bart", tmp_path).package.path
    result = CliRunner().invoke(app, ["generate", str(pkg), "the quick brown fox", "--max-tokens", "5"])
    assert result.exit_code == 0, result.output
    expected = Session.from_package(pkg).generate("the quick brown fox", max_new_tokens=5)
    text, speed = result.output.rstrip("\n").rsplit("\n", 1)
    assert text == expected.text[0]
    assert re.fullmatch(rf"{len(expected.tokens[0])} tokens in [0-9.]+ s \([0-9.]+ tokens/s\)", speed)
    both = CliRunner().invoke(app, ["generate", str(pkg), "hi", "--audio", str(tmp_path / "a.wav")])
    assert (
        isinstance(both.exception, UsageError) and str(both.exception) == "pass either text or --audio FILE"
    )
    audio = CliRunner().invoke(app, ["generate", str(pkg), "--audio", str(tmp_path / "a.wav")])
    assert isinstance(audio.exception, UsageError) and "does not take audio; pass text" in str(
        audio.exception
    )
