"""Options shared by several commands, defined once with their help (generated from the registries).

Each function returns a fresh ``typer.Option`` to use as a parameter default, e.g.
``level: str = level_option("all")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from torchport.exporters._registries import INT8_MODES, LEVELS, ONNX_PASSES, STRATEGIES, describe


def level_option(default: str) -> Any:
    return typer.Option(
        default,
        "--level",
        help=f"Optimization level: {describe(LEVELS)}. e.g. --level all.",
        show_default=True,
    )


def fp16_option() -> Any:
    return typer.Option(
        False,
        "--fp16",
        help="Also write model.fp16.onnx (float32 I/O, sensitive ops in float32), e.g. --fp16.",
    )


def int8_option() -> Any:
    return typer.Option(
        None, "--int8", help=f"Also write model.int8.onnx: {describe(INT8_MODES)}. e.g. --int8 dynamic."
    )


def int4_option() -> Any:
    return typer.Option(
        False,
        "--int4",
        help="Also write model.int4.onnx: weight-only 4-bit MatMulNBits (block-wise scales; the output head "
        "quantized too, embeddings float32 unless --int4-embeddings), e.g. --int4.",
    )


def int4_block_size_option() -> Any:
    return typer.Option(
        32,
        "--int4-block-size",
        help="Input rows per int4 scale: 16, 32, 64, 128 or 256, e.g. --int4-block-size 64.",
    )


def int4_asymmetric_option() -> Any:
    return typer.Option(
        False,
        "--int4-asymmetric",
        help="Asymmetric int4 blocks (a zero point per block; default symmetric), e.g. --int4 --int4-asymmetric.",
    )


def int4_keep_head_option() -> Any:
    return typer.Option(
        False,
        "--int4-keep-head",
        help="Keep the output head (logits) in float32 in int4, e.g. --int4 --int4-keep-head.",
    )


def int4_embeddings_option() -> Any:
    return typer.Option(
        False,
        "--int4-embeddings",
        help="Quantize embedding tables to 4 bits too (GatherBlockQuantized), e.g. --int4 --int4-embeddings.",
    )


def calibration_option() -> Any:
    return typer.Option(
        None,
        "--calibration",
        help="Calibration inputs (.npz keyed by input name) for --int8 static, e.g. --calibration calib.npz. "
        "Without it, int8 static calibrates on generated inputs (a warning says so).",
    )


def disable_option() -> Any:
    return typer.Option(
        None,
        "--disable",
        help=f"Skip an optimization pass by name (repeatable): {describe(ONNX_PASSES)}. e.g. --disable ort_offline.",
    )


def provider_option(what: str) -> Any:
    return typer.Option(
        "cpu", "--provider", help=f"ONNX Runtime execution provider {what}, e.g. --provider cuda."
    )


def strategy_option() -> Any:
    return typer.Option(
        None,
        "--strategy",
        help=f"Force one export strategy instead of trying them in order: {describe(STRATEGIES)}. "
        "e.g. --strategy torchscript.",
    )


def n_option() -> Any:
    return typer.Option(
        20,
        "--n",
        min=1,
        help="Parity: generated inputs (dim boundaries + random points), e.g. --n 50; for a "
        "text-generation package, the decode steps after the prompt step.",
    )


def samples_option() -> Any:
    return typer.Option(
        None, "--samples", help="Parity: extra inputs, .npz keyed by input name, e.g. --samples s.npz."
    )


def eval_option() -> Any:
    return typer.Option(
        None,
        "--eval",
        help="Task metrics on a held-out set, per variant: an .npz of the model's inputs with a `labels` "
        "array (accuracy, top-1 agreement with fp32) or, for a text-generation package, a UTF-8 text file "
        "(perplexity, greedy agreement with fp32), e.g. --eval heldout.npz.",
    )


def eval_tokens_option() -> Any:
    return typer.Option(
        32, "--eval-tokens", help="--eval on text: new tokens per prompt of the greedy agreement, e.g. 128."
    )


def eval_prompts_option() -> Any:
    return typer.Option(
        None,
        "--eval-prompts",
        help="--eval on text: held-out prompts of the greedy agreement, a UTF-8 file with one per line "
        "(duplicates dropped), e.g. --eval-prompts prompts.txt. Default: 16 distinct lines of the eval text.",
    )


def eval_budget_option() -> Any:
    return typer.Option(
        512.0,
        "--eval-budget",
        help="--eval: the most MiB of eval data read into memory (uncompressed); a larger set is refused, "
        "e.g. --eval-budget 2048.",
    )


def eval_budget_bytes(mib: float) -> int:
    """``--eval-budget`` MiB as bytes (one-line error for a budget that is not positive)."""
    from torchport.runtimes import UsageError

    if not mib > 0:
        raise UsageError(
            f"--eval-budget must be a positive number of MiB, got {mib:g}; e.g. --eval-budget 512"
        )
    return int(mib * 2**20)


def atol_option() -> Any:
    return typer.Option(
        None,
        "--atol",
        help="Parity: absolute tolerance, relative to each output's magnitude (default 1e-4 for fp32), "
        "e.g. --atol 1e-3.",
    )


def rtol_option() -> Any:
    return typer.Option(
        None, "--rtol", help="Parity: relative tolerance (default 1e-3 for fp32), e.g. --rtol 1e-2."
    )


def as_json_option(what: str) -> Any:
    return typer.Option(False, "--json", help=f"Print {what} as JSON instead of the table, e.g. --json.")


def optional_path(value: Optional[Path]) -> Optional[str]:
    """``str(value)`` or ``None``."""
    return str(value) if value is not None else None


def model_version_option(what: str) -> Any:
    return typer.Option(
        None,
        "--model-version",
        help=f"PEP 440 version of {what} (default: the package's), e.g. --model-version 1.2.0.",
    )


def deprecated_version_option() -> Any:
    """The old spelling of ``--model-version`` on ``package`` and ``deploy container`` (hidden)."""
    return typer.Option(None, "--version", hidden=True, help="Deprecated: use --model-version.")


def model_version(new: Optional[str], deprecated: Optional[str]) -> Optional[str]:
    """The version given with ``--model-version``, or with the deprecated ``--version`` (with a warning).

    Raises:
        UsageError: both spellings given with different values.
    """
    if deprecated is None:
        return new
    from torchport.runtimes import UsageError

    if new is not None and new != deprecated:
        raise UsageError(
            f"--version {deprecated} and --model-version {new} disagree; give --model-version only"
        )
    typer.echo(
        "warning: --version is deprecated here; use --model-version (`torchport --version` prints torchport's "
        "own version)",
        err=True,
    )
    return deprecated
