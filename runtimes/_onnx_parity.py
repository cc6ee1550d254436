"""Running ONNX models on validation inputs and comparing them with a reference: no torch needed.

:func:`compare_variant` runs one ONNX file in ONNX Runtime and compares its outputs with reference
outputs (eager PyTorch's, or the validated fp32 model's). :func:`check_variants` is the variants'
link of the trust chain: every fp16 / int8 variant against the package's validated ``model.onnx``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from torchport.runtimes._errors import ProviderError, ValidationError, describe_error
from torchport.runtimes._inputs import dim_sample_points, random_inputs
from torchport.runtimes._manifest import Manifest
from torchport.runtimes._parity import (
    ParityResult,
    Tolerance,
    VariantParity,
    compare_output,
    looks_like_logits,
    tolerance_for,
)
from torchport.runtimes._samples import load_samples
from torchport.runtimes._session import Session

__all__ = ["ParityCase", "check_variants", "compare_variant", "parity_cases", "run_outputs"]


@dataclass
class ParityCase:
    """One validation input: a label for the report, the ONNX feeds and the dynamic dims' sizes."""

    label: str
    feeds: dict[str, np.ndarray]
    dims: dict[str, int] = field(default_factory=dict)


def parity_cases(
    manifest: Manifest,
    *,
    n: int = 20,
    samples: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> list[ParityCase]:
    """Validation inputs from the signature alone: dim boundaries + random points (``n`` in all),
    then the user's ``samples`` (``.npz``)."""
    rng = np.random.default_rng(seed)
    cases = []
    for point in dim_sample_points(manifest.dynamic_dims, n, rng) if n > 0 else []:
        label = ", ".join(f"{k}={v}" for k, v in point.items()) or "fixed shape"
        cases.append(ParityCase(label, random_inputs(manifest.inputs, point, rng), dict(point)))
    if samples is not None:
        names = [s.name for s in manifest.inputs]
        ranks = {s.name: s.rank for s in manifest.inputs}
        for i, feeds in enumerate(load_samples(samples, names, ranks)):
            cases.append(ParityCase(f"sample {i}", {k: np.ascontiguousarray(v) for k, v in feeds.items()}))
    return cases


def run_outputs(
    manifest: Manifest,
    path: str | os.PathLike[str],
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    provider: str = "cpu",
) -> list[list[np.ndarray]]:
    """The outputs of the ONNX model at ``path`` for each feed, in manifest order."""
    # fatal only: a failing run is recorded in the parity result, ORT's own error line would repeat it
    sess = Session(path, manifest, providers=provider, log_severity=4)
    names = sess.output_names
    keys = [spec.name if spec.name in names else names[j] for j, spec in enumerate(manifest.outputs)]
    return [[run[k] for k in keys] for run in (sess.run(dict(f)) for f in feeds)]


def compare_variant(
    manifest: Manifest,
    variant: str,
    path: str | os.PathLike[str],
    feeds: Sequence[Mapping[str, np.ndarray]],
    refs: Sequence[Sequence[np.ndarray]],
    tolerance: Tolerance,
    *,
    provider: str = "cpu",
    reference: str = "eager",
) -> tuple[VariantParity, list[list[np.ndarray]]]:
    """Run ``path`` on every feed and compare its outputs (manifest order) with ``refs``.

    Returns:
        The :class:`VariantParity` and the model's outputs per case (empty when ONNX Runtime failed,
        which the result records as its ``error``).

    Raises:
        ProviderError: the execution provider is not available (the user's set-up, not parity).
    """
    vp = VariantParity(variant=variant, file=Path(path).name, tolerance=tolerance, reference=reference)
    try:
        got = run_outputs(manifest, path, feeds, provider=provider)
    except ProviderError:
        raise
    except Exception as e:  # noqa: BLE001 - the model failing to run is this variant's result
        vp.error = f"ONNX Runtime failed: {describe_error(e)}"
        return vp, []
    n_out = len(manifest.outputs)
    for j, spec in enumerate(manifest.outputs):
        vp.outputs.append(
            compare_output(
                spec, [g[j] for g in got], [r[j] for r in refs], tolerance, looks_like_logits(spec, n_out)
            )
        )
    return vp, got


def check_variants(
    manifest: Manifest,
    fp32_file: str | os.PathLike[str],
    variant_files: Mapping[str, str | os.PathLike[str]],
    *,
    n: int = 20,
    samples: str | os.PathLike[str] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    tolerances: Mapping[str, Tolerance] | None = None,
    provider: str = "cpu",
    seed: int = 0,
) -> ParityResult:
    """Compare each variant with the fp32 model (ONNX vs ONNX) with the variant's tolerance.

    The fp32 model is the reference: it was validated against eager PyTorch, so a variant that
    matches it within its tolerance matches the eager model too (the trust chain).

    Args:
        manifest: the package's signature and dynamic-dim ranges.
        fp32_file: the validated ``model.onnx``.
        variant_files: ``{"fp16": path, "int8": path}``.
        (the rest as in :func:`torchport.exporters.validate`)

    Returns:
        A :class:`ParityResult` whose variants have ``reference == "fp32"``; truthy when all pass.

    Example:
        >>> result = check_variants(manifest, "pkg/model.onnx", {"int8": "pkg/model.int8.onnx"})  # doctest: +SKIP
        >>> result.variants["int8"].reference
        'fp32'
    """
    start = time.perf_counter()
    cases = parity_cases(manifest, n=n, samples=samples, seed=seed)
    if not cases:
        raise ValidationError("no validation inputs: give --n >= 1 or --samples FILE")
    feeds = [c.feeds for c in cases]
    try:
        refs = run_outputs(manifest, fp32_file, feeds, provider=provider)
    except ProviderError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ValidationError(
            f"the fp32 model {Path(fp32_file).name} does not run: {describe_error(e)}"
        ) from e
    variants = {
        name: compare_variant(
            manifest,
            name,
            path,
            feeds,
            refs,
            tolerance_for(name, atol, rtol, tolerances),
            provider=provider,
            reference="fp32",
        )[0]
        for name, path in variant_files.items()
    }
    return ParityResult(
        model=f"{', '.join(variant_files)} of {manifest.name}",
        cases=[c.label for c in cases],
        variants=variants,
        provider=provider,
        seconds=time.perf_counter() - start,
        reference=f"{Path(fp32_file).name} (fp32)",
    )
