"""The user's source line: the innermost frame of the user's code in a traceback or a stack trace.

"The user's code" is any file outside torch, torchport's own exporters (its example models
count as user code), Python's standard library and the infrastructure listed in
:data:`_INFRA_PARTS`. Capture errors (a live traceback, or the frames torch quotes in an error
message) and localization (the stack trace torch records on each FX/ONNX node) both ask here.
"""

from __future__ import annotations

import importlib.util
import linecache
import os
import re
import sysconfig
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "SourceLocation",
    "is_user_file",
    "location_in_exception",
    "location_in_text",
    "user_traceback",
    "walk_exceptions",
]

_TORCH_SPEC = importlib.util.find_spec("torch")  # where torch lives, without importing it
_TORCH_DIR = str(Path(_TORCH_SPEC.origin).resolve().parent) if _TORCH_SPEC and _TORCH_SPEC.origin else "\0"
_TORCHPORT_EXPORTERS_DIR = str(Path(__file__).resolve().parent)
_STDLIB_DIRS = tuple(
    {
        str(Path(sysconfig.get_paths()[k]).resolve())
        for k in ("stdlib", "platstdlib")
        if k in sysconfig.get_paths()
    }
)
#: third-party infrastructure whose frames are never "the user's code" (transformers' model files are)
_INFRA_PARTS = (
    f"{os.sep}torch{os.sep}",
    f"{os.sep}functorch{os.sep}",
    f"{os.sep}typer{os.sep}",
    f"{os.sep}click{os.sep}",
    f"{os.sep}pluggy{os.sep}",
    f"{os.sep}_pytest{os.sep}",
    f"{os.sep}onnxscript{os.sep}",
    f"{os.sep}onnx_ir{os.sep}",
    f"{os.sep}sympy{os.sep}",
    f"{os.sep}transformers{os.sep}utils{os.sep}",
    f"{os.sep}transformers{os.sep}integrations{os.sep}",
    f"{os.sep}transformers{os.sep}modeling_utils.py",
    f"{os.sep}transformers{os.sep}masking_utils.py",
)


@dataclass
class SourceLocation:
    """A line of the user's code."""

    filename: str
    lineno: int
    function: str = ""
    line: str = ""

    def __str__(self) -> str:
        where = f"{self.filename}:{self.lineno}"
        if self.function:
            where += f" in {self.function}"
        return where

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.filename, "line": self.lineno, "function": self.function, "code": self.line}


def is_user_file(filename: str) -> bool:
    """Whether ``filename`` is the user's code (not torch, torchport, the standard library or infrastructure)."""
    if not filename or filename.startswith("<"):
        return False
    try:
        resolved = str(Path(filename).resolve())
    except OSError:
        resolved = filename
    if resolved.startswith(_TORCH_DIR) or resolved.startswith(_TORCHPORT_EXPORTERS_DIR):
        # torchport's own example models count as user code
        return f"{os.sep}examples{os.sep}" in resolved[len(_TORCHPORT_EXPORTERS_DIR) :]
    if any(part in resolved for part in _INFRA_PARTS):
        return False
    if "site-packages" not in resolved and any(resolved.startswith(d) for d in _STDLIB_DIRS):
        return False
    return True


def walk_exceptions(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception chained to it (causes and contexts), each once."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]


def user_traceback(exc: BaseException) -> types.TracebackType | None:
    """A traceback ending at the innermost frame in the user's code, for ``pdb.post_mortem``.

    Looks through ``exc`` and its causes; ``None`` when no user frame was executing (strict capture
    traces bytecode, so its frames never run).
    """
    for e in walk_exceptions(exc):
        entries: list[types.TracebackType] = []
        tb = e.__traceback__
        while tb is not None:
            entries.append(tb)
            tb = tb.tb_next
        user = [i for i, t in enumerate(entries) if is_user_file(t.tb_frame.f_code.co_filename)]
        if not user:
            continue
        # innermost user frame; rebuild the chain so it ends there (pdb opens at the last entry)
        cut = user[-1]
        new_tb = None
        for t in reversed(entries[: cut + 1]):
            new_tb = types.TracebackType(new_tb, t.tb_frame, t.tb_lasti, t.tb_lineno)
        return new_tb
    return None


def _location_in_traceback(exc: BaseException) -> SourceLocation | None:
    tb = user_traceback(exc)
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    line = linecache.getline(code.co_filename, tb.tb_lineno).strip()
    return SourceLocation(code.co_filename, tb.tb_lineno, code.co_name, line)


_FILE_LINE_RE = re.compile(
    r'File "(?P<file>[^"]+)", line (?P<line>\d+)(?:, in (?P<func>[\w<>.]+))?(?:\n[ \t]*(?P<code>[^\n]*))?'
)
_FX_FILE_RE = re.compile(r"# File: (?P<file>[^:\s]+):(?P<line>\d+) in (?P<func>[\w<>.]+)")


def location_in_text(text: str | None) -> SourceLocation | None:
    r"""The innermost user frame quoted in ``text``: a Python traceback or a torch stack trace.

    Dynamo and ONNX errors quote ``File "...", line N`` frames; torch records the same form as the
    ``stack_trace`` of each FX node (and the ONNX exporter copies it into node metadata). Frames
    are listed outermost first, so the last user frame is the line that ran the failing op (for
    ``self.fc(x)`` the line in the user's ``forward``, not ``torch/nn/modules/linear.py``).

    Example:
        >>> trace = 'File "/home/me/model.py", line 12, in forward\n    y = self.fc(x)\n'
        >>> str(location_in_text(trace)), location_in_text(trace).line
        ('/home/me/model.py:12 in forward', 'y = self.fc(x)')
    """
    found = None
    for m in list(_FILE_LINE_RE.finditer((text or "").replace("\r", ""))) + list(
        _FX_FILE_RE.finditer(text or "")
    ):
        if is_user_file(m.group("file")):
            loc = SourceLocation(m.group("file"), int(m.group("line")), m.group("func") or "")
            quoted = (m.groupdict().get("code") or "").strip()
            if quoted.startswith("File "):
                quoted = ""
            loc.line = quoted or linecache.getline(loc.filename, loc.lineno).strip()
            found = loc
    return found


def location_in_exception(exc: BaseException) -> SourceLocation | None:
    """The user's line where ``exc`` was raised: from its traceback, torch's frame records, or its text."""
    loc = _location_in_traceback(exc)
    if loc is not None:
        return loc
    for e in walk_exceptions(exc):
        frame = getattr(e, "innermost_user_frame_summary", None)
        if frame is not None and is_user_file(frame.filename):
            return SourceLocation(frame.filename, frame.lineno, frame.name, (frame.line or "").strip())
        real_stack = getattr(e, "real_stack", None)
        if real_stack:
            for frame in reversed(list(real_stack)):
                if is_user_file(frame.filename):
                    return SourceLocation(
                        frame.filename, frame.lineno, frame.name, (frame.line or "").strip()
                    )
    for e in walk_exceptions(exc):
        loc = location_in_text(str(e))
        if loc is not None:
            return loc
    return None
