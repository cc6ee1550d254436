"""``optimize``: run the ONNX passes on a package, write its variants, and validate each variant
against the package's validated fp32 model (ONNX vs ONNX: the variants' link of the trust chain).

No torch is needed: the passes, the variants and their parity are ONNX work.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from torchport.exporters._decoder_variants import check_decoder_variants
from torchport.exporters._onnx_files import save_onnx
from torchport.exporters._onnx_passes import (
    DECODER_INT8_BLOCK_SIZE,
    NBITS_BLOCK_SIZES,
    Fp16Pass,
    Int4Pass,
    Int8DynamicPass,
    Int8StaticPass,
    MergeMatMulsPass,
    OnnxscriptOptimizePass,
    OrtFusionsPass,
    OrtOfflinePass,
)
from torchport.exporters._passes import PassPipeline, PassRecord, as_proto
from torchport.exporters._registries import INT8_MODES as INT8_HELP
from torchport.exporters._registries import LEVELS as LEVEL_HELP
from torchport.exporters._registries import ONNX_PASSES
from torchport.runtimes._errors import OptimizationError, UsageError, describe_error
from torchport.runtimes._eval import (
    DEFAULT_EVAL_BUDGET,
    DEFAULT_EVAL_TOKENS,
    DEFAULT_MAX_ACCURACY_DROP,
    DEFAULT_MAX_PERPLEXITY_RISE,
    check_eval_data,
    eval_into,
    evaluate_folder,
    gate,
)
from torchport.runtimes._generate import is_seq2seq, is_text_generation
from torchport.runtimes._inputs import dim_sample_points, random_inputs
from torchport.runtimes._manifest import PARITY_NAME, Manifest, Variant
from torchport.runtimes._onnx_parity import check_variants
from torchport.runtimes._package import ModelPackage, update_package
from torchport.runtimes._parity import ParityResult, Tolerance
from torchport.runtimes._samples import load_samples
from torchport.runtimes._table import format_table

__all__ = [
    "LEVELS",
    "PASS_NAMES",
    "OptimizeOptions",
    "OptimizeResult",
    "PassRecord",
    "calibration_samples",
    "optimize_folder",
    "optimize_model",
    "optimize_package",
]

LEVELS = tuple(LEVEL_HELP)
INT8_MODES = tuple(INT8_HELP)
#: every pass name ``--disable`` accepts (from the pass registry)
PASS_NAMES = tuple(ONNX_PASSES)
VARIANT_FILES = {
    "fp32": "model.onnx",
    "fp16": "model.fp16.onnx",
    "int8": "model.int8.onnx",
    "int4": "model.int4.onnx",
}
#: number of generated calibration samples when no --calibration file is given
DEFAULT_CALIBRATION_SAMPLES = 16
GENERATED_CALIBRATION_WARNING = (
    "--int8 static without --calibration: calibrating on generated random inputs, a poor "
    "calibration set; pass --calibration FILE.npz with real inputs for usable int8 ranges"
)


@dataclass
class OptimizeOptions:
    """What ``optimize`` does, checked when made.

    Attributes:
        level: ``"none"``, ``"basic"`` or ``"all"`` (see :func:`optimize_package`).
        fp16 / int8 / int4: the variants to write (``int8``: ``"dynamic"`` or ``"static"``).
        int4_block_size / int4_symmetric / int4_head / int4_embeddings: the int4 recipe
            (see :class:`~torchport.exporters._onnx_passes.Int4Pass`).
        calibration: ``.npz`` calibration inputs for static int8.
        disable: names of passes to skip (:data:`PASS_NAMES`).
        provider: execution provider the offline graph is optimized for, and parity runs on.
        n / samples / atol / rtol / tolerances: the variants' validation against fp32 (as in
            :func:`~torchport.exporters.validate`).

    Raises:
        UsageError: an unknown level, int8 mode or pass name, or contradictory options.
    """

    level: str = "all"
    fp16: bool = False
    int8: str | None = None
    calibration: str | os.PathLike[str] | None = None
    disable: Iterable[str] = ()
    provider: str = "cpu"
    int4: bool = False
    int4_block_size: int = 32
    int4_symmetric: bool = True
    int4_head: bool = True
    int4_embeddings: bool = False
    n: int = 20
    samples: str | os.PathLike[str] | None = None
    atol: float | None = None
    rtol: float | None = None
    tolerances: Mapping[str, Tolerance] | None = None

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise UsageError(f"unknown optimization level {self.level!r}; use one of: {', '.join(LEVELS)}")
        if self.int8 is not None and self.int8 not in INT8_MODES:
            raise UsageError(f"unknown --int8 mode {self.int8!r}; use one of: {', '.join(INT8_MODES)}")
        self.disable = tuple(self.disable)
        unknown = [d for d in self.disable if d not in PASS_NAMES]
        if unknown:
            raise UsageError(
                f"unknown pass {', '.join(map(repr, unknown))} in --disable; passes are: {', '.join(PASS_NAMES)}"
            )
        if self.calibration is not None and self.int8 != "static":
            raise UsageError("--calibration is only used with --int8 static")
        check_int4_options(
            self.int4, self.int4_block_size, self.int4_symmetric, self.int4_head, self.int4_embeddings
        )

    @property
    def optimizes(self) -> bool:
        return self.level != "none" or self.fp16 or self.int8 is not None or self.int4

    def int4_pass(self) -> Int4Pass | None:
        """The int4 pass these options ask for (``None`` without ``int4``)."""
        if not self.int4:
            return None
        return Int4Pass(self.int4_block_size, self.int4_symmetric, self.int4_head, self.int4_embeddings)


def check_int4_options(int4: bool, block_size: int, symmetric: bool, head: bool, embeddings: bool) -> None:
    """One-line :class:`UsageError` for int4 options that make no sense.

    Example:
        >>> check_int4_options(True, 64, False, True, True)
        >>> check_int4_options(False, 64, True, True, False)
        Traceback (most recent call last):
        ...
        torchport.runtimes._errors.UsageError: --int4-block-size is only used with --int4
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size not in NBITS_BLOCK_SIZES:
        raise UsageError(
            f"--int4-block-size {block_size!r} is not one MatMulNBits takes; use one of: "
            f"{', '.join(map(str, NBITS_BLOCK_SIZES))}"
        )
    if not int4:
        changed = [
            flag
            for flag, given in (
                ("--int4-block-size", block_size != 32),
                ("--int4-asymmetric", not symmetric),
                ("--int4-keep-head", not head),
                ("--int4-embeddings", embeddings),
            )
            if given
        ]
        if changed:
            raise UsageError(f"{', '.join(changed)} is only used with --int4")


@dataclass
class OptimizeResult:
    """What :func:`optimize_package` did. Truthy when every variant it wrote matches the fp32 model.

    Attributes:
        package: the updated package.
        records: one entry per pass (as stored in ``manifest.passes``), with its ``variant``.
        sizes: size in bytes of each variant's files.
        seconds: wall time of the whole optimization.
        parity: each written variant compared with the validated fp32 model (``None`` when nothing
            was compared: no variant written and ``model.onnx`` unchanged).
        warnings: what the user should know (a poor calibration set...).
    """

    package: ModelPackage
    records: list[dict[str, Any]]
    sizes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    parity: ParityResult | None = None
    warnings: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.parity is None or bool(self.parity)

    @property
    def variants(self) -> list[str]:
        return list(self.package.manifest.variants)

    def to_dict(self) -> dict[str, Any]:
        return {
            "package": str(self.package.path),
            "passes": self.records,
            "sizes": self.sizes,
            "seconds": self.seconds,
            "parity": self.parity.to_dict() if self.parity is not None else None,
            "warnings": list(self.warnings),
        }

    def __str__(self) -> str:
        rows = []
        for r in self.records:
            if r.get("skipped"):
                rows.append([r["variant"], r["name"], "skipped", None, None, None])
                continue
            fused = ", ".join(f"{k}×{v}" for k, v in sorted(r["fused"].items())) or "-"
            rows.append(
                [
                    r["variant"],
                    r["name"],
                    "yes" if r["modified"] else "no",
                    f"{r['nodes_before']}→{r['nodes_after']}",
                    f"{r['seconds']:.2f}",
                    fused,
                ]
            )
        lines = [f"optimized {self.package.path} in {self.seconds:.1f} s", ""]
        lines.append(format_table(["variant", "pass", "changed", "nodes", "seconds", "fused"], rows))
        lines.append("")
        sizes = [[n, VARIANT_FILES.get(n, ""), f"{s / 1e6:.2f} MB"] for n, s in self.sizes.items()]
        lines.append(format_table(["variant", "file", "size"], sizes))
        if self.parity is not None:
            lines += ["", str(self.parity)]
        return "\n".join(lines)


def calibration_samples(
    manifest: Manifest | ModelPackage,
    calibration: str | os.PathLike[str] | None = None,
    n: int = DEFAULT_CALIBRATION_SAMPLES,
    seed: int = 0,
) -> list[dict[str, np.ndarray]]:
    """Calibration inputs: from an ``.npz`` file, or generated from the package's input spec.

    Generated samples spread over every dynamic dim's range (``dim_sample_points``) with random
    values (``random_inputs``: floats ~ N(0, 1), ints within each input's ``value_range``).
    Prefer real data: int8 static ranges are only as good as the calibration set.
    """
    if isinstance(manifest, ModelPackage):
        manifest = manifest.manifest
    names = [s.name for s in manifest.inputs]
    if calibration is not None:
        ranks = {s.name: s.rank for s in manifest.inputs}
        return load_samples(calibration, names, ranks)
    rng = np.random.default_rng(seed)
    points = dim_sample_points(manifest.dynamic_dims, n, rng)
    return [random_inputs(manifest.inputs, points[i % len(points)], rng) for i in range(n)]


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
    int8_block_size: int | None = None,
    int4: Int4Pass | None = None,
) -> tuple[dict[str, onnx.ModelProto], list[dict[str, Any]]]:
    """Optimize one ONNX model in memory; return ``({variant: model}, pass records)``.

    ``int8_block_size`` switches int8 dynamic to the decoder recipe (text-generation packages use
    it, see :class:`Int8DynamicPass`): int8 weights and run-time activation scales per block of
    that many input rows, output head and embeddings in float32 (per-tensor activation scales
    flipped a decoder's greedy tokens within a few steps). ``int4`` (an :class:`Int4Pass`) also
    writes the ``int4`` variant, from the same graph as int8 dynamic.

    The fp32 variant goes through ``optimize`` (level basic and all), ``ort_fusions`` (level all),
    ``merge_matmuls`` (level basic and all) and ``ort_offline`` (level all). fp16 starts from the graph after the onnxscript passes (before
    ``ort_offline``, whose ops are provider-specific); int8 dynamic from the graph after
    ``optimize``, fused again without packing Q/K/V (level all) so the attention projections are
    quantized too; int8 static from the graph after ``optimize`` (QDQ works on standard ONNX ops).
    """
    disable = list(OptimizeOptions(level=level, int8=int8, disable=disable).disable)
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
    pre_fusion = as_proto(m) if int8 is not None or int4 is not None else None
    if level == "all":
        m = run(_filter([OrtFusionsPass()], disable), m, "fp32")
    if level in ("basic", "all"):
        m = run(_filter([MergeMatMulsPass()], disable), m, "fp32")
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
        int8_passes: list[Any] = [Int8DynamicPass(block_size=int8_block_size)]
        if int8_block_size and level != "none" and "merge_matmuls" not in disable:
            # block scales are per column: merged weights quantize exactly as the separate ones
            int8_passes.insert(0, MergeMatMulsPass())
        if level == "all" and "ort_fusions" not in disable:
            # Q/K/V kept as separate MatMuls (MultiHeadAttention) so they are quantized too
            int8_passes.insert(0, OrtFusionsPass(pack_qkv=False))
        assert pre_fusion is not None
        variants["int8"] = as_proto(run(PassPipeline(int8_passes), pre_fusion, "int8"))
    if int4 is not None:
        if "int4" in disable:
            raise UsageError("--int4 asks for the int4 pass, which --disable int4 switches off; drop one")
        int4_passes: list[Any] = [int4]
        if level != "none" and "merge_matmuls" not in disable:
            int4_passes.insert(0, MergeMatMulsPass())  # block scales are per column (as for int8)
        if level == "all" and "ort_fusions" not in disable:
            int4_passes.insert(0, OrtFusionsPass(pack_qkv=False))
        assert pre_fusion is not None
        variants["int4"] = as_proto(run(PassPipeline(int4_passes), pre_fusion, "int4"))
    if int8 == "static":
        if "int8_static" in disable:
            raise UsageError(
                "--int8 static asks for a pass that --disable int8_static switches off; drop one"
            )
        assert pre_fusion is not None and calibration_samples
        variants["int8"] = as_proto(
            run(PassPipeline([Int8StaticPass(calibration_samples)]), pre_fusion, "int8")
        )
    return variants, records


@dataclass
class FolderOptimization:
    """What :func:`optimize_folder` left in the folder: the new manifest, the pass records, the
    variants' parity against fp32 (``None`` when not checked), ``parity.json``'s new content, warnings."""

    manifest: Manifest
    records: list[dict[str, Any]]
    parity: ParityResult | None
    report: dict[str, Any] | None
    warnings: list[str]


def optimize_folder(
    folder: Path,
    manifest: Manifest,
    options: OptimizeOptions,
    *,
    reference: Path | None = None,
    report: Mapping[str, Any] | None = None,
) -> FolderOptimization:
    """Optimize the package files in ``folder`` (being written) and check the variants.

    ``optimize_package`` runs it on a copy of the package; ``export`` on the package it is writing,
    after validating ``model.onnx`` against eager PyTorch.

    Args:
        folder: holds ``model.onnx`` (replaced by the optimized graph when a pass changes it) and
            receives ``model.fp16.onnx`` / ``model.int8.onnx``.
        manifest: the package's manifest before optimization.
        options: what to do.
        reference: the validated fp32 model to compare every written variant with (the model
            before this optimization); ``None``: the variants are not validated.
        report: the current ``parity.json`` content (the eager validation report), kept and
            extended with the variants' comparison under ``"variants_vs_fp32"``.
    """
    warnings: list[str] = []
    samples = None
    if options.int8 == "static" and "int8_static" not in options.disable:
        if options.calibration is None:
            warnings.append(GENERATED_CALIBRATION_WARNING)
        samples = calibration_samples(manifest, options.calibration)
    src = folder / manifest.variants["fp32"].file
    try:
        model = onnx.load(str(src))
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError and friends
        raise OptimizationError(f"cannot load {src.name}: {describe_error(e)}") from e
    variants, records = optimize_model(
        model,
        level=options.level,
        fp16=options.fp16,
        int8=options.int8,
        calibration_samples=samples,
        disable=options.disable,
        provider=options.provider,
        int8_block_size=DECODER_INT8_BLOCK_SIZE if is_text_generation(manifest) else None,
        int4=options.int4_pass(),
    )
    old = manifest.variants
    base_history = list(old["fp32"].passes)
    fp32_changed = any(r["modified"] for r in records if r["variant"] == "fp32")
    new_variants = {
        name: Variant(v.file, v.precision, v.parity, list(v.data_files), list(v.passes))
        for name, v in old.items()
    }
    written: dict[str, Path] = {}
    for name, proto in variants.items():
        history = base_history + [r for r in records if r["variant"] == name]
        if name == "fp32" and not fp32_changed:
            new_variants["fp32"].passes = history
            continue
        file = VARIANT_FILES[name]
        try:
            data_files = save_onnx(proto, folder / file)
        except (OSError, ValueError) as e:
            raise OptimizationError(f"cannot write {file}: {describe_error(e)}") from e
        new_variants[name] = Variant(file=file, precision=name, data_files=data_files, passes=history)
        written[name] = folder / file
    if fp32_changed and "fp32" in old:
        new_variants["fp32"].parity = old["fp32"].parity  # the eager link; the new graph's link is below
    parity = None
    new_report = dict(report) if report is not None else None
    if reference is not None and written:
        check = check_decoder_variants if is_text_generation(manifest) else check_variants
        eval_samples: dict[str, Any] = {} if is_text_generation(manifest) else {"samples": options.samples}
        parity = check(
            manifest,
            reference,
            written,
            n=options.n,
            **eval_samples,
            atol=options.atol,
            rtol=options.rtol,
            tolerances=options.tolerances,
            provider=options.provider,
        )
        for name, vp in parity.variants.items():
            if name == "fp32":
                eager = dict(old["fp32"].parity or {})
                new_variants["fp32"].parity = {**eager, "optimized": vp.summary()} if eager else vp.summary()
            else:
                new_variants[name].parity = vp.summary()
        new_report = {**(new_report or {}), "variants_vs_fp32": parity.to_dict()}
    elif written:  # unvalidated variants carry no parity record
        for name in written:
            if name != "fp32":
                new_variants[name].parity = None
    extra = dict(manifest.extra)
    offline = [r for r in records if r["name"] == "ort_offline" and not r["skipped"]]
    if offline:
        extra["ort_offline"] = offline[-1].get("details", {})
    extra["optimization"] = {
        "level": options.level,
        "fp16": options.fp16,
        "int8": options.int8,
        "int4": (
            {
                "block_size": options.int4_block_size,
                "symmetric": options.int4_symmetric,
                "head": options.int4_head,
                "embeddings": options.int4_embeddings,
            }
            if options.int4
            else None
        ),
        "disable": list(options.disable),
        "provider": options.provider,
        "calibration": "file" if options.calibration is not None else ("generated" if samples else None),
    }
    new_manifest = manifest.replace(variants=new_variants, passes=records, extra=extra)
    new_manifest = _with_chain_summary(new_manifest)
    return FolderOptimization(new_manifest, records, parity, new_report, warnings)


def _passed(variant: Variant) -> bool:
    parity = variant.parity or {}
    optimized = parity.get("optimized")
    return bool(parity.get("passed")) and (optimized is None or bool(optimized.get("passed")))


def _with_chain_summary(manifest: Manifest) -> Manifest:
    """``validated``: the fp32 model passed against eager PyTorch and every variant its link."""
    fp32 = manifest.variants["fp32"].parity or {}
    rooted = fp32.get("reference", "eager") == "eager" and bool(fp32.get("passed"))
    validated = rooted and all(_passed(v) for v in manifest.variants.values())
    summary = None
    if manifest.parity is not None:  # an eager-validated package: its summary follows the chain
        summary = dict(manifest.parity or {})
        summary["passed"] = validated
        summary["variants"] = {name: _passed(v) for name, v in manifest.variants.items()}
    return manifest.replace(parity=summary, validated=validated)


def optimize_package(
    package_path: str | os.PathLike[str],
    level: str = "all",
    fp16: bool = False,
    int8: str | None = None,
    calibration: str | os.PathLike[str] | None = None,
    disable: Iterable[str] = (),
    provider: str = "cpu",
    *,
    n: int = 20,
    samples: str | os.PathLike[str] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    tolerances: Mapping[str, Tolerance] | None = None,
    check: bool = True,
    int4: bool = False,
    int4_block_size: int = 32,
    int4_symmetric: bool = True,
    int4_head: bool = True,
    int4_embeddings: bool = False,
    eval_data: str | os.PathLike[str] | None = None,
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
    max_perplexity_rise: float = DEFAULT_MAX_PERPLEXITY_RISE,
    eval_tokens: int = DEFAULT_EVAL_TOKENS,
    eval_prompts: Sequence[str] | str | os.PathLike[str] | None = None,
    eval_budget: int = DEFAULT_EVAL_BUDGET,
) -> OptimizeResult:
    """Optimize a model package in place, add its fp16 / int8 variants, and validate each one
    against the package's fp32 model (ONNX vs ONNX, no torch), atomically.

    ``model.onnx`` is replaced by the optimized fp32 graph; ``model.fp16.onnx``,
    ``model.int8.onnx`` and ``model.int4.onnx`` are written next to it. Every file written is compared with the fp32 model
    as it was before (the one ``validate`` proved equal to eager PyTorch) with the variant's
    tolerance (:data:`~torchport.runtimes.DEFAULT_TOLERANCES`); the comparison goes into each
    variant's ``parity`` record (``reference: "fp32"``) and ``parity.json``
    (``variants_vs_fp32``), so the package stays validated when every link holds. Each variant
    keeps the history of the passes that made it (``Variant.passes``).

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
            (:data:`DEFAULT_CALIBRATION_SAMPLES` samples, with a warning) when omitted.
        disable: names of passes to skip (see :data:`PASS_NAMES`).
        provider: execution provider the offline graph is optimized for (``cpu``, ``cuda``).
        n / samples / atol / rtol / tolerances: the variants' validation (as in ``validate``).
        check: validate the written variants against fp32 (default).
        int4: also write ``model.int4.onnx``: weight-only 4-bit ``MatMulNBits``.
        int4_block_size: input rows per int4 scale (16, 32 (default), 64, 128 or 256).
        int4_symmetric: symmetric int4 blocks (default); ``False``: asymmetric (zero points).
        int4_head: quantize the output head (``logits``) too (default); ``False`` keeps it float32.
        int4_embeddings: embedding tables as 4-bit ``GatherBlockQuantized`` (default float32).
        eval_data: a held-out set (``.npz`` of inputs + ``labels``, or UTF-8 text for text generation):
            the task metrics of every variant written gate it (:func:`~torchport.runtimes.evaluate_package`);
            a variant whose accuracy drops more than ``max_accuracy_drop`` points or whose perplexity
            rises more than ``max_perplexity_rise`` (a fraction) against fp32 is refused, nothing written.
            The metrics go into ``parity.json`` (``eval``) and the manifest (``extra.eval``).
        eval_tokens: new tokens per prompt of the greedy agreement (text generation).
        eval_prompts: the greedy agreement's held-out prompts (strings, or a file with one per line);
            default: lines of the eval text.
        eval_budget: the eval set's memory budget in bytes: a larger set (or prompts file) is refused
            before any pass runs.

    Returns:
        An :class:`OptimizeResult`, truthy when every written variant matches the fp32 model.

    Raises:
        UsageError: bad level / int8 mode / pass name / calibration file.
        OptimizationError: a pass failed (the message names it and how to skip it).

    Example:
        >>> result = optimize_package("out/bert", level="all", int8="dynamic")   # doctest: +SKIP
        >>> bool(result), result.package.manifest.variants["int8"].parity["reference"]
        (True, 'fp32')
    """
    start = time.perf_counter()
    options = OptimizeOptions(
        level=level,
        fp16=fp16,
        int8=int8,
        calibration=calibration,
        disable=disable,
        provider=provider,
        n=n,
        samples=samples,
        atol=atol,
        rtol=rtol,
        tolerances=tolerances,
        int4=int4,
        int4_block_size=int4_block_size,
        int4_symmetric=int4_symmetric,
        int4_head=int4_head,
        int4_embeddings=int4_embeddings,
    )
    if eval_data is not None:
        check_eval_data(eval_data, prompts=eval_prompts, max_bytes=eval_budget)
    package = ModelPackage.load(package_path)
    if is_seq2seq(package.manifest):  # its encoder and decoder are optimized and validated together
        raise UsageError(
            f"{package.manifest.name!r} is an encoder-decoder package: optimize it at export "
            "(torchport export FOLDER --level all --fp16 --int8 dynamic), which validates both parts"
        )
    with update_package(package) as w:
        report_file = w.path / PARITY_NAME
        report = json.loads(report_file.read_text()) if report_file.is_file() else None
        done = optimize_folder(
            w.path,
            package.manifest.replace(),
            options,
            reference=package.model_path("fp32") if check else None,
            report=report,
        )
        manifest = done.manifest
        report = done.report
        if eval_data is not None:
            evaluated = gate(
                evaluate_folder(
                    w.path,
                    manifest,
                    eval_data,
                    tokens=eval_tokens,
                    prompts=eval_prompts,
                    max_bytes=eval_budget,
                    providers=provider,
                ),
                max_accuracy_drop=max_accuracy_drop,
                max_perplexity_rise=max_perplexity_rise,
            )
            written = {"fp16": fp16, "int8": bool(int8), "int4": int4}  # variants kept from before: reported
            evaluated.refused = {k: v for k, v in evaluated.refused.items() if written.get(k)}
            for name, reason in evaluated.refused.items():
                raise OptimizationError(f"variant {name} refused by --eval: {reason}; nothing written")
            report = eval_into(report, manifest, evaluated)
        manifest.extra["optimization"]["seconds"] = round(time.perf_counter() - start, 3)
        new_pkg = w.commit(manifest, parity=report)
    sizes = {
        name: sum((new_pkg.path / f).stat().st_size for f in [v.file, *v.data_files])
        for name, v in new_pkg.manifest.variants.items()
    }
    return OptimizeResult(
        package=new_pkg,
        records=done.records,
        sizes=sizes,
        seconds=time.perf_counter() - start,
        parity=done.parity,
        warnings=done.warnings,
    )
