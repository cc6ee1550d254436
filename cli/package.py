"""`torchport package PKG`: a model package as a reproducible, pip-installable wheel. No torch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from torchport.cli._options import deprecated_version_option, model_version, model_version_option


def package(
    package_dir: Path = typer.Argument(
        ..., metavar="PKG", help="The model package folder (torchport export)."
    ),
    name: Optional[str] = typer.Option(
        None, "--name", help="Module and distribution name (default: the model's name), e.g. --name cnn."
    ),
    version: Optional[str] = model_version_option("the wheel"),
    old_version: Optional[str] = deprecated_version_option(),
    out: Path = typer.Option(Path("dist"), "-o", "--out", help="Folder the wheel is written to."),
    variant: str = typer.Option(
        "fp32", "--variant", help="Variants to include: fp32, fp16, int8, int4 or all, e.g. --variant all."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing wheel of the same name."),
) -> None:
    """Build NAME-V-py3-none-any.whl: `import NAME; NAME.load().predict(...)`, `NAME-serve`.

    Byte-identical for the same package and options (SOURCE_DATE_EPOCH sets the timestamps).

    Example: torchport package out/cnn --model-version 1.0.0 -o dist/ && pip install "dist/cnn-1.0.0-py3-none-any.whl[cpu]"
    """
    from torchport.deploy import build_wheel

    version = model_version(version, old_version)
    result = build_wheel(package_dir, out, name=name, version=version, variant=variant, force=force)
    typer.echo(f"wrote {result}")


def register(app: typer.Typer) -> None:
    app.command("package")(package)
