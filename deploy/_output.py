"""Writing outputs atomically: a temporary sibling renamed into place, so nothing is half-written."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torchport.runtimes import UsageError


def refuse_existing(dest: Path, force: bool, what: str = "output") -> None:
    """UsageError when ``dest`` exists and ``force`` is off."""
    if dest.exists() and not force:
        raise UsageError(
            f"{what} {str(dest)!r} already exists; pass --force to replace it or choose another -o"
        )


@contextmanager
def atomic_dir(
    dest: str | os.PathLike[str], *, force: bool = False, what: str = "output folder"
) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``dest``; on success it replaces ``dest``.

    The folder honours the umask (unlike ``tempfile.mkdtemp``'s 0700). On any error the
    temporary folder is removed and ``dest`` is left as it was.
    """
    dest = Path(dest).absolute()
    refuse_existing(dest, force, what)
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{what} {str(dest)!r} exists and is not a folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        if dest.exists():
            trash = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(dest, trash)
            os.replace(tmp, dest)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(dest: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success it is renamed to ``dest`` (umask mode)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
