"""`torchport optimize PKG`: ONNX graph passes, fp16, int8 and int4 variants, each validated against fp32."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from torchport.cli._options import (
    as_json_option,
    atol_option,
    calibration_option,
    disable_option,
    eval_budget_bytes,
    eval_budget_option,
    eval_option,
    eval_prompts_option,
    eval_tokens_option,
    fp16_option,
    int4_asymmetric_option,
    int4_block_size_option,
    int4_embeddings_option,
    int4_keep_head_option,
    int4_option,
    int8_option,
    level_option,
    n_option,
    provider_option,
    rtol_option,
    samples_option,
)


def optimize(
    package: Path = typer.Argument(..., help="Model package folder (made by `torchport export`)."),
    level: str = level_option("all"),
    fp16: bool = fp16_option(),
    int8: Optional[str] = int8_option(),
    int4: bool = int4_option(),
    int4_block_size: int = int4_block_size_option(),
    int4_asymmetric: bool = int4_asymmetric_option(),
    int4_keep_head: bool = int4_keep_head_option(),
    int4_embeddings: bool = int4_embeddings_option(),
    calibration: Optional[Path] = calibration_option(),
    disable: Optional[list[str]] = disable_option(),
    provider: str = provider_option("the offline graph is optimized for and parity runs on"),
    n: int = n_option(),
    samples: Optional[Path] = samples_option(),
    atol: Optional[float] = atol_option(),
    rtol: Optional[float] = rtol_option(),
    eval_data: Optional[Path] = eval_option(),
    max_accuracy_drop: float = typer.Option(
        1.0,
        "--max-accuracy-drop",
        help="--eval: refuse a variant whose accuracy is more than this many points below fp32's.",
    ),
    max_perplexity_rise: float = typer.Option(
        5.0,
        "--max-perplexity-rise",
        help="--eval: refuse a variant whose perplexity is more than this many percent above fp32's.",
    ),
    eval_tokens: int = eval_tokens_option(),
    eval_prompts: Optional[Path] = eval_prompts_option(),
    eval_budget: float = eval_budget_option(),
    as_json: bool = as_json_option("the pass records and parity"),
) -> None:
    """Optimize a model package in place, add fp16 / int8 / int4 variants, and validate each one against
    the package's validated fp32 model (no torch needed); exit 1 when a variant does not match.

    Example: torchport optimize out/bert --level all --int8 dynamic

    With --eval, each variant written must also keep its task metric on the held-out set (accuracy within
    --max-accuracy-drop points, perplexity within --max-perplexity-rise percent), else nothing is written.
    Example: torchport optimize out/digits --int8 dynamic --eval heldout.npz
    """
    from torchport.exporters import optimize_package

    result = optimize_package(
        package,
        level=level,
        fp16=fp16,
        int8=int8,
        calibration=calibration,
        disable=disable or (),
        provider=provider,
        n=n,
        samples=samples,
        atol=atol,
        rtol=rtol,
        int4=int4,
        int4_block_size=int4_block_size,
        int4_symmetric=not int4_asymmetric,
        int4_head=not int4_keep_head,
        int4_embeddings=int4_embeddings,
        eval_data=eval_data,
        max_accuracy_drop=max_accuracy_drop,
        max_perplexity_rise=max_perplexity_rise / 100,
        eval_tokens=eval_tokens,
        eval_prompts=eval_prompts,
        eval_budget=eval_budget_bytes(eval_budget),
    )
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(json.dumps(result.to_dict(), indent=2, default=str) if as_json else str(result))
    if eval_data is not None and not as_json:
        from torchport.runtimes._eval import format_eval

        typer.echo(format_eval(result.package.manifest.extra["eval"]))
    if not result:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("optimize")(optimize)
