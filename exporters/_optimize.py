"""``optimize_package``: run the ONNX passes on a package and write its variants side by side."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from torchport.exporters._onnx_files import save_onnx
from torchport.exporters._onnx_passes import (
    Fp16Pass,
    Int8DynamicPass,
    Int8StaticPass,
    OnnxscriptOptimizePass,
    OrtFusionsPass,
    OrtOfflinePass,
)
from torchport.exporters._passes import PassPipeline, PassRecord, as_proto
from torchport.runtimes import (
    PARITY_NAME,
    ModelPackage,
    OptimizationError,
    UsageError,
    Variant,
    dim_sample_points,
    random_inputs,
    update_package,
)
from torchport.runtimes._samples import load_samples

LEVELS = ("none", "basic", "all")
INT8_MODES = ("dynamic", "static")
#: every pass name ``--disable`` accepts
PASS_NAMES = ("optimize", "ort_fusions", "ort_offline", "fp16", "int8_dynamic", "int8_static")
VARIANT_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
#: number of generated calibration samples when no --calibration file is given
DEFAULT_CALIBRATION_SAMPLES = 16


@dataclass
class OptimizeResult:
    """What :func:`optimize_package` did.

    Attributes:
        package: the updated package.
        records: one entry per pass (as stored in ``manifest.passes``), with its ``variant``.
        sizes: size in bytes of each variant's files.
        seconds: wall time of the whole optimization.
    """

    package: ModelPackage
    records: list[dict[str, Any]]
    sizes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def __bool__(self) -> bool:
        return True

    @property
    def variants(self) -> list[str]:
        return list(self.package.manifest.variants)

    def to_dict(self) -> dict[str, Any]:
        return {
            "package": str(self.package.path),
            "passes": self.records,
            "sizes": self.sizes,
            "seconds": self.seconds,
        }

    def __str__(self) -> str:
        lines = [f"optimized {self.package.path} in {self.seconds:.1f} s", ""]
        lines.append(f"{'variant':<8} {'pass':<14} {'changed':>7} {'nodes':>12} {'seconds':>8}  fused")
        for r in self.records:
            if r.get("skipped"):
                lines.append(f"{r['variant']:<8} {r['name']:<14} {'skipped':>7}")
                continue
            fused = ", ".join(f"{k}×{v}" for k, v in sorted(r["fused"].items())) or "-"
            nodes = f"{r['nodes_before']}→{r['nodes_after']}"
            changed = "yes" if r["modified"] else "no"
            lines.append(
                f"{r['variant']:<8} {r['name']:<14} {changed:>7} {nodes:>12} {r['seconds']:8.2f}  {fused}"
            )
        lines.append("")
        for name, size in self.sizes.items():
            lines.append(f"{name:<8} {VARIANT_FILES.get(name, ''):<18} {size / 1e6:10.2f} MB")
        return "\n".join(lines)


def calibration_samples(
    package: ModelPackage,
    calibration: str | os.PathLike[str] | None = None,
    n: int = DEFAULT_CALIBRATION_SAMPLES,
    seed: int = 0,
) -> list[dict[str, np.ndarray]]:
    """Calibration inputs: from an ``.npz`` file, or generated from the package's input spec.

    Generated samples spread over every dynamic dim's range (``dim_sample_points``) with random
    values (``random_inputs``: floats ~ N(0, 1), ints within each input's ``value_range``).
    Prefer real data: int8 static ranges are only as good as the calibration set.
    """
    manifest = package.manifest
    names = [s.name for s in manifest.inputs]
    if calibration is not None:
        ranks = {s.name: s.rank for s in manifest.inputs}
        return load_samples(calibration, names, ranks)
    rng = np.random.default_rng(seed)
    points = dim_sample_points(manifest.dynamic_dims, n, rng)
    return [random_inputs(manifest.inputs, points[i % len(points)], rng) for i in range(n)]


def _check_options(level: str, int8: str | None, disable: Iterable[str]) -> list[str]:
    if level not in LEVELS:
        raise UsageError(f"unknown optimization level {level!r}; use one of: {', '.join(LEVELS)}")
    if int8 is not None and int8 not in INT8_MODES:
        raise UsageError(f"unknown --int8 mode {int8!r}; use one of: {', '.join(INT8_MODES)}")
    disable = list(disable)
    unknown = [d for d in disable if d not in PASS_NAMES]
    if unknown:
        raise UsageError(
            f"unknown pass {', '.join(map(repr, unknown))} in --disable; passes are: {', '.join(PASS_NAMES)}"
        )
    return disable


def _filter(passes: Sequence[Any], disable: Sequence[str]) -> PassPipeline:
    return PassPipeline(passes, disable=[d for d in disable if d in {p.name for p in passes}])


def optimize_model(
    model: onnx.ModelProto,
    *,
    level: str = "all",
    fp16: bool = False,
    int8: str | None = None,
    calibration_samples: Sequence[Mapping[str, np.ndarray]] | None = None,
    disable: Iterable[str] = (),
    provider: str = "cpu",
) -> tuple[dict[str, onnx.ModelProto], list[dict[str, Any]]]:
    """Optimize one ONNX model in memory; return ``({variant: model}, pass records)``.

    The fp32 variant goes through ``optimize`` (level basic and all), ``ort_fusions`` and
    ``ort_offline`` (level all). fp16 starts from the graph after the onnxscript passes (before
    ``ort_offline``, whose ops are provider-specific); int8 dynamic from the graph after
    ``optimize``, fused again without packing Q/K/V (level all) so the attention projections are
    quantized too; int8 static from the graph after ``optimize`` (QDQ works on standard ONNX ops).
    """
    disable = _check_options(level, int8, disable)
    if int8 == "static" and not calibration_samples:
        raise UsageError("--int8 static needs calibration data: pass --calibration FILE.npz")
    records: list[dict[str, Any]] = []

    def run(pipeline: PassPipeline, m: Any, variant: str) -> Any:
        result = pipeline(m)
        for r in result.records:
            records.append({"variant": variant, **r.to_dict()})
        return result.model

    graph_passes: list[Any] = []
    if level in ("basic", "all"):
        graph_passes.append(OnnxscriptOptimizePass())
    m = run(_filter(graph_passes, disable), model, "fp32")
    pre_fusion = as_proto(m) if int8 is not None else None
    if level == "all":
        m = run(_filter([OrtFusionsPass()], disable), m, "fp32")
    graph = as_proto(m)
    variants: dict[str, onnx.ModelProto] = {}
    fp32 = graph
    if level == "all":
        fp32 = as_proto(run(_filter([OrtOfflinePass(provider, "extended")], disable), graph, "fp32"))
    variants["fp32"] = fp32
    if fp16:
        if "fp16" in disable:
            raise UsageError("--fp16 asks for the fp16 pass, which --disable fp16 switches off; drop one")
        variants["fp16"] = as_proto(run(PassPipeline([Fp16Pass()]), graph, "fp16"))
    if int8 == "dynamic":
        if "int8_dynamic" in disable:
            raise UsageError(
                "--int8 dynamic asks for a pass that --disable int8_dynamic switches off; drop one"
            )
        int8_passes: list[Any] = [Int8DynamicPass()]
        if level == "all" and "ort_fusions" not in disable:
            # Q/K/V kept as separate MatMuls (MultiHeadAttention) so they are quantized too
            int8_passes.insert(0, OrtFusionsPass(pack_qkv=False))
        assert pre_fusion is not None
        variants["int8"] = as_proto(run(PassPipeline(int8_passes), pre_fusion, "int8"))
    elif int8 == "static":
        if "int8_static" in disable:
            raise UsageError(
                "--int8 static asks for a pass that --disable int8_static switches off; drop one"
            )
        assert pre_fusion is not None and calibration_samples
        variants["int8"] = as_proto(
            run(PassPipeline([Int8StaticPass(calibration_samples)]), pre_fusion, "int8")
        )
    return variants, records


def optimize_package(
    package_path: str | os.PathLike[str],
    level: str = "all",
    fp16: bool = False,
    int8: str | None = None,
    calibration: str | os.PathLike[str] | None = None,
    disable: Iterable[str] = (),
    provider: str = "cpu",
) -> OptimizeResult:
    """Optimize a model package in place and add its fp16 / int8 variants, atomically.

    ``model.onnx`` is replaced by the optimized fp32 graph; ``model.fp16.onnx`` and
    ``model.int8.onnx`` are written next to it, each a variant in the manifest. The record of every
    pass goes into ``manifest.passes``. The package's previous parity record no longer applies and
    is dropped (``validated=False``): run :func:`validate` (``torchport validate``) afterwards.

    Levels:
        ``none``: no graph passes (fp16 / int8 variants may still be made).
        ``basic``: the onnxscript optimizer (constant folding, dead code, redundant casts/reshapes).
        ``all`` (default): basic + ONNX Runtime transformer fusions + an ONNX Runtime graph optimized
        offline for ``provider`` (recorded in ``manifest.extra["ort_offline"]``; the fp32 file is then
        specific to that provider).

    Args:
        package_path: the package folder.
        level: ``"none"``, ``"basic"`` or ``"all"``.
        fp16: also write ``model.fp16.onnx`` (float32 inputs/outputs, sensitive ops in float32).
        int8: ``"dynamic"`` or ``"static"`` (QDQ) to also write ``model.int8.onnx``.
        calibration: ``.npz`` calibration inputs for static int8; generated from the input spec
            (:data:`DEFAULT_CALIBRATION_SAMPLES` samples) when omitted.
        disable: names of passes to skip (see :data:`PASS_NAMES`).
        provider: execution provider the offline graph is optimized for (``cpu``, ``cuda``).

    Raises:
        UsageError: bad level / int8 mode / pass name / calibration file.
        OptimizationError: a pass failed (the message names it and how to skip it).

    Example:
        >>> result = optimize_package("out/bert", level="all", int8="dynamic")   # doctest: +SKIP
        >>> print(result)                                  # passes table and variant sizes
        >>> result.package.manifest.variants["int8"].file
        'model.int8.onnx'
    """
    start = time.perf_counter()
    disable = _check_options(level, int8, disable)
    package = ModelPackage.load(package_path)
    samples = None
    if int8 == "static" and "int8_static" not in disable:
        samples = calibration_samples(package, calibration)
    elif calibration is not None:
        raise UsageError("--calibration is only used with --int8 static")
    src = package.model_path("fp32")
    try:
        model = onnx.load(str(src))
    except Exception as e:
        raise OptimizationError(f"cannot load {src}: {e}") from e
    variants, records = optimize_model(
        model,
        level=level,
        fp16=fp16,
        int8=int8,
        calibration_samples=samples,
        disable=disable,
        provider=provider,
    )
    with update_package(package) as w:
        manifest = package.manifest.replace()
        new_variants = dict(manifest.variants)
        for name, proto in variants.items():
            data_files = save_onnx(proto, w.path / VARIANT_FILES[name])
            new_variants[name] = Variant(
                file=VARIANT_FILES[name], precision=name, parity=None, data_files=data_files
            )
        for v in new_variants.values():
            v.parity = None
        if (w.path / PARITY_NAME).exists():
            (w.path / PARITY_NAME).unlink()
        extra = dict(manifest.extra)
        offline = [r for r in records if r["name"] == "ort_offline" and not r["skipped"]]
        if offline:
            extra["ort_offline"] = offline[-1].get("details", {})
        else:
            extra.pop("ort_offline", None)
        extra["optimization"] = {
            "level": level,
            "fp16": fp16,
            "int8": int8,
            "disable": list(disable),
            "provider": provider,
            "seconds": round(time.perf_counter() - start, 3),
        }
        manifest = manifest.replace(
            variants=new_variants, passes=records, extra=extra, parity=None, validated=False
        )
        new_pkg = w.commit(manifest)
    sizes = {
        name: sum((new_pkg.path / f).stat().st_size for f in [v.file, *v.data_files])
        for name, v in new_pkg.manifest.variants.items()
    }
    return OptimizeResult(package=new_pkg, records=records, sizes=sizes, seconds=time.perf_counter() - start)


__all__ = [
    "LEVELS",
    "PASS_NAMES",
    "OptimizeResult",
    "PassRecord",
    "calibration_samples",
    "optimize_model",
    "optimize_package",
]
