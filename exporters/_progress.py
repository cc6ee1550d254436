"""The progress display: one line per stage with its time, and one line per retry.

Lines go to stderr (stdout stays free for results)::

    ✓ load         0.41s  torchport.exporters.examples.mlp:make_model (python_module)
    ✓ inputs       0.00s  input:float32[batch,16] (batch=1..64)
    ↻ dynamo-nonstrict failed in ONNX translation: ...; trying the next strategy
    ✓ export       2.10s  strategy dynamo-decomp-workaround, opset 20
    ✗ save         0.01s  ...
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

__all__ = ["Progress"]


class Progress:
    """Prints stage lines; ``quiet=True`` prints nothing. Records every stage's seconds in ``times``.

    Example:
        >>> progress = Progress(quiet=True)
        >>> with progress.stage("load") as stage:
        ...     stage.detail = "mlp"
        >>> list(progress.times)
        ['load']
    """

    def __init__(self, quiet: bool = False, stream: IO[str] | None = None) -> None:
        self.quiet = quiet
        self.stream = stream
        self.times: dict[str, float] = {}

    def _write(self, line: str) -> None:
        if self.quiet:
            return
        stream = self.stream or sys.stderr
        stream.write(line + "\n")
        stream.flush()

    class _Stage:
        def __init__(self) -> None:
            self.detail = ""

    @contextmanager
    def stage(self, name: str) -> Iterator[Progress._Stage]:
        """Time a stage; prints ``✓ name  1.23s  detail`` on success, ``✗`` when it raises."""
        info = Progress._Stage()
        start = time.perf_counter()
        try:
            yield info
        except BaseException:
            seconds = time.perf_counter() - start
            self.times[name] = self.times.get(name, 0.0) + seconds
            self._write(f"✗ {name:<11} {seconds:6.2f}s  {info.detail}".rstrip())
            raise
        seconds = time.perf_counter() - start
        self.times[name] = self.times.get(name, 0.0) + seconds
        self._write(f"✓ {name:<11} {seconds:6.2f}s  {info.detail}".rstrip())

    def note(self, line: str) -> None:
        """A retry or skip line (``↻ ...``)."""
        self._write(f"↻ {line}")

    def warn(self, line: str) -> None:
        """Something the user should know about the result (a poor calibration set, fixed shapes)."""
        self._write(f"warning: {line}")

    def done(self, line: str) -> None:
        self._write(line)
