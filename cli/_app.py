"""The typer application and the one place where :class:`TorchportError` becomes exit code 1.

Each command group lives in its own module with a ``register(app)`` function; commands parse
arguments, call one library function and render the result. No logic lives only here.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

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
    "torchport.cli.generate",
    "torchport.cli.bench",
    "torchport.cli.package",
    "torchport.cli.deploy",
)

for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def _print_version(value: bool) -> None:
    """Runs while the options are parsed, so ``torchport --version`` needs no command."""
    if value:
        from torchport import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print torchport's version and exit, e.g. torchport --version.",
        is_eager=True,
        callback=_print_version,
    ),
) -> None:
    """Options of torchport itself (before the command)."""


def _hide_flag_types(command: Any) -> Any:
    """Flags take no value: show none in ``--help`` (typer prints ``<bool>``, inviting ``--fp16 true``)."""
    for param in command.params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    make_help_option = command.get_help_option

    def help_option(ctx: Any) -> Any:
        option = make_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = help_option
    for sub in getattr(command, "commands", {}).values():
        _hide_flag_types(sub)
    return command


def build_command() -> Any:
    """The click command of the app, as ``torchport`` runs it."""
    return _hide_flag_types(typer.main.get_command(app))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI, turn a TorchportError into one line and exit 1."""
    try:
        build_command().main(args=argv, prog_name="torchport")
    except TorchportError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None
