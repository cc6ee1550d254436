"""`torchport export SOURCE -o PKG`: capture a PyTorch model and write an ONNX model package.

torch is imported lazily inside the command, so `torchport --help` works without it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from torchport.cli._options import (
    atol_option,
    calibration_option,
    disable_option,
    fp16_option,
    int4_asymmetric_option,
    int4_block_size_option,
    int4_embeddings_option,
    int4_keep_head_option,
    int4_option,
    int8_option,
    level_option,
    rtol_option,
    strategy_option,
)
from torchport.exporters._registries import ATTENTION_MODES, describe
from torchport.runtimes import TorchportError
from torchport.runtimes._package import check_destination


def export(
    source: str = typer.Argument(
        ...,
        help=(
            "The model: path/to/file.py:factory (e.g. models/net.py:make_model), package.module:attr "
            "(e.g. torchport.exporters.examples.cnn:make_model), a TorchScript file (model.pt), an "
            "ExportedProgram (model.pt2), or a local Hugging Face folder (e.g. ./bert-tiny; "
            "./whisper-tiny:encoder for its encoder)."
        ),
        show_default=False,
    ),
    output: Path = typer.Option(
        ...,
        "-o",
        "--output",
        help="Package folder to create, e.g. -o out/cnn. Nothing is left there on failure.",
    ),
    inputs: Optional[list[str]] = typer.Option(
        None,
        "--input",
        "-i",
        help=(
            "An input as name:dtype\\[dims]; repeat for each input. Named dims are dynamic, numbers fixed, "
            'e.g. --input "input_ids:int64\\[batch,seq]" --input "attention_mask:int64\\[batch,seq]". '
            "Default: the model's example_inputs(), a --sample file, or the Hugging Face config."
        ),
    ),
    dims: Optional[list[str]] = typer.Option(
        None,
        "--dim",
        "-d",
        help="Range of a dynamic dim as name=min..max; repeat per dim, e.g. --dim batch=1..64 --dim seq=1..512.",
    ),
    opset: Optional[int] = typer.Option(
        None, "--opset", help="ONNX opset version, e.g. --opset 18. Default: torch.onnx's default."
    ),
    name: Optional[str] = typer.Option(
        None, "--name", help="Package (model) name, e.g. --name resnet50. Default: from the source."
    ),
    version: str = typer.Option(
        "1",
        "--model-version",
        help="Version of the model package (served as its version), e.g. --model-version 2.",
    ),
    strategy: Optional[str] = strategy_option(),
    outputs: Optional[str] = typer.Option(
        None,
        "--outputs",
        help=(
            'Which outputs to export: "default" (causal LMs: logits; other models: all but caches), "all", '
            "or comma-separated names, e.g. --outputs logits or --outputs last_hidden_state,pooler_output."
        ),
    ),
    task: Optional[str] = typer.Option(
        None,
        "--task",
        help=(
            "auto (default), text-generation or default. auto exports Hugging Face causal LMs for generation: "
            "input_ids, attention_mask, position_ids and past_key_values.N.key/value in; logits and "
            "present.N.key/value out (--outputs logits keeps a logits-only export), e.g. --task text-generation."
        ),
    ),
    attention: str = typer.Option(
        "fused",
        "--attention",
        help=(
            "Attention of a text-generation export: "
            + describe(ATTENTION_MODES)
            + ". fused falls back to standard (with a note) where the model's attention does not fit it, "
            "e.g. --attention standard for a package served on CUDA."
        ),
    ),
    output_names: Optional[str] = typer.Option(
        None,
        "--output-names",
        help="Names for the exported outputs, in order (a tuple's output_0, output_1... otherwise), "
        "e.g. --output-names logits,probs.",
    ),
    sample: Optional[Path] = typer.Option(
        None,
        "--sample",
        help="Example inputs from a file: .npz keyed by forward() parameter names, or a .pt (weights_only), "
        "e.g. --sample inputs.npz.",
    ),
    force: bool = typer.Option(
        False, "--force", "-f", help="Replace an existing package at -o, e.g. -o out/cnn --force."
    ),
    pdb: bool = typer.Option(
        False,
        "--pdb",
        help="On a capture failure, open the Python debugger at the failing line of your model, e.g. --pdb "
        "(then `p x.shape`, `up`, `q`).",
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Print no progress lines, only the result, e.g. -q."
    ),
    no_validate: bool = typer.Option(
        False,
        "--no-validate",
        help="Skip the parity check against eager PyTorch (the manifest records validated: false), e.g. "
        "--no-validate. By default a package that does not match is not written.",
    ),
    level: str = level_option("none"),
    fp16: bool = fp16_option(),
    int8: Optional[str] = int8_option(),
    int4: bool = int4_option(),
    int4_block_size: int = int4_block_size_option(),
    int4_asymmetric: bool = int4_asymmetric_option(),
    int4_keep_head: bool = int4_keep_head_option(),
    int4_embeddings: bool = int4_embeddings_option(),
    calibration: Optional[Path] = calibration_option(),
    disable: Optional[list[str]] = disable_option(),
    atol: Optional[float] = atol_option(),
    rtol: Optional[float] = rtol_option(),
) -> None:
    """Export a PyTorch model to an ONNX model package, checked against eager PyTorch.

    Example: torchport export torchport.exporters.examples.cnn:make_model -o out/cnn --dim batch=1..64
    """
    try:
        check_destination(output, overwrite=force)  # before seconds of importing torch and loading
        from torchport.exporters._export import export_model

        result = export_model(
            source,
            output,
            inputs=inputs or None,
            dims=dims or None,
            sample=str(sample) if sample is not None else None,
            outputs=outputs,
            output_names=output_names.split(",") if output_names else None,
            task=task,
            attention=attention,
            opset=opset,
            name=name,
            version=version,
            strategy=strategy,
            overwrite=force,
            quiet=quiet,
            pdb=pdb,
            validate=not no_validate,
            level=level,
            fp16=fp16,
            int8=int8,
            int4=int4,
            int4_block_size=int4_block_size,
            int4_symmetric=not int4_asymmetric,
            int4_head=not int4_keep_head,
            int4_embeddings=int4_embeddings,
            calibration=str(calibration) if calibration is not None else None,
            disable=disable or (),
            atol=atol,
            rtol=rtol,
        )
    except TorchportError as e:
        # one place for user errors: a message, no traceback, exit code 1 (also under CliRunner)
        sys.stderr.write(f"error: {e}\n")
        sys.stderr.flush()
        raise typer.Exit(1) from None
    typer.echo(str(result))


def register(app: typer.Typer) -> None:
    app.command("export")(export)
