"""Turning capture and ONNX translation failures into errors a user can act on.

:func:`analyze_failure` reads an exception and its traceback for

* the kind of failure (data-dependent control flow, a dynamic dim torch.export had to specialize,
  an op without an ONNX translation, a view the decompositions cannot express...),
* the op involved, when the error names one,
* the innermost frame in the user's code (:mod:`~torchport.exporters._source_lines`),
* what to try next,

and :func:`export_error` turns that into an :class:`~torchport.runtimes.ExportError` carrying the
analysis (``.failure``) and the traceback to open ``--pdb`` at (``.user_traceback``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from torchport.exporters._registries import STRATEGIES
from torchport.exporters._source_lines import (
    SourceLocation,
    location_in_exception,
    location_in_text,
    user_traceback,
    walk_exceptions,
)
from torchport.exporters._torch_logs import quiet_torch_logs
from torchport.runtimes._errors import ExportError, first_line

__all__ = ["CaptureFailure", "analyze_failure", "export_error", "format_failure"]


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
        dims: the dynamic dims torch.export could not keep symbolic (``"dynamic dim specialized"``).
    """

    kind: str
    summary: str
    op: str | None = None
    location: SourceLocation | None = None
    hint: str = ""
    detail: list[str] = field(default_factory=list)
    dims: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "summary": self.summary,
            "op": self.op,
            "location": self.location.to_dict() if self.location else None,
            "hint": self.hint,
        }


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


def _message_line(text: str) -> str:
    """The first line of ``text`` that is not torch's log output (``[...]`` prefixes, colour codes)."""
    return first_line(
        "\n".join(ln for ln in str(text).splitlines() if not ln.strip().startswith(("[", "\x1b")))
    )


def _exception_summary(text: str) -> str:
    """The ``<class ...>: message`` line torch.onnx puts under "## Exception summary", if any."""
    m = re.search(r"## Exception summary\s*\n\s*\n?(?P<line>.+)", text)
    if m:
        return re.sub(r"^<class '([\w.]+)'>:\s*", r"\1: ", m.group("line").strip())
    return _message_line(text)


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
    texts = [str(e) for e in walk_exceptions(exc)]
    text = "\n".join(texts)
    loc = location_in_exception(exc)
    type_names = {type(e).__name__ for e in walk_exceptions(exc)}
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
        m = re.search(r"Constraints violated \(([^)]*)\)", text)
        dims = [d.strip() for d in m.group(1).split(",") if d.strip()] if m else []
        dims = list(dict.fromkeys([d for d, _ in specialized] + dims))
        tied = re.search(r"The values of (\w+) = .*? and (\w+) = .*? must always be equal", text)
        if specialized:
            what = ", ".join(f"{d!r} to {v}" for d, v in specialized)
            summary = f"the model fixes dynamic dim {what} (torch.export had to specialize it)"
        elif tied:
            summary = (
                f"the model ties dynamic dim {tied.group(1)!r} to {tied.group(2)!r} (torch.export requires them "
                "always equal)"
            )
        else:
            summary = (
                f"torch.export could not keep dynamic dim(s) {m.group(1) if m else ''} symbolic".replace(
                    "  ", " "
                )
            )
            detail = [_message_line(line) for line in re.findall(r"^\s*- (.+)$", text, re.M)][:3]
        hint = (
            "make the dim fixed (write its size in --input) or narrow its --dim range to what the model allows"
            + (" (torch.export suggests: " + "; ".join(fixes) + ")" if fixes else "")
            + "; torchport also retries at other example sizes, then with --strategy torchscript, which "
            "keeps dims dynamic by tracing"
        )
        return CaptureFailure(
            "dynamic dim specialized",
            summary,
            op=op,
            location=loc,
            hint=hint,
            detail=detail,
            dims=dims,
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
            _message_line(text),
            op=op,
            location=loc,
            hint="non-strict capture runs your Python as is; fix the line above or use --strategy dynamo-nonstrict",
        )
    summary = (
        _exception_summary(text) if stage != "capture" else f"{type(exc).__name__}: {_message_line(str(exc))}"
    )
    return CaptureFailure(
        "error",
        summary,
        op=op,
        location=loc,
        hint=f"try another --strategy ({', '.join(STRATEGIES)})",
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
                return location_in_text(trace)
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
    if isinstance(exc, ExportError) and exc.failure is not None:
        return exc
    with quiet_torch_logs():  # reading some torch errors prints their partial graph
        failure = analyze_failure(exc, stage)
    if failure.location is None and failure.op and program is not None:
        try:
            failure.location = _location_in_program(program, failure.op)
        except Exception:  # noqa: BLE001 - best effort
            failure.location = None
    return ExportError(
        format_failure(failure, stage, prefix),
        stage=stage,
        failure=failure,
        user_traceback=user_traceback(exc),
        original=exc,
    )
