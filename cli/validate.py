"""`torchport validate PKG [--model SOURCE]`: the parity gate (eager PyTorch vs ONNX Runtime)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from torchport.cli._options import (
    as_json_option,
    atol_option,
    eval_budget_bytes,
    eval_budget_option,
    eval_option,
    eval_prompts_option,
    eval_tokens_option,
    n_option,
    provider_option,
    rtol_option,
    samples_option,
)


def validate(
    package: Path = typer.Argument(..., help="Model package folder (made by `torchport export`)."),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        help="The eager model, as `torchport export` takes it, e.g. --model models/net.py:make_model. "
        "Default: the source recorded in the package at export.",
    ),
    record: bool = typer.Option(
        False,
        "--record",
        help="Write the result into the package even when the model's source changed since export "
        "(its sha256 differs), e.g. --record.",
    ),
    samples: Optional[Path] = samples_option(),
    n: int = n_option(),
    atol: Optional[float] = atol_option(),
    rtol: Optional[float] = rtol_option(),
    variant: list[str] = typer.Option(
        [], "--variant", help="Variant(s) to check (default: all in the package)."
    ),
    provider: str = provider_option("parity runs on"),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated inputs."),
    no_localize: bool = typer.Option(
        False, "--no-localize", help="Do not search for the first diverging node."
    ),
    eval_data: Optional[Path] = eval_option(),
    eval_tokens: int = eval_tokens_option(),
    eval_prompts: Optional[Path] = eval_prompts_option(),
    eval_budget: float = eval_budget_option(),
    as_json: bool = as_json_option("parity.json"),
) -> None:
    """Compare a package with eager PyTorch; write parity.json; exit 1 when parity fails.

    Example: torchport validate out/cnn --n 20   (the model recorded at export; --model to name another)

    A text-generation package runs a batched prompt and --n decode steps with the cache fed back:
    fp32 against eager PyTorch, other variants against model.onnx. Example: torchport validate out/llama --n 8
    """
    from torchport.exporters import validate as run_validate

    if eval_data is not None:  # a bad eval set is refused before the parity run
        from torchport.runtimes._eval import check_eval_data

        budget = eval_budget_bytes(eval_budget)
        check_eval_data(eval_data, prompts=eval_prompts, max_bytes=budget)
    result = run_validate(
        package,
        model,
        variants=variant or None,
        samples=samples,
        n=n,
        atol=atol,
        rtol=rtol,
        provider=provider,
        seed=seed,
        localize_failures=not no_localize,
        record=record,
    )

    evaluated = None
    if eval_data is not None:
        from torchport.runtimes import evaluate_package, record_eval

        evaluated = evaluate_package(
            package,
            eval_data,
            variants=variant or None,
            tokens=eval_tokens,
            prompts=eval_prompts,
            max_bytes=budget,
            providers=provider,
            progress=True,
        )
        if result:
            record_eval(package, evaluated)
    if as_json:
        out = result.to_dict()
        if evaluated is not None:
            out["eval"] = evaluated.to_dict()
        typer.echo(json.dumps(out, indent=2, default=str))
    else:
        typer.echo(str(result))
        if evaluated is not None:
            typer.echo(str(evaluated))
    if not result:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
