"""Parity: how two models' outputs are compared, the result types, and the ``parity.json`` writer.

No torch here: :mod:`torchport.exporters` compares eager PyTorch with the fp32 ONNX model, and
``optimize`` compares each fp16 / int8 variant with that validated fp32 model (ONNX vs ONNX) with
the same metrics and tolerances.

Inputs: the boundaries (all dims at their minimum, all at their maximum) and random points of
every dynamic dim's range (``dim_sample_points``), random values per the input spec (floats
~ N(0, 1), integers within each input's ``value_range``), plus the user's samples (``.npz``).

Per output and variant it measures, over all cases (``ref`` is the reference's output: eager
PyTorch's for the fp32 model, the fp32 model's for a variant):

* ``max_abs``: max |onnx − ref|;
* ``max_rel``: max |onnx − ref| / max |ref| (relative to the output's largest magnitude);
* ``cosine``: the smallest cosine similarity of the flattened output over the cases;
* ``top1`` / ``top5``: the fraction of rows whose argmax (top-5 set) agrees, for outputs that look
  like class logits (2-D float ``[batch, classes]`` with a fixed ``classes >= 2``, named like
  ``logits`` / ``scores`` / ``probs``, or the model's only output);
* ``mismatched``: elements outside ``atol * max(1, max|ref|) + rtol * |ref|``.

The elementwise rule is scale-aware: ``atol`` is relative to the output's largest magnitude (at
least 1), so elements near zero in an output of large magnitude (an FFT's, say: cosine 1.000000,
max relative error 2e-5) are not false alarms, while outputs of magnitude <= 1 keep the absolute
``atol``.

Default tolerances (:data:`DEFAULT_TOLERANCES`), README-ready:

======= ============================================== ===============================================
variant passes when                                    why
======= ============================================== ===============================================
fp32    every element within ``1e-4 * max(1, max|ref|)     same math; only op order / fusions differ
        + 1e-3 * |ref|``
fp16    cosine >= 0.999 and top-1 agreement >= 0.98    10-bit mantissa: elementwise errors of ~1e-3
                                                        relative are expected, direction must hold
int8    cosine >= 0.99 and top-1 agreement >= 0.90     quantization noise; classification must hold
int4    cosine >= 0.95 and top-1 agreement >= 0.75     4-bit weights: 16 levels per block of 32 rows;
                                                        the direction must still hold
======= ============================================== ===============================================

Integer and bool outputs must match exactly for fp32 and agree on >= the top-1 threshold of the
variant otherwise. ``atol`` / ``rtol`` given by the user override these for every variant checked
(adding an elementwise check to fp16 / int8). NaN/Inf must appear in the same places.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from torchport.runtimes._manifest import TensorSpec
from torchport.runtimes._package import ModelPackage, update_package
from torchport.runtimes._table import format_table

__all__ = [
    "DEFAULT_TOLERANCES",
    "InputRange",
    "Localization",
    "OutputParity",
    "ParityResult",
    "Tolerance",
    "VariantParity",
    "compare_output",
    "cosine",
    "looks_like_logits",
    "record_parity",
    "tolerance_for",
]


@dataclass(frozen=True)
class Tolerance:
    """When one variant's outputs count as equal to eager PyTorch.

    Attributes:
        atol / rtol: elementwise ``|onnx - eager| <= atol + rtol * |eager|``; ``None``: not checked.
        min_cosine: smallest allowed cosine similarity per case; ``None``: not checked.
        min_top1: smallest allowed top-1 agreement for logits-like outputs (and agreement of integer
            outputs); ``None``: not checked.
    """

    atol: float | None = None
    rtol: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {
            "atol": self.atol,
            "rtol": self.rtol,
            "min_cosine": self.min_cosine,
            "min_top1": self.min_top1,
        }


#: the default tolerance of each variant (see the module docstring)
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3),
    "fp16": Tolerance(min_cosine=0.999, min_top1=0.98),
    "int8": Tolerance(min_cosine=0.99, min_top1=0.90),
    "int4": Tolerance(min_cosine=0.95, min_top1=0.75),
}

_LOGIT_NAMES = re.compile(r"logit|score|prob|class|pred|output", re.IGNORECASE)


@dataclass
class InputRange:
    """Name, shape and value range of one input of the diverging node."""

    name: str
    shape: tuple[int, ...] | None
    dtype: str | None
    min: float | None
    max: float | None

    def __str__(self) -> str:
        if self.min is None:
            return f"{self.name}: (value not available)"
        return f"{self.name}: {self.dtype}{list(self.shape or ())} in [{self.min:.4g}, {self.max:.4g}]"


@dataclass
class Localization:
    """The first ONNX node whose output diverges from eager PyTorch.

    Attributes:
        found: whether a diverging node was found (falsy when none was).
        node: ONNX node name; ``op_type`` / ``domain`` its op.
        value: the ONNX value compared (named after the FX node).
        fx_node: the matching FX node name; ``fx_target`` its aten op.
        max_abs / max_rel / cosine: the divergence of that value.
        inputs: the node's inputs and their ranges in the ONNX run.
        source: ``file:line`` of the user's code; ``code``: that line.
        module: the submodule that ran the op, ``path (type)``, e.g. ``encoder.layer.0.output (BertOutput)``.
        compared: how many intermediate values were compared before stopping.
        message: why nothing was found, when ``found`` is False.
    """

    found: bool
    node: str | None = None
    op_type: str | None = None
    domain: str = ""
    value: str | None = None
    fx_node: str | None = None
    fx_target: str | None = None
    max_abs: float | None = None
    max_rel: float | None = None
    cosine: float | None = None
    inputs: list[InputRange] = field(default_factory=list)
    source: str | None = None
    code: str | None = None
    module: str | None = None
    compared: int = 0
    message: str = ""

    def __bool__(self) -> bool:
        return self.found

    def to_dict(self) -> dict[str, Any]:
        return {
            "found": self.found,
            "node": self.node,
            "op_type": self.op_type,
            "domain": self.domain,
            "value": self.value,
            "fx_node": self.fx_node,
            "fx_target": self.fx_target,
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "cosine": self.cosine,
            "inputs": [vars(i) | {"shape": list(i.shape) if i.shape else None} for i in self.inputs],
            "source": self.source,
            "code": self.code,
            "module": self.module,
            "compared": self.compared,
            "message": self.message,
        }

    def __str__(self) -> str:
        if not self.found:
            return f"first diverging node: not found ({self.message})"
        op = f"{self.domain}.{self.op_type}" if self.domain else self.op_type
        lines = [
            f"first diverging node: {self.node} ({op}) -> value {self.value!r} "
            f"(FX node {self.fx_node}{f' = {self.fx_target}' if self.fx_target else ''})",
            f"  max abs error {self.max_abs:.3g}, max rel error {self.max_rel:.3g}, cosine {self.cosine:.6f} "
            f"(after {self.compared} matching values)",
        ]
        if self.module:
            lines.append(f"  module: {self.module}")
        for inp in self.inputs:
            lines.append(f"  input {inp}")
        if self.source:
            lines.append(f"  source: {self.source}" + (f"\n    {self.code}" if self.code else ""))
        else:
            lines.append("  source: unknown (no stack trace recorded for this node)")
        return "\n".join(lines)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays, in float64; 1.0 when both are all zeros."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


@dataclass
class OutputParity:
    """The comparison of one output over all cases."""

    name: str
    dtype: str
    max_abs: float = 0.0
    max_rel: float = 0.0
    cosine: float = 1.0
    mean_cosine: float = 1.0
    top1: float | None = None
    top5: float | None = None
    mismatched: int = 0
    total: int = 0
    passed: bool = True
    reasons: list[str] = field(default_factory=list)
    worst_case: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "cosine": self.cosine,
            "mean_cosine": self.mean_cosine,
            "top1": self.top1,
            "top5": self.top5,
            "mismatched": self.mismatched,
            "total": self.total,
            "passed": self.passed,
            "reasons": list(self.reasons),
            "worst_case": self.worst_case,
        }


@dataclass
class VariantParity:
    """The comparison of one variant (``fp32``, ``fp16``, ``int8``) with eager PyTorch."""

    variant: str
    file: str
    tolerance: Tolerance
    outputs: list[OutputParity] = field(default_factory=list)
    #: what it was compared with: ``"eager"`` (eager PyTorch) or ``"fp32"`` (the validated model.onnx)
    reference: str = "eager"
    localization: Localization | None = None
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(o.passed for o in self.outputs)

    def __bool__(self) -> bool:
        return self.passed

    def summary(self) -> dict[str, Any]:
        """The short record stored in the manifest's ``Variant.parity``."""
        return {
            "passed": self.passed,
            "reference": self.reference,
            "tolerance": self.tolerance.to_dict(),
            "min_cosine": min((o.cosine for o in self.outputs), default=None),
            "max_abs": max((o.max_abs for o in self.outputs), default=None),
            "top1": min((o.top1 for o in self.outputs if o.top1 is not None), default=None),
            "error": self.error,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "file": self.file,
            "reference": self.reference,
            "passed": self.passed,
            "tolerance": self.tolerance.to_dict(),
            "outputs": [o.to_dict() for o in self.outputs],
            "localization": self.localization.to_dict() if self.localization is not None else None,
            "error": self.error,
        }


@dataclass
class ParityResult:
    """Eager PyTorch vs ONNX Runtime for every checked variant. Truthy when all pass.

    ``str(result)`` is a table; :meth:`to_dict` is the content of ``parity.json``.
    """

    model: str
    cases: list[str]
    variants: dict[str, VariantParity]
    provider: str = "cpu"
    seconds: float = 0.0
    #: what the variants were compared with, for the report's title
    reference: str = "eager PyTorch"
    #: what the user should know about this run (a source that changed since export...)
    notes: list[str] = field(default_factory=list)
    #: whether the result was written into the package (``parity.json`` and the manifest)
    recorded: bool = False

    @property
    def passed(self) -> bool:
        return bool(self.variants) and all(v.passed for v in self.variants.values())

    def __bool__(self) -> bool:
        return self.passed

    @property
    def localization(self) -> Localization | None:
        """The first failing variant's localization, if any."""
        for v in self.variants.values():
            if v.localization is not None:
                return v.localization
        return None

    def summary(self) -> dict[str, Any]:
        """The short record stored in the manifest's ``parity``."""
        return {
            "passed": self.passed,
            "cases": len(self.cases),
            "provider": self.provider,
            "variants": {k: v.summary()["passed"] for k, v in self.variants.items()},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "model": self.model,
            "reference": self.reference,
            "notes": list(self.notes),
            "provider": self.provider,
            "seconds": round(self.seconds, 3),
            "cases": list(self.cases),
            "variants": {k: v.to_dict() for k, v in self.variants.items()},
        }

    def __str__(self) -> str:
        status = "PASSED" if self.passed else "FAILED"
        rows: list[list[Any]] = []
        for v in self.variants.values():
            if v.error:
                rows.append([v.variant, v.reference, "-", None, None, None, None, None, v.error])
                continue
            for o in v.outputs:
                rows.append(
                    [
                        v.variant,
                        v.reference,
                        o.name[:24],
                        f"{o.max_abs:.3g}",
                        f"{o.max_rel:.3g}",
                        f"{o.cosine:.6f}",
                        f"{o.top1:.3f}" if o.top1 is not None else None,
                        f"{o.top5:.3f}" if o.top5 is not None else None,
                        "ok" if o.passed else "FAIL: " + "; ".join(o.reasons),
                    ]
                )
        table = format_table(
            ["variant", "vs", "output", "max abs", "max rel", "cosine", "top-1", "top-5", "result"], rows
        )
        tol = ", ".join(f"{k}: {_fmt_tol(v.tolerance)}" for k, v in self.variants.items())
        lines = [f"note: {note}" for note in self.notes]
        lines += [
            f"parity {status}: {self.model} vs {self.reference} on {len(self.cases)} inputs ({self.provider})",
            "",
            table,
            "",
            f"tolerances: {tol}",
        ]
        for v in self.variants.values():
            if v.localization is not None:
                lines += ["", f"[{v.variant}] {v.localization}"]
        return "\n".join(lines)


def _fmt_tol(t: Tolerance) -> str:
    parts = []
    if t.atol is not None:
        parts.append(f"atol={t.atol:g} rtol={t.rtol or 0:g}")
    if t.min_cosine is not None:
        parts.append(f"cosine>={t.min_cosine:g}")
    if t.min_top1 is not None:
        parts.append(f"top-1>={t.min_top1:g}")
    return " ".join(parts) or "none"


def looks_like_logits(spec: TensorSpec, n_outputs: int) -> bool:
    """Whether an output looks like class scores (top-k agreement is measured for it)."""
    if spec.dtype not in ("float32", "float16", "float64", "bfloat16") or spec.rank != 2:
        return False
    classes = spec.shape[-1]
    if not isinstance(classes, int) or classes < 2:
        return False
    return bool(_LOGIT_NAMES.search(spec.name)) or n_outputs == 1


def compare_output(
    spec: TensorSpec, got: Sequence[np.ndarray], ref: Sequence[np.ndarray], tol: Tolerance, logits: bool
) -> OutputParity:
    """Compare one output over all cases against ``tol``."""
    res = OutputParity(name=spec.name, dtype=spec.dtype)
    cosines: list[float] = []
    top1_hits = top5_hits = rows = 0
    worst = -1.0
    integer = np.asarray(ref[0]).dtype.kind in "biu"
    for i, (g, r) in enumerate(zip(got, ref, strict=True)):
        g = np.asarray(g)
        r = np.asarray(r)
        if g.shape != r.shape:
            res.passed = False
            res.reasons.append(f"case {i}: shape {list(g.shape)} != eager {list(r.shape)}")
            continue
        res.total += r.size
        if integer:
            bad = int(np.sum(g != r))
            res.mismatched += bad
            res.max_abs = max(res.max_abs, float(np.max(np.abs(g.astype(np.float64) - r))) if r.size else 0.0)
            continue
        g64, r64 = g.astype(np.float64), r.astype(np.float64)
        nan_ok = np.array_equal(np.isnan(g64), np.isnan(r64)) and np.array_equal(np.isinf(g64), np.isinf(r64))
        if not nan_ok:
            res.passed = False
            if "NaN/Inf in different places" not in res.reasons:
                res.reasons.append("NaN/Inf in different places")
        g64, r64 = np.nan_to_num(g64, posinf=0, neginf=0), np.nan_to_num(r64, posinf=0, neginf=0)
        diff = np.abs(g64 - r64)
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(r64).max()) if r64.size else 0.0
        rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        if max_abs > res.max_abs:
            res.worst_case = i
        res.max_abs = max(res.max_abs, max_abs)
        res.max_rel = max(res.max_rel, rel)
        if tol.atol is not None:  # scale-aware: atol is relative to the output's magnitude (at least 1)
            bound = tol.atol * max(1.0, scale) + (tol.rtol or 0.0) * np.abs(r64)
            res.mismatched += int(np.sum(diff > bound))
        c = cosine(g64, r64)
        cosines.append(c)
        if tol.atol is None and -c > worst:
            worst, res.worst_case = -c, i
        if logits and r64.ndim == 2 and r64.shape[0] > 0:
            rows += r64.shape[0]
            top1_hits += int(np.sum(np.argmax(g64, -1) == np.argmax(r64, -1)))
            if r64.shape[1] > 5:
                k = 5
                gs = np.argsort(-g64, -1)[:, :k]
                rs = np.argsort(-r64, -1)[:, :k]
                top5_hits += sum(len(set(a) & set(b)) == k for a, b in zip(gs, rs, strict=True))
    if cosines:
        res.cosine = min(cosines)
        res.mean_cosine = float(np.mean(cosines))
    if rows:
        res.top1 = top1_hits / rows
        res.top5 = top5_hits / rows if ref and np.asarray(ref[0]).shape[-1] > 5 else None
    # verdict
    if integer:
        agree = 1.0 - res.mismatched / max(res.total, 1)
        need = 1.0 if tol.atol is not None else (tol.min_top1 if tol.min_top1 is not None else 1.0)
        if agree < need:
            res.passed = False
            res.reasons.append(f"{res.mismatched}/{res.total} integer elements differ")
        return res
    if tol.atol is not None and res.mismatched:
        res.passed = False
        res.reasons.append(
            f"{res.mismatched}/{res.total} elements beyond atol={tol.atol:g}*max(1,max|ref|)+rtol={tol.rtol or 0:g}*|ref|"
        )
    if tol.min_cosine is not None and res.cosine < tol.min_cosine:
        res.passed = False
        res.reasons.append(f"cosine {res.cosine:.6f} < {tol.min_cosine:g}")
    if tol.min_top1 is not None and res.top1 is not None and res.top1 < tol.min_top1:
        res.passed = False
        res.reasons.append(f"top-1 agreement {res.top1:.3f} < {tol.min_top1:g}")
    return res


def tolerance_for(
    variant: str, atol: float | None, rtol: float | None, tolerances: Mapping[str, Tolerance] | None
) -> Tolerance:
    tol = (tolerances or {}).get(variant) or DEFAULT_TOLERANCES.get(variant) or DEFAULT_TOLERANCES["int8"]
    if atol is not None or rtol is not None:
        base = DEFAULT_TOLERANCES["fp32"]
        tol = replace(
            tol, atol=atol if atol is not None else base.atol, rtol=rtol if rtol is not None else base.rtol
        )
    return tol


def max_deviation(got: np.ndarray, ref: np.ndarray) -> float:
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        return float("inf")
    if got.size == 0:
        return 0.0
    d = np.nan_to_num(np.abs(got.astype(np.float64) - ref.astype(np.float64)), nan=np.inf)
    return float(d.max())


def record_parity(package: ModelPackage, result: ParityResult) -> ModelPackage:
    """Write ``parity.json`` and the parity summary into ``package`` (atomically)."""
    with update_package(package) as w:
        manifest = package.manifest.replace(
            variants={k: replace(v) for k, v in package.manifest.variants.items()}
        )
        for name, vp in result.variants.items():
            manifest.variants[name].parity = vp.summary()
        every_variant_passed = all(v.parity and v.parity.get("passed") for v in manifest.variants.values())
        manifest = manifest.replace(parity=result.summary(), validated=result.passed and every_variant_passed)
        return w.commit(manifest, parity=result.to_dict())
