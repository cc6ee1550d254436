"""`torchport validate PKG --model SOURCE`: the parity gate (eager PyTorch vs ONNX Runtime)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from torchport.cli._options import (
    as_json_option,
    atol_option,
    n_option,
    provider_option,
    rtol_option,
    samples_option,
)


def validate(
    package: Path = typer.Argument(..., help="Model package folder (made by `torchport export`)."),
    model: str = typer.Option(
        ...,
        "--model",
        help="The eager model the package came from, as `torchport export` takes it (file.py:factory...).",
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
    as_json: bool = as_json_option("parity.json"),
) -> None:
    """Compare a package with eager PyTorch; write parity.json; exit 1 when parity fails.

    Example: torchport validate out/cnn --model torchport.exporters.examples.cnn:make_model --n 20
    """
    from torchport.exporters import validate as run_validate

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
    )
    typer.echo(json.dumps(result.to_dict(), indent=2, default=str) if as_json else str(result))
    if not result:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
