"""`torchport inspect PKG`: signature, dynamic dims, opset, op histogram, size, files, parity."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def inspect(
    package: Path = typer.Argument(
        ..., help="Model package folder, e.g. out/cnn (made by `torchport export`)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of tables."),
    no_verify: bool = typer.Option(
        False, "--no-verify", help="Skip checking file hashes (faster on multi-GB packages)."
    ),
) -> None:
    """Show what a model package holds, without running it.

    Example: torchport inspect out/cnn --json
    """
    from torchport.runtimes._inspect import inspect_package

    summary = inspect_package(package, verify=not no_verify)
    typer.echo(json.dumps(summary.to_dict(), indent=2, default=str) if as_json else str(summary))


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
