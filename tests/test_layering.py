"""docs/design.md's layering: torch only in exporters/; runtimes/ and deploy/ never import the layers above."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_TORCH = re.compile(r"^\s*(import torch|from torch[ .])", re.M)
_ABOVE = {
    "runtimes": re.compile(r"^\s*(from|import) torchport\.(exporters|deploy|cli)", re.M),
    "deploy": re.compile(r"^\s*(from|import) torchport\.(exporters|cli)", re.M),
}


def _sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_torch_is_imported_only_in_exporters() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for folder in ("runtimes", "deploy", "cli", "torchport")
        for p in _sources(folder)
        if _TORCH.search(p.read_text())
    ]
    assert offenders == []


def test_lower_layers_do_not_import_upper_layers() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for folder, pattern in _ABOVE.items()
        for p in _sources(folder)
        if pattern.search(p.read_text())
    ]
    assert offenders == []


def test_cli_and_serving_start_without_torch() -> None:
    """With torch made unimportable, the CLI starts and `serve --help` / `inspect --help` work."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import torchport.runtimes, torchport.runtimes.server, torchport.deploy\n"
        "from torchport.cli import main\n"
        "for cmd in (['--help'], ['serve', '--help'], ['inspect', '--help']):\n"
        "    try:\n"
        "        main(cmd)\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), (cmd, e.code)\n"
        "assert sys.modules['torch'] is None\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "serve" in proc.stdout and "inspect" in proc.stdout
