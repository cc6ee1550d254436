"""The typer application and the one place where :class:`TorchportError` becomes exit code 1.

Each command group lives in its own module with a ``register(app)`` function; commands parse
arguments, call one library function and render the result. No logic lives only here.
"""

from __future__ import annotations

import importlib
import sys

import typer

from torchport.runtimes import TorchportError

app = typer.Typer(
    name="torchport",
    help=(
        "Take an eager PyTorch model to production: export it to a validated ONNX model package, "
        "optimize it, and serve it over the Open Inference Protocol (KServe v2)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

#: command modules, in the order `torchport --help` lists them
COMMAND_MODULES = (
    "torchport.cli.export",
    "torchport.cli.optimize",
    "torchport.cli.validate",
    "torchport.cli.inspect_package",
    "torchport.cli.serve",
    "torchport.cli.bench",
    "torchport.cli.package",
    "torchport.cli.deploy",
)

for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print torchport's version and exit.", is_eager=True
    ),
) -> None:
    if version:
        from torchport import __version__

        typer.echo(__version__)
        raise typer.Exit()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI, turn a TorchportError into one line and exit 1."""
    try:
        app(args=argv, prog_name="torchport")
    except TorchportError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None
