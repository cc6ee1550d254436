"""The parity gate: eager PyTorch vs ONNX Runtime on inputs spread over every dynamic dim's range.

Inputs: the boundaries (all dims at their minimum, all at their maximum) and random points of
every dynamic dim's range (``dim_sample_points``), random values per the input spec (floats
~ N(0, 1), integers within each input's ``value_range``), plus the user's samples (``.npz``).

Per output and variant it measures, over all cases:

* ``max_abs``: max |onnx − eager|;
* ``max_rel``: max |onnx − eager| / max |eager| (relative to the output's largest magnitude);
* ``cosine``: the smallest cosine similarity of the flattened output over the cases;
* ``top1`` / ``top5``: the fraction of rows whose argmax (top-5 set) agrees, for outputs that look
  like class logits (2-D float ``[batch, classes]`` with a fixed ``classes >= 2``, named like
  ``logits`` / ``scores`` / ``probs``, or the model's only output);
* ``mismatched``: elements outside ``atol + rtol * |eager|`` (``numpy.allclose``).

Default tolerances (:data:`DEFAULT_TOLERANCES`), README-ready:

======= ============================================== ===============================================
variant passes when                                    why
======= ============================================== ===============================================
fp32    every element within ``atol=1e-4 + rtol=1e-3 * |eager|``   same math; only op order / fusions differ
fp16    cosine >= 0.999 and top-1 agreement >= 0.98    10-bit mantissa: elementwise errors of ~1e-3
                                                        relative are expected, direction must hold
int8    cosine >= 0.99 and top-1 agreement >= 0.90     quantization noise; classification must hold
======= ============================================== ===============================================

Integer and bool outputs must match exactly for fp32 and agree on >= the top-1 threshold of the
variant otherwise. ``atol`` / ``rtol`` given by the user override these for every variant checked
(adding an elementwise check to fp16 / int8). NaN/Inf must appear in the same places.
"""

from __future__ import annotations

import inspect
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from torchport.exporters._localize import Localization, cosine, localize
from torchport.exporters._onnx_passes import load_samples
from torchport.runtimes import (
    Manifest,
    ModelPackage,
    ProviderError,
    UsageError,
    ValidationError,
    dim_sample_points,
    random_inputs,
    update_package,
)
from torchport.runtimes._errors import describe_error


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
}

_LOGIT_NAMES = re.compile(r"logit|score|prob|class|pred|output", re.IGNORECASE)


# ---------------------------------------------------------------- result objects


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
            "provider": self.provider,
            "seconds": round(self.seconds, 3),
            "cases": list(self.cases),
            "variants": {k: v.to_dict() for k, v in self.variants.items()},
        }

    def __str__(self) -> str:
        status = "PASSED" if self.passed else "FAILED"
        lines = [
            f"parity {status}: {self.model} vs eager PyTorch on {len(self.cases)} inputs ({self.provider})",
            "",
        ]
        header = f"{'variant':<8} {'output':<24} {'max abs':>10} {'max rel':>10} {'cosine':>10} {'top-1':>7} {'top-5':>7}  result"
        lines += [header, "-" * len(header)]
        for v in self.variants.values():
            if v.error:
                lines.append(f"{v.variant:<8} {'-':<24} {v.error}")
                continue
            for o in v.outputs:
                top1 = f"{o.top1:.3f}" if o.top1 is not None else "-"
                top5 = f"{o.top5:.3f}" if o.top5 is not None else "-"
                res = "ok" if o.passed else "FAIL: " + "; ".join(o.reasons)
                lines.append(
                    f"{v.variant:<8} {o.name[:24]:<24} {o.max_abs:10.3g} {o.max_rel:10.3g} {o.cosine:10.6f} {top1:>7} {top5:>7}  {res}"
                )
        tol = ", ".join(f"{k}: {_fmt_tol(v.tolerance)}" for k, v in self.variants.items())
        lines += ["", f"tolerances: {tol}"]
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


# ---------------------------------------------------------------- eager side


@dataclass
class EagerReference:
    """The eager side of the comparison: a module taking the package's inputs as flat tensors.

    Attributes:
        module: ``forward(*tensors)`` with one tensor per manifest input, in order (the same
            :class:`~torchport.exporters._outputs.FlatModule` ``export`` captured, when available),
            returning the outputs in manifest order.
        make: ``make(dims, rng) -> tuple of tensors``: random inputs with the dynamic dims set.
        description: what the model is, for the report.
    """

    module: Any
    make: Callable[[Mapping[str, int], np.random.Generator], tuple[Any, ...]]
    description: str

    @classmethod
    def from_flat(cls, flat: Any, example: Any, description: str) -> EagerReference:
        """From the wrapper and example inputs ``export`` used (its ``before_commit`` context)."""

        def make(dims: Mapping[str, int], rng: np.random.Generator) -> tuple[Any, ...]:
            args, kwargs = example.make(dict(dims), rng)
            return tuple(flat.flat_inputs(args, kwargs))

        return cls(flat, make, description)


def _forward_params(module: Any) -> list[str]:
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return []
    return [p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _by_name_module(module: Any, manifest: Manifest) -> Any:
    """Wrap a plain module as ``forward(*tensors)``: by parameter name when the input names match."""
    import torch

    names = [s.name for s in manifest.inputs]
    by_name = bool(names) and all(n in _forward_params(module) for n in names)

    class Flat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = module

        def forward(self, *tensors: Any) -> Any:
            if by_name:
                return self.model(**dict(zip(names, tensors, strict=True)))
            return self.model(*tensors)

    return Flat().eval()


def _random_make(manifest: Manifest) -> Callable[[Mapping[str, int], np.random.Generator], tuple[Any, ...]]:
    import torch

    def make(dims: Mapping[str, int], rng: np.random.Generator) -> tuple[Any, ...]:
        feeds = random_inputs(manifest.inputs, dims, rng)
        return tuple(torch.from_numpy(feeds[s.name]) for s in manifest.inputs)

    return make


def eager_reference(model: Any, manifest: Manifest) -> EagerReference:
    """The eager reference for a package: from a source string, a ``LoadedModel`` or a module.

    A source is loaded (``load_model``) and wrapped the way ``export`` wrapped it: its own
    example inputs (or, when their names differ from the package's, the package's input specs)
    flattened, and the package's outputs selected by name.
    """
    import torch

    if isinstance(model, EagerReference):
        return model
    if isinstance(model, (str, os.PathLike)):
        from torchport.exporters._loading import load_model

        model = load_model(str(model))
    if isinstance(model, torch.nn.Module):
        return EagerReference(_by_name_module(model, manifest), _random_make(manifest), type(model).__name__)
    module = getattr(model, "module", None)
    if module is None and getattr(model, "exported_program", None) is not None:
        module = model.exported_program.module()
    if module is None:
        raise ValidationError(f"cannot validate against {model!r}: no eager module to run")
    description = str(getattr(model, "reference", type(module).__name__))
    names = [s.name for s in manifest.inputs]
    try:
        from torchport.exporters._example_inputs import ExampleInputs
        from torchport.exporters._example_resolution import resolve_example_inputs
        from torchport.exporters._outputs import FlatModule

        example = None
        try:
            example = resolve_example_inputs(model, None, dict(manifest.dynamic_dims))
        except Exception:
            example = None
        if example is None or [s.name for s in example.specs] != names:
            example = ExampleInputs.from_specs(
                list(manifest.inputs),
                dict(manifest.dynamic_dims),
                signature=getattr(model, "forward_signature", None),
            )
        outputs = [s.name for s in manifest.outputs]
        try:
            flat = FlatModule.build(module, example.args, example.kwargs, outputs)
        except Exception:
            flat = FlatModule.build(module, example.args, example.kwargs, manifest.export.get("outputs"))
        return EagerReference.from_flat(flat, example, description)
    except Exception:  # a model the export wrapper cannot take: call it by input names
        ref = EagerReference(_by_name_module(module, manifest), _random_make(manifest), description)
        return ref


def _eager_outputs(module: Any, tensors: Sequence[Any]) -> list[np.ndarray]:
    import torch
    from torch.utils import _pytree as pytree

    with torch.no_grad():
        out = module(*tensors)
    leaves = [x for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor)]
    return [
        x.detach().cpu().float().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
        for x in leaves
    ]


@dataclass
class _Case:
    label: str
    feeds: dict[str, np.ndarray]
    tensors: tuple[Any, ...]
    dims: dict[str, int] = field(default_factory=dict)


def build_cases(
    manifest: Manifest,
    reference: EagerReference,
    *,
    n: int = 20,
    samples: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> list[_Case]:
    """The validation inputs: dim boundaries + random points (``n`` in all), then user samples."""
    import torch

    rng = np.random.default_rng(seed)
    names = [s.name for s in manifest.inputs]
    cases: list[_Case] = []
    for point in dim_sample_points(manifest.dynamic_dims, n, rng) if n > 0 else []:
        label = ", ".join(f"{k}={v}" for k, v in point.items()) or "fixed shape"
        tensors = tuple(reference.make(point, rng))
        feeds = {name: t.detach().cpu().numpy() for name, t in zip(names, tensors, strict=True)}
        cases.append(_Case(label, feeds, tensors, dict(point)))
    if samples is not None:
        ranks = {s.name: s.rank for s in manifest.inputs}
        for i, feeds in enumerate(load_samples(samples, names, ranks)):
            feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
            tensors = tuple(torch.from_numpy(feeds[k]) for k in names)
            cases.append(_Case(f"sample {i}", feeds, tensors))
    return cases


# ---------------------------------------------------------------- comparison


def _looks_like_logits(spec: Any, n_outputs: int) -> bool:
    if spec.dtype not in ("float32", "float16", "float64", "bfloat16") or spec.rank != 2:
        return False
    classes = spec.shape[-1]
    if not isinstance(classes, int) or classes < 2:
        return False
    return bool(_LOGIT_NAMES.search(spec.name)) or n_outputs == 1


def compare_output(
    spec: Any, got: Sequence[np.ndarray], ref: Sequence[np.ndarray], tol: Tolerance, logits: bool
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
        if tol.atol is not None:
            res.mismatched += int(np.sum(diff > tol.atol + (tol.rtol or 0.0) * np.abs(r64)))
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
            f"{res.mismatched}/{res.total} elements beyond atol={tol.atol:g}+rtol={tol.rtol or 0:g}*|eager|"
        )
    if tol.min_cosine is not None and res.cosine < tol.min_cosine:
        res.passed = False
        res.reasons.append(f"cosine {res.cosine:.6f} < {tol.min_cosine:g}")
    if tol.min_top1 is not None and res.top1 is not None and res.top1 < tol.min_top1:
        res.passed = False
        res.reasons.append(f"top-1 agreement {res.top1:.3f} < {tol.min_top1:g}")
    return res


# ---------------------------------------------------------------- running


def _tolerance(
    variant: str, atol: float | None, rtol: float | None, tolerances: Mapping[str, Tolerance] | None
) -> Tolerance:
    tol = (tolerances or {}).get(variant) or DEFAULT_TOLERANCES.get(variant) or DEFAULT_TOLERANCES["int8"]
    if atol is not None or rtol is not None:
        base = DEFAULT_TOLERANCES["fp32"]
        tol = replace(
            tol, atol=atol if atol is not None else base.atol, rtol=rtol if rtol is not None else base.rtol
        )
    return tol


def _dynamic_shapes(manifest: Manifest) -> Any:
    """``dynamic_shapes`` of ``forward(*tensors)`` as ``export`` captured it (same Dim names and ranges)."""
    from torchport.exporters._dynamic_shapes import flat_dynamic_shapes

    return flat_dynamic_shapes(list(manifest.inputs), dict(manifest.dynamic_dims))


def _deviation(got: np.ndarray, ref: np.ndarray) -> float:
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        return float("inf")
    if got.size == 0:
        return 0.0
    d = np.nan_to_num(np.abs(got.astype(np.float64) - ref.astype(np.float64)), nan=np.inf)
    return float(d.max())


def _localization_case(cases: Sequence[_Case], deviations: Sequence[float]) -> int:
    """The failing case to localize on: the worst one whose dynamic dims are all >= 2 when there is
    one (a size-1 dim specializes in torch.export and the re-captured graph names nodes differently)."""
    order = sorted(range(len(cases)), key=lambda i: -deviations[i])
    for i in order:
        if deviations[i] > 0 and all(v >= 2 for v in cases[i].dims.values()):
            return i
    return order[0]


def check_parity(
    manifest: Manifest,
    model_files: Mapping[str, str | os.PathLike[str]],
    model: Any,
    *,
    samples: str | os.PathLike[str] | None = None,
    n: int = 20,
    atol: float | None = None,
    rtol: float | None = None,
    tolerances: Mapping[str, Tolerance] | None = None,
    provider: str = "cpu",
    seed: int = 0,
    localize_failures: bool = True,
) -> ParityResult:
    """Compare eager PyTorch with ONNX model files (not necessarily a written package yet).

    This is the core of :func:`validate`; ``export`` uses it on the package it is writing.

    Args:
        manifest: the signature and dynamic-dim ranges.
        model_files: ``{variant: path to the .onnx file}``.
        model: the eager model: a source string (``file.py:factory``...), a ``LoadedModel`` or a
            ``torch.nn.Module``.
        (the rest as in :func:`validate`)
    """
    from torchport.runtimes import Session

    start = time.perf_counter()
    reference = eager_reference(model, manifest)
    module = reference.module
    cases = build_cases(manifest, reference, n=n, samples=samples, seed=seed)
    if not cases:
        raise ValidationError("no validation inputs: give --n >= 1 or --samples FILE")
    refs: list[list[np.ndarray]] = []
    for case in cases:
        try:
            refs.append(_eager_outputs(module, case.tensors))
        except Exception as e:
            raise ValidationError(
                f"eager PyTorch failed on validation input ({case.label}): {describe_error(e)}; "
                "check the dynamic dim ranges and value ranges of the package's inputs"
            ) from e
    n_out = len(manifest.outputs)
    if refs and len(refs[0]) != n_out:
        raise ValidationError(
            f"the eager model returns {len(refs[0])} tensors but the ONNX model has {n_out} outputs "
            f"({', '.join(s.name for s in manifest.outputs)}); is --model the model this package was exported from?"
        )
    variants: dict[str, VariantParity] = {}
    for variant, path in model_files.items():
        tol = _tolerance(variant, atol, rtol, tolerances)
        vp = VariantParity(variant=variant, file=Path(path).name, tolerance=tol)
        variants[variant] = vp
        try:
            sess = Session(path, manifest, providers=provider)
            names = sess.output_names
            got = [sess.run(c.feeds) for c in cases]
        except ProviderError:
            raise  # the requested execution provider is missing: the user's setup, not parity
        except Exception as e:
            vp.error = f"ONNX Runtime failed: {describe_error(e)}"
            continue
        for j, spec in enumerate(manifest.outputs):
            name = spec.name if spec.name in names else names[j]
            outs = [g[name] for g in got]
            logits = _looks_like_logits(spec, n_out)
            vp.outputs.append(compare_output(spec, outs, [r[j] for r in refs], tol, logits))
        if not vp.passed and localize_failures and not any(v.localization for v in variants.values()):
            failing = [j for j, o in enumerate(vp.outputs) if not o.passed] or [0]
            deviations = [
                max(
                    _deviation(
                        got[i][
                            names[j] if manifest.outputs[j].name not in names else manifest.outputs[j].name
                        ],
                        refs[i][j],
                    )
                    for j in failing
                )
                for i in range(len(cases))
            ]
            case = cases[_localization_case(cases, deviations)]
            try:
                vp.localization = localize(
                    path,
                    case.feeds,
                    module=module,
                    args=case.tensors,
                    dynamic_shapes=_dynamic_shapes(manifest),
                    atol=tol.atol if tol.atol is not None else 1e-4,
                    rtol=tol.rtol if tol.rtol is not None else 1e-3,
                    min_cosine=None if tol.atol is not None else tol.min_cosine,
                )
                loc = vp.localization
                if loc.module and loc.module.startswith("model."):  # the flat wrapper's attribute
                    loc.module = loc.module[len("model.") :]
            except Exception as e:  # localization is a diagnosis aid; never hide the parity failure
                vp.localization = Localization(
                    found=False, message=f"localization failed: {type(e).__name__}: {e}"
                )
    return ParityResult(
        model=reference.description,
        cases=[c.label for c in cases],
        variants=variants,
        provider=provider,
        seconds=time.perf_counter() - start,
    )


def validate(
    package: str | os.PathLike[str] | ModelPackage,
    model: Any,
    *,
    variants: Sequence[str] | None = None,
    samples: str | os.PathLike[str] | None = None,
    n: int = 20,
    atol: float | None = None,
    rtol: float | None = None,
    tolerances: Mapping[str, Tolerance] | None = None,
    provider: str = "cpu",
    seed: int = 0,
    localize_failures: bool = True,
    write: bool = True,
) -> ParityResult:
    """Validate a model package against the eager PyTorch model it came from.

    Runs eager PyTorch and ONNX Runtime on the same inputs: all dynamic dims at their minimum,
    all at their maximum, random points in between (``n`` cases in all), plus ``samples``. Each
    variant is judged by its tolerance (:data:`DEFAULT_TOLERANCES`). On a failure, the first
    diverging ONNX node is localized (:func:`torchport.exporters.localize`).

    With ``write`` (default) ``parity.json`` is written into the package and the manifest's
    ``parity``, ``validated`` and each ``Variant.parity`` are updated, atomically.

    Args:
        package: the package folder (or a loaded package).
        model: the eager model: a source string as ``torchport export`` takes it, a ``LoadedModel``
            or a ``torch.nn.Module``.
        variants: which variants to check (default: all in the package).
        samples: ``.npz`` of user inputs keyed by input name (a leading axis holds several samples).
        n: number of generated cases (boundaries included).
        atol / rtol: override the elementwise tolerance (for every checked variant).
        tolerances: full per-variant :class:`Tolerance` overrides.
        provider: ONNX Runtime execution provider.
        seed: seed of the generated inputs.
        localize_failures: find the first diverging node when a variant fails.
        write: write ``parity.json`` and update the manifest.

    Returns:
        A :class:`ParityResult`: truthy when every variant passes; ``print`` it for the table.

    Raises:
        ValidationError: validation could not run (eager model fails, output count differs...).
        UsageError: unknown variant, bad sample file.

    Example:
        >>> result = validate("out/cnn", "torchport.exporters.examples.cnn:make_model")  # doctest: +SKIP
        >>> bool(result)
        True
        >>> print(result)
        parity PASSED: ... vs eager PyTorch on 3 inputs (cpu)
    """
    pkg = package if isinstance(package, ModelPackage) else ModelPackage.load(package)
    names = list(variants) if variants else list(pkg.manifest.variants)
    for v in names:
        if v not in pkg.manifest.variants:
            raise UsageError(
                f"package {pkg.path} has no variant {v!r}; available: {', '.join(pkg.manifest.variants)}"
            )
    files = {v: pkg.model_path(v) for v in names}
    result = check_parity(
        pkg.manifest,
        files,
        model,
        samples=samples,
        n=n,
        atol=atol,
        rtol=rtol,
        tolerances=tolerances,
        provider=provider,
        seed=seed,
        localize_failures=localize_failures,
    )
    if write:
        record_parity(pkg, result)
    return result


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
