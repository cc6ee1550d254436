"""Capture with torch.export, and turning capture/translation failures into errors a user can act on.

:func:`capture` runs :func:`torch.export.export` (non-strict or strict) on a
:class:`~torchport.exporters._outputs.FlatModule` with the user's dynamic dims. When it fails,
:func:`analyze_failure` reads the exception and its traceback for

* the kind of failure (data-dependent control flow, a dynamic dim torch.export had to specialize,
  an op without an ONNX translation, a view the decompositions cannot express...),
* the op involved, when the error names one,
* the innermost frame in the user's code (not torch's, not torchport's), with its source line,
* what to try next,

and :func:`export_error` turns that into an :class:`~torchport.runtimes.ExportError` carrying the
analysis (``.failure``) and the traceback to open ``--pdb`` at (``.user_traceback``).
"""

from __future__ import annotations

import io
import linecache
import logging
import os
import re
import sys
import sysconfig
import types
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from torchport.runtimes._errors import ExportError
from torchport.runtimes._manifest import DimRange, TensorSpec

__all__ = [
    "CaptureFailure",
    "SourceLocation",
    "analyze_failure",
    "capture",
    "export_error",
    "make_dynamic_shapes",
]

_TORCH_DIR = str(Path(torch.__file__).resolve().parent)
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


@dataclass
class CaptureFailure:
    """What :func:`analyze_failure` learned from an exception.

    Attributes:
        kind: ``"data-dependent control flow"``, ``"data-dependent value"``, ``"dynamic dim specialized"``,
            ``"view decomposition"``, ``"unsupported op"``, ``"dynamo unsupported"`` or ``"error"``.
        summary: one line describing the failure.
        op: the ATen op or Python construct involved, when known.
        location: the user's source line, when found.
        hint: what to try.
        detail: extra lines (suggested fixes from torch.export, the failing graph node...).
    """

    kind: str
    summary: str
    op: str | None = None
    location: SourceLocation | None = None
    hint: str = ""
    detail: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "summary": self.summary,
            "op": self.op,
            "location": self.location.to_dict() if self.location else None,
            "hint": self.hint,
        }


# --------------------------------------------------------------------------- dynamic shapes


def make_dynamic_shapes(
    specs: Sequence[TensorSpec], dynamic_dims: Mapping[str, DimRange]
) -> tuple[tuple[dict[int, Any] | None, ...]]:
    """``dynamic_shapes`` for a :class:`FlatModule` (``forward(*tensors)``) from the input specs.

    Each named dim becomes one :class:`torch.export.Dim` shared by every input that uses it; a dim whose
    range holds one size (``--dim n=5..5``) stays static.

    Example:
        >>> specs = [TensorSpec("x", "float32", ["batch", 16])]
        >>> make_dynamic_shapes(specs, {"batch": DimRange(1, 64)})
        (({0: Dim('batch', min=1, max=64)},),)
    """
    dims: dict[str, Any] = {}
    per_input: list[dict[int, Any] | None] = []
    for spec in specs:
        axes: dict[int, Any] = {}
        for axis, d in enumerate(spec.shape):
            if isinstance(d, str):
                rng = dynamic_dims.get(d)
                if rng is not None and rng.min == rng.max:
                    continue
                if d not in dims:
                    rng = dynamic_dims.get(d)
                    low, high = (rng.min, rng.max) if rng is not None else (1, None)
                    dims[d] = (
                        torch.export.Dim(d, min=low, max=high) if high is not None else torch.export.Dim(d)
                    )
                axes[axis] = dims[d]
        per_input.append(axes or None)
    return (tuple(per_input),)


@contextmanager
def quiet_torch_logs(enabled: bool = True) -> Iterator[None]:
    """Silence torch's export/dynamo loggers (they print graphs, guards and hints on failures that we
    analyse and report ourselves) and Python warnings raised while tracing."""
    if not enabled:
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    sink = io.StringIO()  # torch prints partial graphs on some failures; the analysis reports them
    try:
        with warnings.catch_warnings(), redirect_stdout(sink), redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def capture(
    module: torch.nn.Module,
    flat_inputs: tuple[torch.Tensor, ...],
    specs: Sequence[TensorSpec],
    dynamic_dims: Mapping[str, DimRange],
    *,
    strict: bool = False,
) -> torch.export.ExportedProgram:
    """Capture ``module`` (a :class:`FlatModule`) with torch.export and the given dynamic dims.

    Raises:
        ExportError: stage ``"capture"``, with ``.failure`` (:class:`CaptureFailure`) and
            ``.user_traceback``.

    Example:
        >>> flat = FlatModule.build(torch.nn.Linear(4, 2), (torch.randn(3, 4),))
        >>> ep = capture(flat, (torch.randn(3, 4),), [TensorSpec("x", "float32", ["batch", 4])],
        ...              {"batch": DimRange(1, 8)})
    """
    dynamic_shapes = make_dynamic_shapes(specs, dynamic_dims)
    try:
        with quiet_torch_logs():
            return torch.export.export(
                module, tuple(flat_inputs), dynamic_shapes=dynamic_shapes, strict=strict
            )
    except Exception as e:  # noqa: BLE001 - every capture failure is analysed and re-raised
        mode = "strict" if strict else "non-strict"
        raise export_error("capture", e, prefix=f"torch.export ({mode}) failed") from e


# --------------------------------------------------------------------------- failure analysis


def _is_user_file(filename: str) -> bool:
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


def _walk_tracebacks(exc: BaseException) -> Iterator[BaseException]:
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
    for e in _walk_tracebacks(exc):
        entries: list[types.TracebackType] = []
        tb = e.__traceback__
        while tb is not None:
            entries.append(tb)
            tb = tb.tb_next
        user = [i for i, t in enumerate(entries) if _is_user_file(t.tb_frame.f_code.co_filename)]
        if not user:
            continue
        # innermost user frame; rebuild the chain so it ends there (pdb opens at the last entry)
        cut = user[-1]
        new_tb = None
        for t in reversed(entries[: cut + 1]):
            new_tb = types.TracebackType(new_tb, t.tb_frame, t.tb_lasti, t.tb_lineno)
        return new_tb
    return None


def _location_from_traceback(exc: BaseException) -> SourceLocation | None:
    tb = user_traceback(exc)
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    line = linecache.getline(code.co_filename, tb.tb_lineno).strip()
    return SourceLocation(code.co_filename, tb.tb_lineno, code.co_name, line)


_FILE_LINE_RE = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)(?:, in (?P<func>[\w<>.]+))?')
_FX_FILE_RE = re.compile(r"# File: (?P<file>[^:\s]+):(?P<line>\d+) in (?P<func>[\w<>.]+)")


def _location_from_text(text: str) -> SourceLocation | None:
    """The innermost user ``File "...", line N`` in an error message (dynamo and ONNX errors quote them)."""
    found = None
    for m in list(_FILE_LINE_RE.finditer(text)) + list(_FX_FILE_RE.finditer(text)):
        if _is_user_file(m.group("file")):
            loc = SourceLocation(m.group("file"), int(m.group("line")), m.group("func") or "")
            loc.line = linecache.getline(loc.filename, loc.lineno).strip()
            found = loc
    return found


def _location(exc: BaseException) -> SourceLocation | None:
    loc = _location_from_traceback(exc)
    if loc is not None:
        return loc
    for e in _walk_tracebacks(exc):
        frame = getattr(e, "innermost_user_frame_summary", None)
        if frame is not None and _is_user_file(frame.filename):
            return SourceLocation(frame.filename, frame.lineno, frame.name, (frame.line or "").strip())
        real_stack = getattr(e, "real_stack", None)
        if real_stack:
            for frame in reversed(list(real_stack)):
                if _is_user_file(frame.filename):
                    return SourceLocation(
                        frame.filename, frame.lineno, frame.name, (frame.line or "").strip()
                    )
    for e in _walk_tracebacks(exc):
        loc = _location_from_text(str(e))
        if loc is not None:
            return loc
    return None


_OP_RES = (
    re.compile(r"target=(?P<op>torch\.ops\.[\w.]+)"),
    re.compile(r"(?P<op>torch\.ops\.aten\.[\w.]+)"),
    re.compile(r"(?P<op>aten::[\w.]+)"),
    re.compile(r"(?P<op>aten\.[a-z_0-9]+\.[a-zA-Z_0-9]+)"),
)


def _find_op(text: str) -> str | None:
    for rx in _OP_RES:
        m = rx.search(text)
        if m:
            op = m.group("op")
            return op.replace("torch.ops.", "") if op.startswith("torch.ops.") else op
    return None


def _first_line(text: str) -> str:
    for line in str(text).splitlines():
        line = line.strip()
        if line and not line.startswith(("[", "\x1b")):
            return line
    return str(text).strip()


def _exception_summary(text: str) -> str:
    """The ``<class ...>: message`` line torch.onnx puts under "## Exception summary", if any."""
    m = re.search(r"## Exception summary\s*\n\s*\n?(?P<line>.+)", text)
    if m:
        return re.sub(r"^<class '([\w.]+)'>:\s*", r"\1: ", m.group("line").strip())
    return _first_line(text)


def _cond_hint(loc: SourceLocation | None) -> str:
    pred = "pred"
    if loc and loc.line:
        m = re.match(r"\s*(?:el)?if\s+(?P<cond>.+?)\s*:\s*$", loc.line)
        if m:
            pred = m.group("cond")
        else:
            m = re.match(r"\s*while\s+(?P<cond>.+?)\s*:\s*$", loc.line)
            if m:
                pred = m.group("cond")
    return (
        f"rewrite the branch as torch.cond({pred}, true_fn, false_fn, (x,)) where true_fn/false_fn take the "
        "tensors they use and return tensors of the same shape and dtype, or make it branchless with "
        "torch.where(...)"
    )


def analyze_failure(exc: BaseException, stage: str) -> CaptureFailure:
    """Classify a capture or ONNX translation exception and find the op and the user's line.

    Example:
        >>> failure = analyze_failure(err, "capture")        # doctest: +SKIP
        >>> failure.kind, str(failure.location)
        ('data-dependent control flow', 'model.py:12 in forward')
    """
    texts = [str(e) for e in _walk_tracebacks(exc)]
    text = "\n".join(texts)
    loc = _location(exc)
    type_names = {type(e).__name__ for e in _walk_tracebacks(exc)}
    op = _find_op(text)
    detail: list[str] = []

    if (
        "GuardOnDataDependentSymNode" in type_names
        or "Data-dependent branching" in text
        or ("data-dependent" in text.lower() and "guard" in text.lower())
    ):
        branching = bool(loc and re.match(r"\s*(el)?if\b|\s*while\b|.*\bif\b.*\belse\b", loc.line or "")) or (
            "branching" in text
        )
        if branching:
            return CaptureFailure(
                "data-dependent control flow",
                "the model branches on a tensor's value (data-dependent control flow), which torch.export "
                "cannot capture",
                op="if <tensor>",
                location=loc,
                hint=_cond_hint(loc),
            )
        return CaptureFailure(
            "data-dependent value",
            "the model uses a tensor's value as a Python number or shape (.item(), int(tensor), nonzero...), "
            "which torch.export cannot capture with symbolic shapes",
            op=op,
            location=loc,
            hint="keep the value as a tensor (torch.where, masking) or add torch._check(...) on it; "
            "for a value that is really constant, compute it outside forward()",
        )
    if "Constraints violated" in text or ("specialized" in text.lower() and "dim" in text.lower()):
        fixes = list(
            dict.fromkeys(f.strip() for f in re.findall(r"^\s*(\w+ = Dim\(.*\)|\w+ = \d+)\s*$", text, re.M))
        )
        specialized = list(
            dict.fromkeys(
                re.findall(
                    r"You marked (\w+) as dynamic but your code specialized it to be a constant \((\d+)\)",
                    text,
                )
            )
        )
        if specialized:
            what = ", ".join(f"{d!r} to {v}" for d, v in specialized)
            summary = f"the model fixes dynamic dim {what} (torch.export had to specialize it)"
        else:
            m = re.search(r"Constraints violated \(([^)]*)\)", text)
            summary = (
                f"torch.export could not keep dynamic dim(s) {m.group(1) if m else ''} symbolic".replace(
                    "  ", " "
                )
            )
            detail = [_first_line(line) for line in re.findall(r"^\s*- (.+)$", text, re.M)][:3]
        hint = (
            "make the dim fixed (write its size in --input) or narrow its --dim range to what the model allows"
            + (" (torch.export suggests: " + "; ".join(fixes) + ")" if fixes else "")
            + "; torchport also retries with --strategy torchscript, which keeps dims dynamic by tracing"
        )
        return CaptureFailure(
            "dynamic dim specialized",
            summary,
            op=op,
            location=loc,
            hint=hint,
            detail=detail,
        )
    if "Cannot view a tensor with shape" in text:
        return CaptureFailure(
            "view decomposition",
            _exception_summary(text),
            op=op or "aten.view.default",
            location=loc,
            hint="torchport retries with --strategy dynamo-decomp-workaround (contiguous() → clone), then "
            "--strategy torchscript",
        )
    m = re.search(
        r"No ONNX function found for <OpOverload\(op='(?P<op>[\w.]+)', overload='(?P<ov>\w+)'\)>", text
    )
    unsupported = f"{m.group('op')}.{m.group('ov')}" if m else None
    if unsupported is None:
        m = re.search(
            r"(?:Unsupported|unsupported) (?:FX nodes|operator)[^\n]*?(?P<op>(?:aten|torch\.ops)[\w.:]+)",
            text,
        )
        unsupported = m.group("op") if m else None
    if unsupported is not None:
        return CaptureFailure(
            "unsupported op",
            f"no ONNX translation for {unsupported}",
            op=unsupported,
            location=loc,
            hint="try --strategy torchscript, replace the op in the model, or register a translation with "
            "torch.onnx.export(custom_translation_table=...)",
        )
    if "Unsupported" in type_names or "torch._dynamo.exc" in text:
        return CaptureFailure(
            "dynamo unsupported",
            _first_line(text),
            op=op,
            location=loc,
            hint="non-strict capture runs your Python as is; fix the line above or use --strategy dynamo-nonstrict",
        )
    summary = (
        _exception_summary(text) if stage != "capture" else f"{type(exc).__name__}: {_first_line(str(exc))}"
    )
    return CaptureFailure(
        "error",
        summary,
        op=op,
        location=loc,
        hint="try another --strategy (dynamo-nonstrict, dynamo-strict, dynamo-decomp-workaround, torchscript)",
    )


def format_failure(failure: CaptureFailure, stage: str, prefix: str | None = None) -> str:
    """The user-facing message: what failed, where (file:line and the code), the op, what to try."""
    head = f"{stage} failed" + (f" ({prefix})" if prefix else "") + f": {failure.summary}"
    lines = [head]
    if failure.location is not None:
        lines.append(f"  at {failure.location}")
        if failure.location.line:
            lines.append(f"      {failure.location.line}")
    if failure.op:
        lines.append(f"  op: {failure.op}")
    lines += [f"  {d}" for d in failure.detail]
    if failure.hint:
        lines.append(f"  to fix: {failure.hint}")
    return "\n".join(lines)


def _location_in_program(program: Any, op: str) -> SourceLocation | None:
    """The user's line that produced the first graph node calling ``op`` (from the node's stack trace)."""
    short = op.replace("torch.ops.", "")
    for node in program.graph.nodes:
        if node.op == "call_function" and str(node.target).replace("torch.ops.", "") in (
            short,
            short + ".default",
        ):
            trace = node.meta.get("stack_trace")
            if trace:
                return _location_from_text(trace)
    return None


def export_error(
    stage: str, exc: BaseException, *, prefix: str | None = None, program: Any = None
) -> ExportError:
    """An :class:`ExportError` for ``exc`` with the analysis and the user traceback attached.

    Args:
        stage: ``"capture"``, ``"ONNX translation"``...
        exc: the exception.
        prefix: what was running (``"torch.export (non-strict) failed"``).
        program: the ExportedProgram being translated, to find the user's line of a failing op.

    Attributes set on the error: ``failure`` (:class:`CaptureFailure`), ``user_traceback`` (a traceback
    ending in the user's frame, or ``None``), ``original`` (``exc``).
    """
    if isinstance(exc, ExportError) and getattr(exc, "failure", None) is not None:
        return exc
    with quiet_torch_logs():  # reading some torch errors prints their partial graph
        failure = analyze_failure(exc, stage)
    if failure.location is None and failure.op and program is not None:
        try:
            failure.location = _location_in_program(program, failure.op)
        except Exception:  # noqa: BLE001 - best effort
            failure.location = None
    err = ExportError(format_failure(failure, stage, prefix), stage=stage)
    err.failure = failure  # type: ignore[attr-defined]
    err.user_traceback = user_traceback(exc)  # type: ignore[attr-defined]
    err.original = exc  # type: ignore[attr-defined]
    return err


def debug_post_mortem(err: BaseException, stdin: Any = None, stdout: Any = None) -> bool:
    """Open pdb at the failing frame of the user's code (``--pdb``).

    Falls back to the innermost frame of the original exception when no user frame is known.
    Returns False when there is no traceback at all.
    """
    import pdb

    tb = getattr(err, "user_traceback", None)
    if tb is None:
        original = getattr(err, "original", None) or err.__cause__ or err
        tb = original.__traceback__
    if tb is None:
        return False
    debugger = pdb.Pdb(stdin=stdin or sys.stdin, stdout=stdout or sys.stdout)
    debugger.reset()
    debugger.interaction(None, tb)
    return True
