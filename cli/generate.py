"""`torchport generate PKG "text"` / `torchport generate PKG --audio file.wav`: a quick look at what a
generation package answers, with tokens/s."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def generate(
    package: Path = typer.Argument(..., help="Model package folder (made by `torchport export`)."),
    text: Optional[str] = typer.Argument(None, help='The prompt or source text, e.g. "translate: hello".'),
    audio: Optional[Path] = typer.Option(
        None, "--audio", help="A WAV file (16 kHz mono) for a speech package, e.g. --audio speech.wav."
    ),
    language: Optional[str] = typer.Option(
        None, "--language", help="Speech packages: the language, e.g. --language en."
    ),
    max_tokens: int = typer.Option(
        32, "--max-tokens", help="Tokens to generate at most, e.g. --max-tokens 64."
    ),
    num_beams: int = typer.Option(
        1, "--num-beams", help="Beam search width (encoder-decoders), e.g. --num-beams 4."
    ),
    temperature: float = typer.Option(0.0, "--temperature", help="Sample at this temperature (0: greedy)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling, e.g. --top-p 0.9."),
    top_k: int = typer.Option(0, "--top-k", help="Sample among the k likeliest tokens, e.g. --top-k 50."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the sampling, e.g. --seed 0."),
    variant: str = typer.Option("fp32", "--variant", help="Which variant runs: fp32, fp16, int8, int4."),
) -> None:
    """Generate once from a package and print the text and tokens/s."""
    from torchport.runtimes._generate_once import generate_once

    sample = temperature > 0 or top_p < 1.0 or top_k > 0
    report = generate_once(
        package,
        text,
        audio=str(audio) if audio is not None else None,
        language=language,
        variant=variant,
        num_beams=num_beams,
        max_new_tokens=max_tokens,
        do_sample=sample,
        temperature=temperature if temperature > 0 else 1.0,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
    )
    typer.echo(str(report))


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
