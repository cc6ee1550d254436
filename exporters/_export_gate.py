"""The parity gate inside ``export``: the ``before_commit`` hook of ``export_model``.

``export_model`` writes ``model.onnx`` and the manifest into a temporary folder and calls its
``before_commit`` hook before committing the package. :func:`export_gate` builds that hook from
the two stages it composes, in trust-chain order:

1. validate ``model.onnx`` against the very wrapper that was exported (same input flattening,
   same output selection) — :func:`~torchport.exporters._validate.check_parity`; a failure
   raises :class:`ValidationError` carrying the parity table and the first diverging node, so
   nothing is written at the destination;
2. optimize (same options as ``torchport optimize``) — :func:`~torchport.exporters._optimize.optimize_folder`:
   ``model.onnx`` replaced by the optimized graph, ``model.fp16.onnx`` / ``model.int8.onnx``
   written next to it, each validated against the fp32 model of step 1 (ONNX vs ONNX); a variant
   that does not match refuses the package too.

With ``validate=False`` the package is optimized but written unvalidated (``validated: false``,
``extra["validation"] = "skipped"``).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchport.exporters._eager_reference import EagerReference
from torchport.exporters._export_context import BeforeCommit, ExportContext
from torchport.exporters._optimize import OptimizeOptions, optimize_folder
from torchport.exporters._validate import check_parity
from torchport.runtimes._errors import ValidationError
from torchport.runtimes._manifest import Manifest, Variant
from torchport.runtimes._parity import ParityResult

__all__ = ["GateOptions", "chain_hooks", "export_gate"]

Hook = BeforeCommit


@dataclass
class GateOptions(OptimizeOptions):
    """What ``export`` does between writing ``model.onnx`` and committing the package.

    Attributes:
        validate: run the parity gate (default); ``False`` writes the package unvalidated.
        (the rest as :class:`~torchport.exporters._optimize.OptimizeOptions`; ``level`` defaults
        to ``"none"``: export optimizes only when asked)
    """

    level: str = "none"
    validate: bool = True


def _with_eager_parity(manifest: Manifest, result: ParityResult) -> Manifest:
    variants = {
        name: Variant(v.file, v.precision, None, list(v.data_files), list(v.passes))
        for name, v in manifest.variants.items()
    }
    for name, vp in result.variants.items():
        variants[name].parity = vp.summary()
    return manifest.replace(variants=variants, parity=result.summary(), validated=result.passed)


def _copy_model(folder: Path, variant: Variant, dest: Path) -> Path:
    for name in (variant.file, *variant.data_files):
        shutil.copy2(folder / name, dest / name)
    return dest / variant.file


def export_gate(options: GateOptions) -> Hook:
    """The ``before_commit`` hook of ``export_model`` for ``options`` (checked here, before exporting).

    Raises (from the hook):
        ValidationError: the exported model does not match eager PyTorch, or an optimized variant
            does not match the exported model (message: the table).
        OptimizationError: as :func:`optimize_package`.

    Example:
        >>> export_model(src, "out/m", before_commit=export_gate(GateOptions(level="all")))  # doctest: +SKIP
    """

    def hook(ctx: ExportContext) -> dict[str, Any] | None:
        manifest = ctx.manifest
        folder = ctx.writer.path
        report = None
        if options.validate:
            with ctx.progress.stage("validate") as st:
                reference = EagerReference.from_flat(ctx.flat, ctx.example, str(ctx.loaded.reference))
                result = check_parity(
                    manifest,
                    {"fp32": ctx.model_path},
                    reference,
                    samples=options.samples,
                    n=options.n,
                    atol=options.atol,
                    rtol=options.rtol,
                    provider=options.provider,
                )
                st.detail = (
                    f"{'passed' if result else 'FAILED'} on {len(result.cases)} inputs (fp32 vs eager)"
                )
            if not result:
                raise ValidationError(
                    "the exported model does not match eager PyTorch; no package was written "
                    "(inspect with --no-validate, or loosen --atol/--rtol if the differences are expected)\n"
                    f"{result}"
                )
            manifest = _with_eager_parity(manifest, result)
            report = result.to_dict()
        if options.optimizes:
            with (
                ctx.progress.stage("optimize") as st,
                tempfile.TemporaryDirectory(prefix="torchport-fp32-") as tmp,
            ):
                validated_fp32 = (
                    _copy_model(folder, manifest.variants["fp32"], Path(tmp)) if options.validate else None
                )
                done = optimize_folder(folder, manifest, options, reference=validated_fp32, report=report)
                for warning in done.warnings:
                    ctx.progress.warn(warning)
                fused = sorted({k for r in done.records for k in r["fused"] if k.startswith("com.microsoft")})
                written = [n for n in done.manifest.variants if n != "fp32"]
                st.detail = f"level {options.level}, variants {', '.join(['fp32', *written])}" + (
                    f"; fused {', '.join(f.split('.')[-1] for f in fused)}" if fused else ""
                )
                if done.parity is not None:
                    st.detail += f"; {'passed' if done.parity else 'FAILED'} vs fp32"
            if done.parity is not None and not done.parity:
                raise ValidationError(
                    "an optimized variant does not match the validated fp32 model; no package was written "
                    "(drop the variant, or loosen --atol/--rtol if the differences are expected)\n"
                    f"{done.parity}"
                )
            manifest, report = done.manifest, done.report
        if not options.validate:
            manifest = manifest.replace(
                validated=False, parity=None, extra={**manifest.extra, "validation": "skipped"}
            )
        ctx.manifest = manifest
        return report

    return hook


def chain_hooks(first: Hook, second: Hook | None) -> Hook:
    """Run ``first`` then ``second`` (which sees the manifest ``first`` left); the later report wins."""
    if second is None:
        return first

    def hook(ctx: ExportContext) -> dict[str, Any] | None:
        report = first(ctx)
        later = second(ctx)
        return later if later is not None else report

    return hook
