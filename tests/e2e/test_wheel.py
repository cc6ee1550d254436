"""The built wheel installs into a fresh virtualenv and every module imports (catches a missing package mapping)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: repository folder -> package name (torchport/ links each part to its folder: docs/design.md, Layout)
FOLDERS = {"torchport": "torchport", "exporters": "torchport.exporters", "runtimes": "torchport.runtimes",
           "deploy": "torchport.deploy", "cli": "torchport.cli"}  # fmt: skip


def _all_modules() -> list[str]:
    modules = []
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if parts and parts[-1] == "__main__":
                continue
            modules.append(".".join([package, *parts]))
    return modules


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_wheel_installs_and_every_module_imports(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(ROOT),
        ]
    )
    (wheel,) = dist.glob("torchport-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    modules = _all_modules()
    for module in modules:
        as_path = module.replace(".", "/")
        assert f"{as_path}.py" in names or f"{as_path}/__init__.py" in names, (
            f"{module} missing from the wheel"
        )

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    constraints = str(ROOT / "constraints.txt")
    # first without torch: the serving side must install and start without it
    _run([py, "-m", "pip", "install", "-q", "-c", constraints, f"{wheel}[cpu,serve]"], env=env)
    no_torch = [m for m in modules if not m.startswith("torchport.exporters")]
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\nassert 'torch' not in sys.modules\n"
    _run([py, "-c", code, *no_torch], env=env, cwd=tmp_path)
    help_text = _run([str(venv / "bin" / "torchport"), "serve", "--help"], env=env, cwd=tmp_path).stdout
    assert "--port" in help_text
    # then with the export extra: every module imports
    _run([py, "-m", "pip", "install", "-q", "-c", constraints, f"{wheel}[export]"], env=env)
    _run([py, "-c", code.replace("assert 'torch' not in sys.modules", ""), *modules], env=env, cwd=tmp_path)
