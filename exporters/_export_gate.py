"""Optimization and the parity gate inside ``export``: the ``before_commit`` hook of ``export_model``.

``export_model`` writes ``model.onnx`` and the manifest into a temporary folder and calls its
``before_commit`` hook before committing the package. :func:`export_gate` builds that hook:

1. optimize (same options as ``torchport optimize``): ``model.onnx`` replaced by the optimized
   graph, ``model.fp16.onnx`` / ``model.int8.onnx`` written next to it, the passes recorded;
2. validate every variant against the very wrapper that was exported (same inputs flattening,
   same output selection); a failure raises :class:`ValidationError` carrying the parity table and
   the first diverging node, so nothing is written at the destination;
3. record ``parity.json``, ``manifest.parity``, ``validated`` and each ``Variant.parity``.

With ``validate=False`` the package is written unvalidated (``validated: false``,
``extra["validation"] = "skipped"``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from torchport.exporters._onnx_files import save_onnx
from torchport.exporters._optimize import (
    DEFAULT_CALIBRATION_SAMPLES,
    VARIANT_FILES,
    _check_options,
    optimize_model,
)
from torchport.exporters._validate import EagerReference, check_parity
from torchport.runtimes import (
    Manifest,
    UsageError,
    ValidationError,
    Variant,
    dim_sample_points,
    random_inputs,
)
from torchport.runtimes._samples import load_samples


@dataclass
class GateOptions:
    """What ``export`` does between writing ``model.onnx`` and committing the package.

    Attributes:
        level / fp16 / int8 / calibration / disable / provider: as :func:`optimize_package`.
        validate: run the parity gate (default); ``False`` writes the package unvalidated.
        n: generated validation inputs; ``samples``: extra ``.npz`` inputs.
        atol / rtol: override the elementwise tolerance (see :data:`DEFAULT_TOLERANCES`).
    """

    level: str = "none"
    fp16: bool = False
    int8: str | None = None
    calibration: str | os.PathLike[str] | None = None
    disable: Iterable[str] = field(default_factory=tuple)
    provider: str = "cpu"
    validate: bool = True
    n: int = 20
    samples: str | os.PathLike[str] | None = None
    atol: float | None = None
    rtol: float | None = None

    @property
    def optimizes(self) -> bool:
        return self.level != "none" or self.fp16 or self.int8 is not None


def _calibration(manifest: Manifest, options: GateOptions) -> list[dict[str, np.ndarray]]:
    names = [s.name for s in manifest.inputs]
    if options.calibration is not None:
        return load_samples(options.calibration, names, {s.name: s.rank for s in manifest.inputs})
    rng = np.random.default_rng(0)
    points = dim_sample_points(manifest.dynamic_dims, DEFAULT_CALIBRATION_SAMPLES, rng)
    return [
        random_inputs(manifest.inputs, points[i % len(points)], rng)
        for i in range(DEFAULT_CALIBRATION_SAMPLES)
    ]


def export_gate(options: GateOptions) -> Callable[[Any], dict[str, Any] | None]:
    """The ``before_commit`` hook of ``export_model`` for ``options``.

    Raises (from the hook):
        ValidationError: the exported model does not match eager PyTorch (message: the table).
        UsageError / OptimizationError: as :func:`optimize_package`.

    Example:
        >>> export_model(src, "out/m", before_commit=export_gate(GateOptions(level="all")))  # doctest: +SKIP
    """
    disable = _check_options(options.level, options.int8, options.disable)
    if options.calibration is not None and options.int8 != "static":
        raise UsageError("--calibration is only used with --int8 static")

    def hook(ctx: Any) -> dict[str, Any] | None:
        manifest: Manifest = ctx.manifest
        folder = ctx.writer.path
        if options.optimizes:
            with ctx.progress.stage("optimize") as st:
                samples = _calibration(manifest, options) if options.int8 == "static" else None
                proto = onnx.load(str(ctx.model_path))
                variants, records = optimize_model(
                    proto,
                    level=options.level,
                    fp16=options.fp16,
                    int8=options.int8,
                    calibration_samples=samples,
                    disable=disable,
                    provider=options.provider,
                )
                new_variants = dict(manifest.variants)
                for name, model in variants.items():
                    file = VARIANT_FILES[name]
                    data_files = save_onnx(model, folder / file)
                    new_variants[name] = Variant(file=file, precision=name, data_files=data_files)
                extra = dict(manifest.extra)
                offline = [r for r in records if r["name"] == "ort_offline" and not r["skipped"]]
                if offline:
                    extra["ort_offline"] = offline[-1].get("details", {})
                extra["optimization"] = {
                    "level": options.level,
                    "fp16": options.fp16,
                    "int8": options.int8,
                    "disable": list(disable),
                    "provider": options.provider,
                }
                manifest = manifest.replace(variants=new_variants, passes=records, extra=extra)
                fused = sorted({k for r in records for k in r["fused"] if k.startswith("com.microsoft")})
                st.detail = f"level {options.level}, variants {', '.join(variants)}" + (
                    f"; fused {', '.join(f.split('.')[-1] for f in fused)}" if fused else ""
                )
        if not options.validate:
            extra = dict(manifest.extra)
            extra["validation"] = "skipped"
            ctx.manifest = manifest.replace(validated=False, parity=None, extra=extra)
            return None
        with ctx.progress.stage("validate") as st:
            reference = EagerReference.from_flat(ctx.flat, ctx.example, str(ctx.loaded.reference))
            files = {name: folder / v.file for name, v in manifest.variants.items()}
            result = check_parity(
                manifest,
                files,
                reference,
                samples=options.samples,
                n=options.n,
                atol=options.atol,
                rtol=options.rtol,
                provider=options.provider,
            )
            st.detail = (
                f"{'passed' if result else 'FAILED'} on {len(result.cases)} inputs ({', '.join(files)})"
            )
        if not result:
            raise ValidationError(
                "the exported model does not match eager PyTorch; no package was written "
                "(inspect with --no-validate, or loosen --atol/--rtol if the differences are expected)\n"
                f"{result}"
            )
        variants = {}
        for name, v in manifest.variants.items():
            vp = result.variants.get(name)
            variants[name] = Variant(
                file=v.file,
                precision=v.precision,
                parity=vp.summary() if vp else None,
                data_files=list(v.data_files),
            )
        ctx.manifest = manifest.replace(variants=variants, parity=result.summary(), validated=True)
        return result.to_dict()

    return hook


def chain_hooks(
    first: Callable[[Any], dict[str, Any] | None], second: Callable[[Any], dict[str, Any] | None] | None
) -> Callable[[Any], dict[str, Any] | None]:
    """Run ``first`` then ``second`` (which sees the manifest ``first`` left); the later report wins."""
    if second is None:
        return first

    def hook(ctx: Any) -> dict[str, Any] | None:
        report = first(ctx)
        later = second(ctx)
        return later if later is not None else report

    return hook
