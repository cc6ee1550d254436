"""Validation against eager PyTorch: the fp32 model's link of the trust chain.

Eager PyTorch and ONNX Runtime run on the same inputs: the boundaries (all dynamic dims at their
minimum, all at their maximum) and random points of every dynamic dim's range, random values per
the input spec (floats ~ N(0, 1), integers within each input's ``value_range``), plus the user's
samples (``.npz``). Outputs are compared with :mod:`torchport.runtimes._parity`'s metrics and
tolerances (:data:`~torchport.runtimes._parity.DEFAULT_TOLERANCES`); on a failure the first
diverging ONNX node is localized.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from torchport.exporters._decoder_validate import check_decoder_package, is_text_generation
from torchport.exporters._dynamic_shapes import flat_dynamic_shapes
from torchport.exporters._eager_reference import EagerReference, eager_outputs, eager_reference
from torchport.exporters._loading import load_model
from torchport.exporters._localize import localize
from torchport.runtimes._errors import UsageError, ValidationError, describe_error
from torchport.runtimes._generate import is_seq2seq
from torchport.runtimes._inputs import dim_sample_points
from torchport.runtimes._manifest import Manifest
from torchport.runtimes._onnx_parity import compare_variant
from torchport.runtimes._package import ModelPackage
from torchport.runtimes._parity import (
    Localization,
    ParityResult,
    Tolerance,
    VariantParity,
    max_deviation,
    record_parity,
    tolerance_for,
)
from torchport.runtimes._samples import load_samples


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


# ---------------------------------------------------------------- running


def _dynamic_shapes(manifest: Manifest) -> Any:
    """``dynamic_shapes`` of ``forward(*tensors)`` as ``export`` captured it (same Dim names and ranges)."""
    return flat_dynamic_shapes(list(manifest.inputs), dict(manifest.dynamic_dims))


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
    start = time.perf_counter()
    reference = eager_reference(model, manifest)
    module = reference.module
    cases = build_cases(manifest, reference, n=n, samples=samples, seed=seed)
    if not cases:
        raise ValidationError("no validation inputs: give --n >= 1 or --samples FILE")
    refs: list[list[np.ndarray]] = []
    for case in cases:
        try:
            refs.append(eager_outputs(module, case.tensors))
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
    feeds = [c.feeds for c in cases]
    for variant, path in model_files.items():
        tol = tolerance_for(variant, atol, rtol, tolerances)
        vp, got = compare_variant(manifest, variant, path, feeds, refs, tol, provider=provider)
        variants[variant] = vp
        if got and not vp.passed and localize_failures and not any(v.localization for v in variants.values()):
            failing = [j for j, o in enumerate(vp.outputs) if not o.passed] or [0]
            deviations = [
                max(max_deviation(got[i][j], refs[i][j]) for j in failing) for i in range(len(cases))
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
    model: Any = None,
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
    record: bool = False,
) -> ParityResult:
    """Validate a model package against the eager PyTorch model it came from.

    Runs eager PyTorch and ONNX Runtime on the same inputs: all dynamic dims at their minimum,
    all at their maximum, random points in between (``n`` cases in all), plus ``samples``. Each
    variant is judged by its tolerance (:data:`DEFAULT_TOLERANCES`). On a failure, the first
    diverging ONNX node is localized (:func:`torchport.exporters.localize`).

    A text-generation package (a decoder with a key/value cache) is run over a batched prompt
    step and ``n`` decode steps instead, each side feeding its own cache back; logits and presents
    are compared, fp32 against eager PyTorch and the other variants against the package's
    ``model.onnx`` (:mod:`torchport.exporters._decoder_validate`).

    With ``write`` (default) ``parity.json`` is written into the package and the manifest's
    ``parity``, ``validated`` and each ``Variant.parity`` are updated, atomically.

    Args:
        package: the package folder (or a loaded package).
        model: the eager model: a source string as ``torchport export`` takes it, a ``LoadedModel``
            or a ``torch.nn.Module``; default: the source the manifest records (an absolute path).
        variants: which variants to check (default: all in the package).
        samples: ``.npz`` of user inputs keyed by input name (a leading axis holds several samples).
        n: number of generated cases (boundaries included); decode steps for a text-generation package.
        atol / rtol: override the elementwise tolerance (for every checked variant).
        tolerances: full per-variant :class:`Tolerance` overrides.
        provider: ONNX Runtime execution provider.
        seed: seed of the generated inputs.
        localize_failures: find the first diverging node when a variant fails.
        write: write ``parity.json`` and update the manifest.
        record: write even when the model's source differs from the one the package was exported
            from (its sha256 changed); by default such a run only reports (``result.notes`` says so).

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
    source = pkg.manifest.source
    if model is None:
        model = source.get("reference")
        if not model or source.get("kind") == "object":
            raise UsageError(
                f"package {pkg.path} records no loadable source; name the model: --model file.py:factory"
            )
    notes: list[str] = []
    if isinstance(model, (str, os.PathLike)):
        model = load_model(str(model))
    recorded_hash, hash_now = source.get("sha256"), getattr(model, "sha256", None)
    source_differs = bool(recorded_hash and hash_now and recorded_hash != hash_now)
    if source_differs:
        notes.append(
            f"the model's source ({model.reference}, sha256 {str(hash_now)[:12]}) differs from the one this "
            f"package was exported from ({source.get('reference')}, sha256 {str(recorded_hash)[:12]})"
            + (
                ""
                if record
                else "; the package's parity record is left as it is (pass --record to replace it)"
            )
        )
    names = list(variants) if variants else list(pkg.manifest.variants)
    for v in names:
        if v not in pkg.manifest.variants:
            raise UsageError(
                f"package {pkg.path} has no variant {v!r}; available: {', '.join(pkg.manifest.variants)}"
            )
    files = {v: pkg.model_path(v) for v in names}
    if is_seq2seq(pkg.manifest):
        from torchport.exporters._seq2seq_export import check_seq2seq_package

        if samples is not None:
            raise UsageError(
                "--samples is not used for an encoder-decoder package (validated over decoder steps)"
            )
        result = check_seq2seq_package(pkg, names, model, steps=n, seed=seed, atol=atol, rtol=rtol)
    elif is_text_generation(pkg.manifest):
        if samples is not None:
            raise UsageError(
                "--samples is not used for a text-generation package: it is validated over a prompt step and "
                "--n decode steps, each fed the previous step's cache"
            )
        result = check_decoder_package(
            pkg,
            files,
            model,
            steps=n,
            seed=seed,
            atol=atol,
            rtol=rtol,
            tolerances=tolerances,
            provider=provider,
        )
    else:
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
    result.notes = notes + result.notes
    if write and (record or not source_differs):
        record_parity(pkg, result)
        result.recorded = True
    return result
