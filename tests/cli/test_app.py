"""The torchport app itself: --version, help of flags, shared options built from the registries."""

from __future__ import annotations

import re

import pytest

from torchport import __version__
from torchport.cli import main
from torchport.exporters._registries import ONNX_PASSES, STRATEGIES


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return exit_info.value.code or 0, out.out, out.err


def test_version_needs_no_command(capsys):
    code, out, err = _run(["--version"], capsys)
    assert code == 0 and out.strip() == __version__ and "Missing command" not in err


@pytest.mark.parametrize("command", ["export", "optimize", "validate", "serve"])
def test_flags_show_no_value_type_in_help(command, capsys):
    code, out, _ = _run([command, "--help"], capsys)
    assert code == 0 and "<bool>" not in out


def test_option_help_comes_from_the_registries(capsys):
    _, optimize_help, _ = _run(["optimize", "--help"], capsys)
    _, export_help, _ = _run(["export", "--help"], capsys)
    flat = re.sub(r"[\s│]+", " ", optimize_help)
    assert all(name in flat for name in ONNX_PASSES)
    flat_export = re.sub(r"[\s│]+", " ", export_help)
    assert all(name in flat_export for name in STRATEGIES)
    assert "--model-version" in flat_export


def test_registries_match_the_implementations():
    from torchport.exporters._onnx_passes import PASS_CLASSES
    from torchport.exporters._strategies import _RUNNERS

    assert list(PASS_CLASSES) == list(ONNX_PASSES)
    assert list(_RUNNERS) == list(STRATEGIES)
