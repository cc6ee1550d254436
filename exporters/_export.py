"""``export_model``: load → example inputs → wrap → capture + ONNX (strategies) → write the package.

Each stage is a small function; :func:`export_model` runs them in order inside one
:func:`~torchport.runtimes.write_package` so a failure anywhere leaves nothing at the destination.
The ONNX file is written to ``w.path`` and the manifest built **before** ``w.commit``; the
``before_commit`` hook runs exactly there (optimization and parity validation plug in at that one
place and may return the parity report that gates the package).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from torchport.exporters._capture_failures import analyze_failure, format_failure
from torchport.exporters._debugger import debug_post_mortem
from torchport.exporters._decoder_export import export_text_generation, wants_decoder
from torchport.exporters._example_inputs import ExampleInputs
from torchport.exporters._example_resolution import resolve_example_inputs
from torchport.exporters._export_context import BeforeCommit, ExportContext
from torchport.exporters._export_gate import GateOptions, chain_hooks, export_gate
from torchport.exporters._loaded_model import LoadedModel
from torchport.exporters._loading import absolute_reference, load_model
from torchport.exporters._onnx_export import (
    EXTERNAL_DATA_THRESHOLD,
    finalize_model,
    output_specs,
    save_model,
)
from torchport.exporters._outputs import FlatModule, OutputSelection
from torchport.exporters._progress import Progress
from torchport.exporters._registries import ATTENTION_MODES
from torchport.exporters._seq2seq_export import export_seq2seq, wants_seq2seq
from torchport.exporters._source_lines import user_traceback
from torchport.exporters._strategies import Attempt, ExportPlan, run_strategies
from torchport.exporters._text_assets import package_text_assets
from torchport.exporters._user_examples import example_from_object
from torchport.runtimes._errors import ExportError, LoadError, TorchportError, UsageError, describe_error
from torchport.runtimes._manifest import DimRange, Manifest, TensorSpec, Variant
from torchport.runtimes._package import ModelPackage, write_package
from torchport.runtimes._spec_syntax import parse_dim_spec, parse_input_spec

__all__ = ["ExportContext", "ExportResult", "export_model"]

MODEL_FILE = "model.onnx"


@dataclass
class ExportResult:
    """The outcome of :func:`export_model`.

    Attributes:
        package: the committed :class:`~torchport.runtimes.ModelPackage`.
        path: the package folder.
        manifest: its manifest (``package.manifest``).
        strategy: the strategy that produced ``model.onnx`` (``"dynamo-nonstrict"``...).
        attempts: every strategy tried, in order (:class:`Attempt`).
        seconds: wall time of the whole export.
        stages: seconds per stage (``load``, ``inputs``, ``export``, ``save``...).

    Truthy when the package was written.

    Example:
        >>> result = export_model("torchport.exporters.examples.mlp:make_model", "out/mlp")  # doctest: +SKIP
        >>> bool(result), result.strategy
        (True, 'dynamo-nonstrict')
    """

    package: ModelPackage
    strategy: str
    attempts: list[Attempt]
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.package.path

    @property
    def manifest(self) -> Manifest:
        return self.package.manifest

    def __bool__(self) -> bool:
        return True

    def __str__(self) -> str:
        m = self.manifest

        def sig(specs: list[TensorSpec]) -> str:
            return ", ".join(f"{s.name}:{s.dtype}[{','.join(str(d) for d in s.shape)}]" for s in specs)

        dims = ", ".join(f"{k}={r.min}..{r.max}" for k, r in m.dynamic_dims.items()) or "none"
        return (
            f"exported {m.name} v{m.version} to {self.path} in {self.seconds:.1f}s "
            f"(strategy {self.strategy}, opset {m.export.get('opset')})\n"
            f"  inputs:  {sig(m.inputs)}\n  outputs: {sig(m.outputs)}\n  dynamic dims: {dims}"
        )


# --------------------------------------------------------------------------- stages


def _as_specs(inputs: Sequence[str | TensorSpec] | None) -> list[TensorSpec]:
    return [s if isinstance(s, TensorSpec) else parse_input_spec(s) for s in inputs or []]


def _as_dims(dims: Mapping[str, Any] | Sequence[str] | None) -> dict[str, DimRange]:
    if not dims:
        return {}
    if isinstance(dims, Mapping):
        out = {}
        for name, value in dims.items():
            if isinstance(value, DimRange):
                out[name] = value
            elif isinstance(value, str):
                out[name] = parse_dim_spec(f"{name}={value}")[1]
            else:
                low, high = value
                out[name] = DimRange(int(low), int(high))
        return out
    out = {}
    for text in dims:
        name, rng = parse_dim_spec(text)
        if name in out:
            raise UsageError(f"--dim {name} is given twice; give each dim once, e.g. --dim {name}=1..64")
        out[name] = rng
    return out


def stage_load(
    source: str | torch.nn.Module,
    attn_implementation: str | None = None,
    example_args: Sequence[Any] | None = None,
    example_inputs: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Load the model (errors are :class:`~torchport.runtimes.LoadError`); an ``nn.Module`` in hand
    is taken as it is (its mode included), with ``example_args`` / ``example_inputs`` as its inputs."""
    if isinstance(source, torch.nn.Module):
        return loaded_from_module(source, example_args, example_inputs)
    if example_args is not None or example_inputs is not None:
        raise UsageError(
            "example_args / example_inputs go with a model object; for a source string use inputs=[...] "
            "specs, example_inputs() next to the factory, or sample="
        )
    if not isinstance(source, (str, os.PathLike)):
        raise LoadError(
            f"cannot export a {type(source).__name__}: pass a torch.nn.Module or a source string "
            "(file.py:factory, package.module:attr, model.pt, model.pt2, a Hugging Face folder)"
        )
    return load_model(str(source), attn_implementation=attn_implementation)


def loaded_from_module(
    module: torch.nn.Module,
    example_args: Sequence[Any] | None = None,
    example_inputs: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """A :class:`LoadedModel` for a module object, as ``torch.onnx.export(model, args)`` takes it."""
    signature = None
    with contextlib.suppress(TypeError, ValueError):
        signature = inspect.signature(module.forward)
    example = None
    if example_args is not None or example_inputs is not None:
        args = tuple(example_args) if example_args is not None else ()
        if isinstance(example_args, torch.Tensor):
            args = (example_args,)
        value = (args, dict(example_inputs or {})) if example_inputs else args
        example = example_from_object(value, signature=signature, origin="example_args/example_inputs")
    return LoadedModel(
        module=module,
        kind="object",
        reference=type(module).__name__,
        forward_signature=signature,
        example_inputs=example,
        example_source="example_inputs()" if example is not None else None,
    )


def stage_inputs(
    loaded: LoadedModel,
    inputs: Sequence[str | TensorSpec] | None,
    dims: Mapping[str, Any] | Sequence[str] | None,
    sample: str | None,
) -> ExampleInputs:
    """Example inputs, in the order: --input specs, example_inputs(), sample file, HF config."""
    if sample is not None and not Path(sample).is_file():
        raise UsageError(f"sample file not found: {sample} (give a .npz or .pt file of example inputs)")
    return resolve_example_inputs(loaded, _as_specs(inputs), _as_dims(dims), sample_file=sample)


def _model_of(loaded: LoadedModel) -> torch.nn.Module:
    if loaded.module is not None:
        return loaded.module
    if loaded.exported_program is not None:
        try:
            return loaded.exported_program.module()
        except Exception as e:  # noqa: BLE001
            raise LoadError(f"cannot rebuild a module from {loaded.reference}: {describe_error(e)}") from e
    raise LoadError(f"{loaded.reference} gave no module")


def stage_wrap(
    loaded: LoadedModel,
    example: ExampleInputs,
    outputs: str | Sequence[str] | None,
    output_names: Sequence[str] | None = None,
) -> FlatModule:
    """Run the model once eagerly on the example inputs and wrap it for export.

    ``output_names`` renames the selected outputs (a tuple's ``output_0, output_1`` become
    ``logits, probs``).

    Raises:
        ExportError: stage ``"eager run"`` when the model raises on its own example inputs.
        UsageError: ``output_names`` does not name each selected output once.
    """
    model = _model_of(loaded)
    selection = OutputSelection.parse(outputs)
    try:
        flat = FlatModule.build(model, example.args, example.kwargs, selection)
    except TorchportError:
        raise
    except Exception as e:  # noqa: BLE001
        failure = analyze_failure(e, "capture")
        failure.summary = describe_error(e)
        failure.hint = (
            "the model fails in eager PyTorch on its example inputs: fix the model, or give inputs it "
            'accepts (--input "name:dtype[dims]", example_inputs(), --sample)'
        )
        raise ExportError(
            format_failure(failure, "capture", "the model raised in eager mode on its example inputs"),
            stage="capture",
            failure=failure,
            user_traceback=user_traceback(e),
            original=e,
        ) from e
    if output_names:
        names = [n.strip() for n in output_names]
        if len(names) != len(flat.output_names) or len(set(names)) != len(names) or not all(names):
            raise UsageError(
                f"--output-names gives {len(names)} name(s) ({', '.join(names)}) for "
                f"{len(flat.output_names)} output(s) ({', '.join(flat.output_names)}); give each output one "
                "distinct name, in order"
            )
        flat.output_names = names
    if flat.num_inputs != len(example.specs):
        raise ExportError(
            f"capture failed: the example inputs have {flat.num_inputs} tensors but {len(example.specs)} specs",
            stage="capture",
        )
    return flat


def _eager_rerun(flat: FlatModule | None, example: ExampleInputs | None) -> Callable[[], Any] | None:
    """Run the wrapped model eagerly on its example inputs (for ``--pdb``), when both exist."""
    if flat is None or example is None:
        return None

    def rerun() -> Any:
        with torch.no_grad():
            return flat(*flat.flat_inputs(example.args, example.kwargs))

    return rerun


def stage_export(
    flat: FlatModule,
    example: ExampleInputs,
    *,
    opset: int | None,
    strategy: str | None,
    progress: Progress,
    scripted: bool,
) -> tuple[Any, str, list[Attempt], list[list[int | str | None]] | None]:
    """Capture and translate to ONNX, trying the strategies in order (capture retries at other example
    sizes when torch.export specializes a dynamic dim at the first ones).

    Returns ``(onnx model, strategy, attempts, output dims from the captured program or None)``."""
    module: torch.nn.Module = flat
    if (
        scripted
        and not example.kwargs
        and all(isinstance(a, torch.Tensor) for a in example.args)
        and flat.selects_all
    ):
        # the TorchScript exporter takes a ScriptModule as is (tracing a wrapper around one fails)
        module = flat.model
    plan = ExportPlan(
        module=module,
        flat_inputs=flat.flat_inputs(example.args, example.kwargs),
        specs=example.specs,
        dynamic_dims=example.dynamic_dims,
        input_names=[s.name for s in example.specs],
        output_names=list(flat.output_names),
        opset=opset,
        scripted=scripted,
        example_sizes=example.example_dims(),
        resize=lambda sizes: flat.flat_inputs(*example.make(sizes, rng=0)),
    )
    model, used, attempts = run_strategies(plan, strategy=strategy, on_retry=progress.note)
    return model, used, attempts, plan.output_dims()


def _producer(opset: int) -> dict[str, Any]:
    import onnx
    import onnxscript

    from torchport import __version__

    return {
        "torchport": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
        "opset": opset,
    }


def default_name(reference: str) -> str:
    """A package name from the source.

    Example:
        >>> default_name("models/mlp.py:make_model"), default_name("pkg.vision.resnet:build")
        ('mlp', 'resnet')
        >>> default_name("exports/model.pt2"), default_name("models/models.py:TinyNet")
        ('model', 'TinyNet')
    """
    text = reference.rstrip("/\\")
    left, attr = text, ""
    if ":" in text and not re.match(r"^[A-Za-z]:[\\/]", text):
        left, _, attr = text.rpartition(":")
    path = Path(left)
    if left and path.is_dir():  # HF folder[:component]
        base = path.name + (f"-{attr}" if attr else "")
    elif (
        path.suffix.lower() in (".py", ".pt", ".pt2", ".ts", ".pth", ".jit", ".ptl")
        or "/" in left
        or "\\" in left
    ):
        base = path.stem
    else:  # package.module
        base = left.rsplit(".", 1)[-1]
    if attr and base in ("model", "models", "__init__", "main") and attr[:1].isupper():
        base = attr
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.") or "model"


def build_manifest(
    *,
    loaded: LoadedModel,
    example: ExampleInputs,
    model: Any,
    name: str,
    version: str,
    strategy: str,
    attempts: list[Attempt],
    opset: int,
    seconds: float,
    data_files: list[str],
    eager_shapes: list[list[int]],
    outputs: OutputSelection,
    program_dims: list[list[int | str | None]] | None = None,
) -> Manifest:
    """The manifest of a freshly exported package (``validated=False``; files are hashed on commit)."""
    return Manifest(
        name=name,
        version=version,
        inputs=list(example.specs),
        outputs=output_specs(model, example.dynamic_dims, eager_shapes, program_dims),
        dynamic_dims=dict(example.dynamic_dims),
        producer=_producer(opset),
        source={
            "kind": loaded.kind,
            "reference": absolute_reference(loaded.reference),
            "sha256": loaded.sha256,
        },
        export={
            "strategy": strategy,
            "attempts": [a.to_dict() for a in attempts],
            "opset": opset,
            "seconds": round(seconds, 3),
            "outputs": str(outputs),
        },
        variants={"fp32": Variant(file=MODEL_FILE, precision="fp32", data_files=list(data_files))},
        validated=False,
    )


# --------------------------------------------------------------------------- the pipeline


def export_model(
    source: str | torch.nn.Module,
    output: str | Path,
    *,
    example_args: Sequence[Any] | None = None,
    example_inputs: Mapping[str, Any] | None = None,
    output_names: Sequence[str] | None = None,
    inputs: Sequence[str | TensorSpec] | None = None,
    dims: Mapping[str, Any] | Sequence[str] | None = None,
    sample: str | None = None,
    outputs: str | Sequence[str] | None = None,
    opset: int | None = None,
    name: str | None = None,
    version: str = "1",
    strategy: str | None = None,
    overwrite: bool = False,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    attn_implementation: str | None = None,
    quiet: bool = False,
    progress: Progress | None = None,
    before_commit: BeforeCommit | None = None,
    pdb: bool = False,
    validate: bool = True,
    level: str = "none",
    fp16: bool = False,
    int8: str | None = None,
    int4: bool = False,
    int4_block_size: int = 32,
    int4_symmetric: bool = True,
    int4_head: bool = True,
    int4_embeddings: bool = False,
    calibration: str | Path | None = None,
    disable: Sequence[str] = (),
    atol: float | None = None,
    rtol: float | None = None,
    task: str | None = None,
    attention: str = "fused",
) -> ExportResult:
    """Export a PyTorch model to an ONNX model package.

    Args:
        source: ``file.py:factory``, ``package.module:attr``, a TorchScript ``.pt``, an
            ExportedProgram ``.pt2``, a Hugging Face folder (``folder:encoder`` for its encoder), or
            an ``nn.Module`` object (exported in the mode it is in, as ``torch.onnx.export`` does).
        example_args: with a module object: its positional example inputs (a tensor or a tuple).
        example_inputs: with a module object: example inputs by ``forward()`` parameter name.
        output_names: names for the exported outputs, in order (default: the model's own names,
            ``output_0, output_1...`` for a tuple).
        output: the package folder to create (atomically: nothing is left there on failure).
        inputs: input specs, ``"input_ids:int64[batch,seq]"`` (or TensorSpecs), overriding the
            model's own example inputs.
        dims: dynamic dim ranges: ``["batch=1..64"]`` or ``{"batch": (1, 64)}``.
        sample: a ``.npz``/``.pt`` sample file of example inputs.
        outputs: which outputs to export: ``None``/``"default"`` (causal LMs: logits; others: all
            but caches), ``"all"``, or names (``"logits"``, ``["last_hidden_state"]``).
        opset: ONNX opset (default: torch.onnx's).
        name: package name (default: from the source).
        version: package version string.
        strategy: force one strategy (``dynamo-nonstrict``, ``dynamo-strict``,
            ``dynamo-decomp-workaround``, ``torchscript``); default: try them in order.
        overwrite: replace an existing package at ``output``.
        external_data_threshold: weights above this many bytes go to ``model.onnx.data``.
        attn_implementation: Hugging Face attention implementation (``"sdpa"``, ``"eager"``).
        quiet: print no progress lines.
        progress: a :class:`Progress` to print to (overrides ``quiet``).
        before_commit: hook called with an :class:`ExportContext` after ``model.onnx`` and the
            manifest exist in the temporary folder and before the package is committed; it may
            modify the manifest and return a parity report (written as ``parity.json``).
        pdb: on a capture/translation failure, open pdb at the failing frame of the user's code
            before raising.
        validate: check the package against eager PyTorch before writing it and refuse to write a
            package that fails (``ValidationError`` with the parity table); ``False`` writes it
            unvalidated (``validated: false`` in the manifest).
        level / fp16 / int8 / calibration / disable: optimization, as ``torchport optimize``
            (:func:`~torchport.exporters.optimize_package`); default: no optimization passes.
        int4 / int4_block_size / int4_symmetric / int4_head / int4_embeddings: also write
            ``model.int4.onnx`` (weight-only 4-bit ``MatMulNBits``), as ``torchport optimize --int4``.
        atol / rtol: override the fp32 parity tolerance (see ``DEFAULT_TOLERANCES``).
        task: ``"auto"`` (default: Hugging Face causal LMs export with their key/value cache unless
            ``outputs``/``inputs`` are given), ``"text-generation"`` (force it), ``"default"`` (never);
            see :mod:`torchport.exporters._decoder_export`.
        attention: text-generation only: ``"fused"`` (default: one ONNX Runtime
            ``GroupQueryAttention`` per layer, the fastest on the CPU; falls back to ``"standard"``
            with a note where the model's attention does not fit it) or ``"standard"`` (the model's
            own attention ops; use it for CUDA, where ONNX Runtime's GroupQueryAttention runs float16 only).

    Returns:
        An :class:`ExportResult`.

    Raises:
        LoadError: the source could not be loaded.
        UsageError: bad --input/--dim/--strategy/--outputs, or no example inputs.
        ExportError: capture, ONNX translation or saving failed (``.stage`` says which; the message
            has the op, the user's source line and what to try).
        PackageError: ``output`` exists (without ``overwrite``) or cannot be written.

    Example:
        >>> result = export_model("torchport.exporters.examples.mlp:make_model", "out/mlp",
        ...                       dims=["batch=1..64"])                                # doctest: +SKIP
        >>> result.manifest.inputs[0].shape
        ['batch', 16]
    """
    if attention not in ATTENTION_MODES:
        raise UsageError(f"unknown attention {attention!r}; use one of: {', '.join(ATTENTION_MODES)}")
    gate = GateOptions(
        level=level,
        fp16=fp16,
        int8=int8,
        int4=int4,
        int4_block_size=int4_block_size,
        int4_symmetric=int4_symmetric,
        int4_head=int4_head,
        int4_embeddings=int4_embeddings,
        calibration=calibration,
        disable=tuple(disable),
        validate=validate,
        atol=atol,
        rtol=rtol,
    )
    user_hook = before_commit
    before_commit = chain_hooks(export_gate(gate), before_commit)  # options checked before exporting
    progress = progress or Progress(quiet=quiet)
    start = time.perf_counter()
    try:
        with write_package(output, overwrite=overwrite) as writer:
            with progress.stage("load") as st:
                loaded = stage_load(source, attn_implementation, example_args, example_inputs)
                st.detail = f"{loaded.reference} ({loaded.kind})"
            if wants_seq2seq(loaded, task, outputs, inputs, sample):
                package, used, attempts = export_seq2seq(
                    loaded,
                    writer,
                    progress,
                    gate,
                    task=task,
                    dims=_as_dims(dims),
                    opset=opset,
                    name=name or default_name(loaded.reference),
                    version=version,
                    producer=_producer,
                )
                return ExportResult(
                    package, used, attempts, time.perf_counter() - start, dict(progress.times)
                )
            if wants_decoder(loaded, task, outputs, inputs, sample, user_hook):
                package, used, attempts = export_text_generation(
                    loaded,
                    writer,
                    progress,
                    gate,
                    dims=_as_dims(dims),
                    opset=opset,
                    name=name or default_name(loaded.reference),
                    version=version,
                    producer=_producer,
                    attention=attention,
                )
                return ExportResult(
                    package, used, attempts, time.perf_counter() - start, dict(progress.times)
                )
            with progress.stage("inputs") as st:
                example = stage_inputs(loaded, inputs, dims, sample)
                st.detail = str(example)
            if sample is not None and not inputs and not example.dynamic_dims:
                progress.warn(
                    f"the inputs of --sample {sample} have fixed shapes, so the model will too; add "
                    "--dim batch=1..N (axis 0 of every input) or a DYNAMIC_DIMS next to the factory"
                )
            with progress.stage("eager run") as st:
                flat = stage_wrap(loaded, example, outputs, output_names)
                st.detail = "outputs: " + ", ".join(flat.output_names)
                eager_shapes = flat.example_output_shapes
            with progress.stage("export") as st:
                export_start = time.perf_counter()
                model, used, attempts, program_dims = stage_export(
                    flat,
                    example,
                    opset=opset,
                    strategy=strategy,
                    progress=progress,
                    scripted=isinstance(_model_of(loaded), torch.jit.ScriptModule),
                )
                used_opset = int(model.opset_imports.get("", opset or 0))
                st.detail = f"strategy {used}, opset {used_opset}"
            with progress.stage("save") as st:
                finalize_model(
                    model,
                    example.specs,
                    example.dynamic_dims,
                    {
                        "torchport.source": loaded.reference,
                        "torchport.strategy": used,
                        "torch.version": torch.__version__,
                    },
                )
                model_path = writer.path / MODEL_FILE
                data_files = save_model(model, model_path, external_data_threshold=external_data_threshold)
                manifest = build_manifest(
                    loaded=loaded,
                    example=example,
                    model=model,
                    name=name or default_name(loaded.reference),
                    version=str(version),
                    strategy=used,
                    attempts=attempts,
                    opset=used_opset,
                    seconds=time.perf_counter() - export_start,
                    data_files=data_files,
                    eager_shapes=eager_shapes,
                    outputs=OutputSelection.parse(outputs),
                    program_dims=program_dims,
                )
                text = package_text_assets(loaded, writer.path, [s.name for s in example.specs])
                if text is not None:
                    manifest = manifest.replace(extra={**manifest.extra, "text": text})
                st.detail = f"{MODEL_FILE}" + (f" + {', '.join(data_files)}" if data_files else "")
            # ---- the one place for optimization / validation: model.onnx is in writer.path, not committed
            parity = None
            if before_commit is not None:
                ctx = ExportContext(loaded, example, flat, writer, model_path, manifest, progress)
                parity = before_commit(ctx)
                manifest = ctx.manifest
            with progress.stage("commit") as st:
                package = writer.commit(manifest, parity=parity)
                st.detail = str(package.path)
    except ExportError as e:
        if pdb:
            debug_post_mortem(e, rerun=_eager_rerun(locals().get("flat"), locals().get("example")))
        raise
    return ExportResult(
        package=package,
        strategy=used,
        attempts=attempts,
        seconds=time.perf_counter() - start,
        stages=dict(progress.times),
    )
