"""`torchport optimize PKG`: ONNX graph passes, fp16 and int8 variants, written into the package."""

from __future__ import annotations

import json
from pathlib import Path

import typer

LEVEL_HELP = (
    "none: no graph passes; basic: onnxscript optimizer (constant folding, dead code, redundant "
    "casts/reshapes); all: basic + ONNX Runtime transformer fusions + a graph optimized offline for --provider."
)
DISABLE_HELP = (
    "Skip a pass by name (repeatable): optimize, ort_fusions, ort_offline, fp16, int8_dynamic, int8_static."
)


def optimize(
    package: Path = typer.Argument(..., help="Model package folder (made by `torchport export`)."),
    level: str = typer.Option("all", "--level", help=LEVEL_HELP),
    fp16: bool = typer.Option(
        False, "--fp16", help="Also write model.fp16.onnx (float32 I/O, sensitive ops in fp32)."
    ),
    int8: str | None = typer.Option(
        None,
        "--int8",
        help="Also write model.int8.onnx: 'dynamic' (weights int8) or 'static' (QDQ, calibrated).",
    ),
    calibration: Path | None = typer.Option(
        None, "--calibration", help="Calibration inputs (.npz keyed by input name) for --int8 static."
    ),
    disable: list[str] = typer.Option([], "--disable", help=DISABLE_HELP),
    provider: str = typer.Option(
        "cpu", "--provider", help="Execution provider the offline graph is optimized for."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the pass records as JSON."),
) -> None:
    """Optimize a model package in place and add fp16 / int8 variants.

    Re-validate afterwards: `torchport validate PKG --model SOURCE`.

    Example: torchport optimize out/bert --level all --int8 dynamic
    """
    from torchport.exporters import optimize_package

    result = optimize_package(
        package,
        level=level,
        fp16=fp16,
        int8=int8,
        calibration=calibration,
        disable=disable,
        provider=provider,
    )
    typer.echo(json.dumps(result.to_dict(), indent=2, default=str) if as_json else str(result))
    if not as_json:
        typer.echo(f"\nnext: torchport validate {package} --model SOURCE")


def register(app: typer.Typer) -> None:
    app.command("optimize")(optimize)
