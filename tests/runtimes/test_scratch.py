"""Scratch folders of killed writers are removed by the next writer; live writers' folders are kept.

Real processes: a writer is a subprocess that opens a package writer (or a test-bed build's scratch
folder) and waits on its stdin; one is killed with SIGKILL, one stays alive while the next write runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from torchport.runtimes._scratch import STALE_AFTER_S, clean_stale, make_scratch

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock")

_WRITER = """
import sys
from torchport.runtimes._package import PackageWriter
w = PackageWriter(sys.argv[1])
(w.path / "model.onnx").write_bytes(b"half written")
print(w.path, flush=True)
sys.stdin.read()
"""


def _writer(dest: Path) -> tuple[subprocess.Popen[str], Path]:
    """A process in the middle of writing ``dest``: returns it and its scratch folder (once made)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(dest)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # blocks until the folder exists and is locked
    assert line, "the writer process printed no scratch folder"
    return proc, Path(line)


def _age(path: Path) -> None:
    old = time.time() - STALE_AFTER_S - 5
    os.utime(path, (old, old))


def test_a_killed_writers_folder_is_removed_by_the_next_write(tmp_path: Path) -> None:
    from torchport.runtimes._package import write_package

    killed, dead_dir = _writer(tmp_path / "a")
    alive, live_dir = _writer(tmp_path / "b")
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=60)
        assert dead_dir.is_dir() and dead_dir.name.startswith(".a.tmp-")  # what a kill leaves
        for d in (dead_dir, live_dir):
            _age(d)
        with write_package(tmp_path / "c") as w:
            assert w.path.name.startswith(".c.tmp-")
            assert not dead_dir.exists()  # the killed writer's folder is gone
            assert (live_dir / "model.onnx").read_bytes() == b"half written"  # the live one is kept
        assert clean_stale(tmp_path) == []  # the live writer still holds its lock
    finally:
        assert alive.stdin is not None
        alive.stdin.close()
        alive.wait(timeout=60)
        killed.kill()
    # the live writer exited without committing or aborting: its lock went with it, so now it is stale
    assert live_dir.is_dir()
    _age(live_dir)
    assert clean_stale(tmp_path) == [live_dir]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_young_and_foreign_folders_are_left_alone(tmp_path: Path) -> None:
    young = tmp_path / ".pkg.tmp-0123456789ab"
    young.mkdir()
    foreign = tmp_path / ".pkg.tmp-notours"
    foreign.mkdir()
    plain = tmp_path / "pkg.tmp-0123456789ab"
    plain.mkdir()
    _age(foreign)
    _age(plain)
    assert clean_stale(tmp_path) == []  # too young / not the scratch pattern
    _age(young)
    assert clean_stale(tmp_path) == [young] and foreign.is_dir() and plain.is_dir()
    s = make_scratch(tmp_path, "model", mode=0o700)
    try:
        assert s.path.name.startswith(".model.tmp-") and (s.path.stat().st_mode & 0o777) == 0o700
        _age(s.path)
        assert clean_stale(tmp_path) == []  # locked by this process's own scratch
    finally:
        s.release()
    assert clean_stale(tmp_path) == [s.path]


def test_a_killed_testbed_build_is_cleaned_by_the_next_build(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from torchport.exporters.examples.testbed import build_digits

    code = (
        "import sys\n"
        "from torchport.runtimes._scratch import make_scratch\n"
        "s = make_scratch(sys.argv[1], 'digits-test-000000000000', mode=0o700)\n"
        "print(s.path, flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    left = Path(proc.stdout.readline().strip())
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert left.is_dir()
    _age(left)
    built = build_digits("test", cache_dir=tmp_path, epochs=1)
    assert not left.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [built.root.name]
