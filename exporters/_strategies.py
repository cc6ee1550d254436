"""Export strategies, tried in order until one produces an ONNX model.

=========================  ==========================================================================
``dynamo-nonstrict``       torch.export non-strict (runs your Python as is) → torch.onnx (dynamo)
``dynamo-strict``          torch.export strict (TorchDynamo bytecode tracing) → torch.onnx (dynamo);
                           tried only when non-strict *capture* failed
``dynamo-decomp-workaround`` the captured program with every ``aten.contiguous`` rewritten to
                           ``aten.clone(memory_format=contiguous_format)`` before translation. With
                           symbolic shapes the decomposition of ``contiguous`` can drop the copy, and a
                           later ``reshape`` then decomposes to a ``view`` that is impossible
                           ("Cannot view a tensor with shape ..."; T5's encoder, Swin). A real copy
                           keeps the strides right.
``torchscript``            the legacy exporter (``torch.onnx.export(dynamo=False)``) with
                           ``dynamic_axes`` from the same dims; never used automatically when the
                           model branches on tensor values (tracing would bake in one branch)
=========================  ==========================================================================

The dynamo strategies capture at the example sizes, and when torch.export specializes a dynamic dim
there, at other sizes well inside each range (:func:`~torchport.exporters._capture.capture_resizing`)
before the next strategy is tried; the sizes that worked are printed and recorded with the attempt.
Every attempt is printed with its reason when it fails, and recorded (``Attempt``) for the manifest's
``export`` section. ``strategy=NAME`` forces one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir
import torch

from torchport.exporters._capture import capture_resizing
from torchport.exporters._capture_failures import export_error
from torchport.exporters._onnx_export import onnx_from_program, onnx_from_torchscript
from torchport.exporters._registries import STRATEGIES
from torchport.exporters._torch_logs import quiet_torch_logs
from torchport.runtimes._errors import ExportError, UsageError, first_line
from torchport.runtimes._manifest import DimRange, TensorSpec

__all__ = ["STRATEGIES", "Attempt", "ExportPlan", "program_output_dims", "run_strategies"]


@dataclass
class Attempt:
    """One strategy tried: whether it worked, the stage that failed, why, and how long it took."""

    strategy: str
    ok: bool
    seconds: float = 0.0
    stage: str | None = None
    error: str | None = None
    skipped: bool = False
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"strategy": self.strategy, "ok": self.ok, "seconds": round(self.seconds, 3)}
        if self.skipped:
            data["skipped"] = True
        if self.stage:
            data["stage"] = self.stage
        if self.error:
            data["error"] = self.error
        if self.warnings:
            data["warnings"] = list(self.warnings)
        return data

    def __str__(self) -> str:
        if self.ok:
            return f"{self.strategy}: ok ({self.seconds:.1f}s)"
        if self.skipped:
            return f"{self.strategy}: skipped ({self.error})"
        return f"{self.strategy}: {self.stage} failed: {self.error}"


@dataclass
class ExportPlan:
    """Everything a strategy needs: the flat module and inputs, their names, the dims, the opset."""

    module: torch.nn.Module
    flat_inputs: tuple[torch.Tensor, ...]
    specs: Sequence[TensorSpec]
    dynamic_dims: Mapping[str, DimRange]
    input_names: list[str]
    output_names: list[str]
    opset: int | None = None
    scripted: bool = False  #: the user's model is a TorchScript module (torch.export cannot capture it)
    #: the size of each dynamic dim in ``flat_inputs``
    example_sizes: dict[str, int] = field(default_factory=dict)
    #: flat inputs with the dynamic dims at other sizes (capture retries there); ``None``: no retry
    resize: Callable[[Mapping[str, int]], tuple[torch.Tensor, ...]] | None = None
    # runtime state
    captures: dict[str, Any] = field(default_factory=dict)  #: "non-strict"/"strict" -> program | ExportError
    capture_notes: dict[str, list[str]] = field(default_factory=dict)  #: mode -> the sizes that worked
    failures: list[ExportError] = field(default_factory=list)
    used_program: torch.export.ExportedProgram | None = None  #: the program that was translated

    def output_dims(self) -> list[list[int | str | None]] | None:
        """Output shapes of the translated program with the user's dim names (``None`` if unknown)."""
        if self.used_program is None:
            return None
        try:
            return program_output_dims(self.used_program, self.specs)
        except Exception:  # noqa: BLE001 - best effort: names only
            return None

    def captured(self, mode: str) -> torch.export.ExportedProgram:
        """The program captured in ``mode`` (once; later strategies use the inputs that worked)."""
        if mode not in self.captures:
            try:
                got = capture_resizing(
                    self.module,
                    self.flat_inputs,
                    self.specs,
                    self.dynamic_dims,
                    sizes=self.example_sizes,
                    resize=self.resize,
                    strict=mode == "strict",
                )
            except ExportError as e:
                self.captures[mode] = e
            else:
                self.captures[mode] = got.program
                self.flat_inputs, self.example_sizes = got.flat_inputs, got.sizes
                self.capture_notes[mode] = [got.note] if got.note else []
        result = self.captures[mode]
        if isinstance(result, ExportError):
            raise result
        return result

    def any_program(self) -> torch.export.ExportedProgram | None:
        for mode in ("non-strict", "strict"):
            value = self.captures.get(mode)
            if value is not None and not isinstance(value, ExportError):
                return value
        return None

    def data_dependent(self) -> bool:
        return any(getattr(e.failure, "kind", "").startswith("data-dependent") for e in self.failures)


def program_output_dims(
    program: torch.export.ExportedProgram, specs: Sequence[TensorSpec]
) -> list[list[int | str | None]]:
    """Each user output's shape, symbols mapped to the user's dim names through the input specs."""
    names: dict[str, str] = {}
    nodes = {n.name: n for n in program.graph.nodes}
    for input_name, spec in zip(program.graph_signature.user_inputs, specs, strict=False):
        val = nodes[input_name].meta.get("val") if input_name in nodes else None
        if val is None:
            continue
        for d, want in zip(val.shape, spec.shape, strict=False):
            if isinstance(d, torch.SymInt) and isinstance(want, str):
                names.setdefault(str(d.node.expr), want)
    out_node = program.graph.output_node()
    user_outputs = set(program.graph_signature.user_outputs)
    dims: list[list[int | str | None]] = []
    for arg in out_node.args[0]:
        if not isinstance(arg, torch.fx.Node) or arg.name not in user_outputs and user_outputs:
            continue
        val = arg.meta.get("val")
        if val is None or not hasattr(val, "shape"):
            dims.append([])
            continue
        dims.append(
            [int(d) if not isinstance(d, torch.SymInt) else names.get(str(d.node.expr)) for d in val.shape]
        )
    return dims


def _translate(plan: ExportPlan, program: torch.export.ExportedProgram) -> ir.Model:
    try:
        with quiet_torch_logs():
            model = onnx_from_program(
                program, input_names=plan.input_names, output_names=plan.output_names, opset=plan.opset
            )
            plan.used_program = program
            return model
    except Exception as e:  # noqa: BLE001 - analysed and re-raised
        raise export_error("ONNX translation", e, prefix="torch.onnx dynamo exporter", program=program) from e


def _nonstrict(plan: ExportPlan) -> tuple[ir.Model, list[str]]:
    return _translate(plan, plan.captured("non-strict")), plan.capture_notes["non-strict"]


def _strict(plan: ExportPlan) -> tuple[ir.Model, list[str]]:
    return _translate(plan, plan.captured("strict")), plan.capture_notes["strict"]


def rewrite_contiguous(program: torch.export.ExportedProgram) -> int:
    """Replace ``aten.contiguous`` with ``aten.clone(memory_format=contiguous_format)`` in place.

    Returns the number of nodes rewritten.
    """
    count = 0
    for gm in program.graph_module.modules():
        if not isinstance(gm, torch.fx.GraphModule):
            continue
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target is torch.ops.aten.contiguous.default:
                node.target = torch.ops.aten.clone.default
                node.args = node.args[:1]
                node.kwargs = {"memory_format": torch.contiguous_format}
                count += 1
        if count:
            gm.recompile()
    return count


def _decomp_workaround(plan: ExportPlan) -> tuple[ir.Model, list[str]]:
    program = plan.any_program()
    if program is None:
        program = plan.captured("non-strict")
    n = rewrite_contiguous(program)
    notes = [note for mode_notes in plan.capture_notes.values() for note in mode_notes][:1]
    notes += [f"rewrote {n} contiguous() call(s) to clone()"] if n else []
    return _translate(plan, program), notes


def _torchscript(plan: ExportPlan) -> tuple[ir.Model, list[str]]:
    try:
        with quiet_torch_logs():
            model, tracer = onnx_from_torchscript(
                plan.module,
                plan.flat_inputs,
                input_names=plan.input_names,
                output_names=plan.output_names,
                specs=plan.specs,
                opset=plan.opset,
            )
    except Exception as e:  # noqa: BLE001
        raise export_error("ONNX translation", e, prefix="TorchScript exporter") from e
    notes = list(tracer)
    specialized = [
        f.failure.summary
        for f in plan.failures
        if getattr(f.failure, "kind", "") == "dynamic dim specialized"
    ]
    if specialized:
        notes.append(
            f"torch.export reported: {specialized[0]}; the traced model may be right only at the example "
            "sizes: check it with `torchport validate`"
        )
    return model, notes


_RUNNERS: dict[str, Callable[[ExportPlan], tuple[ir.Model, list[str]]]] = {
    "dynamo-nonstrict": _nonstrict,
    "dynamo-strict": _strict,
    "dynamo-decomp-workaround": _decomp_workaround,
    "torchscript": _torchscript,
}


def _skip_reason(name: str, plan: ExportPlan) -> str | None:
    """Why an automatic retry would not help (``None``: try it)."""
    if plan.scripted and name != "torchscript":
        return "a TorchScript module cannot be captured by torch.export"
    if name == "dynamo-strict":
        nonstrict = plan.captures.get("non-strict")
        if nonstrict is not None and not isinstance(nonstrict, ExportError):
            return "non-strict capture worked; the failure was in ONNX translation, which strict capture does not change"
    if name == "dynamo-decomp-workaround":
        if plan.any_program() is None:
            return "no capture succeeded, so there is no program to rewrite"
        if not plan.failures or plan.failures[-1].stage != "ONNX translation":
            return "the previous failure was not in ONNX translation"
        kind = getattr(plan.failures[-1].failure, "kind", "")
        if kind == "unsupported op":
            return "the failure is an op without ONNX translation, which the rewrite does not change"
    if name == "torchscript" and plan.data_dependent():
        return (
            "the model branches on tensor values; TorchScript tracing would silently keep one branch "
            "(force it with --strategy torchscript)"
        )
    return None


def run_strategies(
    plan: ExportPlan,
    *,
    strategy: str | None = None,
    on_retry: Callable[[str], None] | None = None,
) -> tuple[ir.Model, str, list[Attempt]]:
    """Try the strategies in order (or only ``strategy``) and return the first ONNX model.

    Args:
        plan: the module, inputs and dims.
        strategy: force one strategy by name.
        on_retry: called with one line per failed or skipped attempt (the progress display).

    Returns:
        ``(model, strategy name, attempts)``.

    Raises:
        UsageError: unknown strategy name.
        ExportError: every strategy failed. The error is the most telling failure (the first capture
            error with a source line, else the first failure), its message lists every attempt.
    """
    if strategy is not None and strategy not in STRATEGIES:
        raise UsageError(f"unknown --strategy {strategy!r}; use one of: {', '.join(STRATEGIES)}")
    names = [strategy] if strategy else list(STRATEGIES)
    attempts: list[Attempt] = []
    note = on_retry or (lambda _line: None)
    for i, name in enumerate(names):
        if strategy is None:
            reason = _skip_reason(name, plan)
            if reason is not None:
                attempts.append(Attempt(name, ok=False, skipped=True, error=reason))
                note(f"skip {name}: {reason}")
                continue
        if strategy is not None and plan.scripted and name != "torchscript":
            raise UsageError(
                f"--strategy {name} needs torch.export, which cannot capture a TorchScript module; use --strategy torchscript"
            )
        start = time.perf_counter()
        try:
            model, warns = _RUNNERS[name](plan)
        except ExportError as e:
            plan.failures.append(e)
            summary = e.failure.summary if e.failure is not None else first_line(e)
            attempts.append(
                Attempt(name, ok=False, seconds=time.perf_counter() - start, stage=e.stage, error=summary)
            )
            if i + 1 < len(names):
                note(f"{name} failed in {e.stage}: {summary}; trying the next strategy")
            continue
        attempts.append(Attempt(name, ok=True, seconds=time.perf_counter() - start, warnings=list(warns)))
        for w in warns:
            note(f"{name}: {w}")
        return model, name, attempts
    raise _final_error(plan, attempts)


def _final_error(plan: ExportPlan, attempts: list[Attempt]) -> ExportError:
    if not plan.failures:
        return ExportError(
            "every export strategy was skipped: " + "; ".join(str(a) for a in attempts), stage="capture"
        )
    with_location = [e for e in plan.failures if getattr(e.failure, "location", None) is not None]
    captures = [e for e in with_location if e.stage == "capture"]
    best = (captures or with_location or plan.failures)[0]
    tried = "\n".join(f"  - {a}" for a in attempts)
    return ExportError(
        f"{best}\nstrategies tried:\n{tried}",
        stage=best.stage,
        failure=best.failure,
        user_traceback=best.user_traceback,
        original=best.original,
        attempts=attempts,
    )
