"""`torchport validate PKG --model SOURCE`: the parity gate (eager PyTorch vs ONNX Runtime)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def validate(
    package: Path = typer.Argument(..., help="Model package folder (made by `torchport export`)."),
    model: str = typer.Option(
        ...,
        "--model",
        help="The eager model the package came from, as `torchport export` takes it (file.py:factory...).",
    ),
    samples: Path | None = typer.Option(None, "--samples", help="Extra inputs: .npz keyed by input name."),
    n: int = typer.Option(20, "--n", min=1, help="Generated inputs (dim boundaries + random points)."),
    atol: float | None = typer.Option(None, "--atol", help="Absolute tolerance (default 1e-4 for fp32)."),
    rtol: float | None = typer.Option(None, "--rtol", help="Relative tolerance (default 1e-3 for fp32)."),
    variant: list[str] = typer.Option(
        [], "--variant", help="Variant(s) to check (default: all in the package)."
    ),
    provider: str = typer.Option("cpu", "--provider", help="ONNX Runtime execution provider."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated inputs."),
    no_localize: bool = typer.Option(
        False, "--no-localize", help="Do not search for the first diverging node."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print parity.json instead of the table."),
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
