"""torchport.cli — the typer app (`torchport export | optimize | validate | inspect | serve`)."""

from torchport.cli._app import app, main

__all__ = ["app", "main"]
