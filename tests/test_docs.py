"""docs/design.md is the contract inside the repository: referenced, complete, self-contained."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from torchport.runtimes import Manifest, Variant

REPO_ROOT = Path(__file__).resolve().parents[1]
DESIGN = REPO_ROOT / "docs" / "design.md"


def _tracked_text_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [REPO_ROOT / f for f in out if f.endswith((".py", ".md", ".toml", ".sh", ".txt", ".cfg"))]


def test_readme_and_pyproject_point_to_the_design_in_the_repo():
    assert DESIGN.is_file()
    assert "docs/design.md" in (REPO_ROOT / "README.md").read_text()
    assert "docs/design.md" in (REPO_ROOT / "pyproject.toml").read_text()


def test_design_documents_every_manifest_field():
    text = DESIGN.read_text()
    fields = set(Manifest(name="m").to_dict()) | set(Variant(file="model.onnx").to_dict())
    missing = sorted(f for f in fields if f"`{f}`" not in text)
    assert not missing, f"docs/design.md does not document torchport.json field(s): {missing}"


def test_nothing_refers_outside_the_repository_or_to_issue_numbers():
    outside = re.compile(r"\.\./shared|(?<!docs/)\bDESIGN\.md|\b[Ii]ssues? #?\d+")
    offenders = []
    for path in _tracked_text_files():
        if path.is_file():
            for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if outside.search(line) and path != Path(__file__).resolve():
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
