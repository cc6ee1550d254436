"""Scratch folders: the temporary siblings that packages and test-bed builds are written into before
they are renamed into place, made so that a killed process does not leave them behind for good.

A scratch folder is named ``.<stem>.tmp-<12 hex>`` next to its destination and its writer holds an
exclusive ``flock`` on the folder for as long as it works in it. The kernel drops the lock when the
process ends however it ends, so the next writer in the same parent (:func:`clean_stale`, called by
:func:`make_scratch`) can tell a folder whose writer died (the lock is free) from one still being
written (the lock is held), and removes only the former. Folders younger than :data:`STALE_AFTER_S`
are never touched (the moment between ``mkdir`` and the lock). Where ``flock`` does not exist
(Windows) nothing is cleaned.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["STALE_AFTER_S", "Scratch", "clean_stale", "make_scratch"]

#: a scratch folder younger than this (seconds since its mtime) is never cleaned
STALE_AFTER_S = 60.0

_NAME = re.compile(r"^\..+\.tmp-[0-9a-f]{12}$")


class Scratch:
    """A scratch folder and the lock that marks it as being written (see :func:`make_scratch`).

    Attributes:
        path: the folder (``.<stem>.tmp-<hex>``).
    """

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (after the folder was renamed into place or removed); idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _lock(path: Path) -> int | None:
    """An fd of ``path`` holding its exclusive lock, ``None`` where locks are not offered; raises
    ``BlockingIOError`` when another process holds it."""
    if fcntl is None:
        return None
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def clean_stale(parent: str | os.PathLike[str], *, older_than: float = STALE_AFTER_S) -> list[Path]:
    """Remove the scratch folders in ``parent`` whose writer is gone (their lock is free).

    Args:
        parent: the folder whose ``.<stem>.tmp-<hex>`` entries are looked at.
        older_than: seconds since a folder's mtime before it may be removed.

    Returns:
        The folders removed.

    Example:
        >>> clean_stale("out")                                                   # doctest: +SKIP
        [PosixPath('out/.cnn.tmp-0123456789ab')]
    """
    folder = Path(parent)
    if fcntl is None or not folder.is_dir():
        return []
    removed: list[Path] = []
    now = time.time()
    for entry in folder.iterdir():
        if not _NAME.match(entry.name):
            continue
        try:
            if not entry.is_dir() or entry.is_symlink() or now - entry.stat().st_mtime < older_than:
                continue
            fd = _lock(entry)
        except (BlockingIOError, OSError):
            continue  # being written (locked), or gone / unreadable: not ours to judge
        try:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        finally:
            if fd is not None:
                os.close(fd)
    return removed


def make_scratch(parent: str | os.PathLike[str], stem: str, *, mode: int = 0o777) -> Scratch:
    """Clean ``parent``'s stale scratch folders, then make and lock a fresh one for ``stem``.

    Args:
        parent: where the folder goes (the destination's parent, created if missing).
        stem: the destination's name (the folder is ``.<stem>.tmp-<12 hex>``).
        mode: the folder's mode (the umask applies; 0o777 lets it decide, as for a plain folder).

    Returns:
        A :class:`Scratch`; call ``release()`` once the folder was renamed into place or removed.

    Raises:
        OSError: the folder cannot be made.

    Example:
        >>> s = make_scratch("out", "cnn")                                       # doctest: +SKIP
        >>> s.path.name.startswith(".cnn.tmp-")
        True
    """
    base = Path(parent)
    base.mkdir(parents=True, exist_ok=True)
    clean_stale(base)
    path = base / f".{stem}.tmp-{uuid.uuid4().hex[:12]}"
    path.mkdir(mode=mode)
    try:
        fd = _lock(path)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return Scratch(path, fd)
