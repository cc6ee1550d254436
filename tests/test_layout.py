"""docs/design.md's Layout: ``torchport.X`` is the top-level folder X for the import system and static tools.

The root's ``torchport/`` folder holds relative symlinks to the parts, so python run from the root (where
that folder comes first on ``sys.path``) imports every subpackage even with torchport installed from a wheel,
not editable, and so does a model wheel's ``import NAME``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.runtimes.conftest import make_add_package

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("exporters", "runtimes", "deploy", "cli")
#: every package the wheel ships (each a folder with an __init__.py under a part)
SUBPACKAGES = sorted(
    ".".join(["torchport", part, *init.parent.relative_to(ROOT / part).parts])
    for part in PARTS
    for init in (ROOT / part).rglob("__init__.py")
)


def test_torchport_folder_links_each_part_to_its_top_level_folder() -> None:
    links = {p.name: p for p in (ROOT / "torchport").iterdir() if p.is_symlink()}
    assert sorted(links) == sorted(PARTS)
    for name, link in links.items():
        assert os.readlink(link) == f"..{os.sep}{name}"  # relative: the checkout can move
        assert link.resolve() == ROOT / name
    assert "torchport.runtimes.server" in SUBPACKAGES and "torchport.exporters.examples" in SUBPACKAGES


def _run(
    cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _wheel_venv(tmp_path: Path, wheels: list[Path]) -> Path:
    """A fresh venv with ``wheels`` installed into its site-packages (not editable); the dependencies come
    from this interpreter's site-packages through a .pth line (that folder's own .pth files, the editable
    install's among them, are not read). Returns its python."""
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, clear=True).create(env)
    py = env / "bin" / "python"
    site = Path(
        _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
    _run([*pip, "--no-compile", "--target", str(site), *map(str, wheels)])
    return py


@pytest.mark.slow
def test_python_from_the_root_imports_every_subpackage_with_a_wheel_install(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
          str(ROOT)])  # fmt: skip
    (wheel,) = dist.glob("torchport-*.whl")
    from torchport.deploy import build_wheel

    model = build_wheel(make_add_package(tmp_path / "add").path, dist, name="adder").path
    py = _wheel_venv(tmp_path, [wheel, model])
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    code = (
        "import importlib, sys\n"
        "import numpy as np\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "import torchport, adder\n"
        "out = adder.load(provider='cpu').predict(x=np.ones((2, 4), np.float32))\n"
        "print(torchport.__file__, sorted(out))\n"
    )
    # outside the checkout: the installed wheel
    outside = _run([str(py), "-c", code, *SUBPACKAGES], cwd=tmp_path, env=env).stdout
    assert outside.startswith(str(py.parents[1])) and outside.rstrip().endswith("['y', 'z']")
    # from the root: the root's torchport/ folder comes first on sys.path, and is whole
    inside = _run([str(py), "-c", code, *SUBPACKAGES], cwd=ROOT, env=env).stdout
    assert inside.startswith(str(ROOT / "torchport" / "__init__.py")) and inside.rstrip().endswith(
        "['y', 'z']"
    )
