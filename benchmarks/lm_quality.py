"""Quality of the trained LM's compressed decoders, per recipe: what int8 / int4 cost where users feel it.

The test bed's trained LM (``build_lm("bench")``: the 56M Llama shape of benchmarks/generate.py, cached)
is exported once (fp32, ``--level all``); each recipe's pass runs on that fp32 graph and the variant is
scored by ``torchport validate --eval``'s code (:func:`torchport.runtimes.evaluate_package`): held-out
perplexity (windows of 128 tokens of the test bed's held-out text) and free-running greedy agreement
with torchport fp32 over ``--tokens`` new tokens on the test bed's 16 distinct held-out prompts (the
share of positions equal to fp32's, averaged over prompts). ``--genai`` adds onnxruntime-genai's own int8
and int4 builds of the same weights, scored the same way against torchport fp32's tokens.

Recipes: the defaults (int8: MatMulNBits 8-bit, block 32, head 8-bit; int4: block 32, symmetric, head
4-bit), and the options (int8 head float32, int8 block 16, int4 block 16, asymmetric, head float32).

    python benchmarks/lm_quality.py [--size bench|test] [--tokens 128] [--genai]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from torchport.runtimes._table import format_table  # noqa: E402


def recipes() -> dict[str, tuple[str, Any]]:
    """Recipe name → (precision, pass)."""
    from torchport.exporters._onnx_passes import DECODER_INT8_BLOCK_SIZE, Int4Pass, Int8DynamicPass

    return {
        "int8 (default: block 32, head 8-bit)": ("int8", Int8DynamicPass(block_size=DECODER_INT8_BLOCK_SIZE)),
        "int8, head float32": ("int8", Int8DynamicPass(block_size=DECODER_INT8_BLOCK_SIZE, keep_head=True)),
        "int8, block 16": ("int8", Int8DynamicPass(block_size=16)),
        "int4 (default: block 32, symmetric, head 4-bit)": ("int4", Int4Pass(32, True, True, False)),
        "int4, block 16": ("int4", Int4Pass(16, True, True, False)),
        "int4, asymmetric": ("int4", Int4Pass(32, False, True, False)),
        "int4, head float32": ("int4", Int4Pass(32, True, False, False)),
        "int4, block 16, asymmetric, head float32": ("int4", Int4Pass(16, False, False, False)),
    }


def genai_tokens(
    folder: Path, work: Path, precision: str, prompts: list[list[int]], new: int
) -> tuple[list[list[int]], Path] | str:
    """onnxruntime-genai's greedy tokens per prompt from its own build of ``folder`` (or why not)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from generate import genai_run

    run = genai_run(folder, work, prompts[0], new, precision)
    if isinstance(run, str):
        return run
    return [list(run(p)) for p in prompts], work / f"genai-{precision}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="bench", choices=("bench", "test"))
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--genai", action="store_true", help="add onnxruntime-genai's int8 / int4 builds")
    parser.add_argument("--only", default="", help="comma-separated recipe name prefixes (default: all)")
    parser.add_argument(
        "--root",
        type=Path,
        help="an earlier build's cache folder (another recipe) instead of building the current recipe; its "
        "held-out prompts are recomputed with the current code (same held-out files)",
    )
    args = parser.parse_args()

    import onnx

    from torchport.exporters import export_model
    from torchport.exporters._onnx_files import save_onnx
    from torchport.exporters.examples.testbed import build_lm
    from torchport.runtimes import ModelPackage
    from torchport.runtimes._eval import evaluate_folder
    from torchport.runtimes._manifest import Variant

    trained = build_lm(args.size, quiet=False) if args.root is None else _earlier(args.root)
    print(
        f"model: the test bed's {args.size} LM ({trained.metrics['params'] / 1e6:.1f}M parameters, "
        f"held-out perplexity {trained.metrics['perplexity']:.1f} eager, "
        f"{trained.metrics.get('train_tokens', 0) / 1e3:.0f}k training tokens); {len(trained.prompts)} held-out "
        f"prompts, {args.tokens} new tokens each; {os.environ['OMP_NUM_THREADS']} threads"
    )
    work = Path(tempfile.mkdtemp(prefix="tp-lmquality-"))
    try:
        start = time.perf_counter()
        pkg_dir = work / "pkg"
        export_model(trained.source, pkg_dir, level="all", quiet=True)
        pkg = ModelPackage.load(pkg_dir)
        print(f"export (fp32, --level all, validated): {time.perf_counter() - start:.0f}s")
        fp32 = onnx.load(str(pkg_dir / "model.onnx"))
        variants = dict(pkg.manifest.variants)
        names: dict[str, str] = {}
        chosen = [p.strip() for p in args.only.split(",") if p.strip()]
        for i, (title, (precision, step)) in enumerate(recipes().items()):
            if chosen and not any(title.startswith(c) for c in chosen):
                continue
            proto, _ = step(onnx.ModelProto.FromString(fp32.SerializeToString()))
            file = f"model.r{i}.onnx"
            variants[f"r{i}"] = Variant(
                file=file, precision=precision, data_files=save_onnx(proto, pkg_dir / file)
            )
            names[f"r{i}"] = title
        manifest = pkg.manifest.replace(variants=variants)
        start = time.perf_counter()
        result = evaluate_folder(
            pkg_dir, manifest, trained.eval_data, tokens=args.tokens, prompts=trained.prompts, progress=True
        )
        print(f"eval: {time.perf_counter() - start:.0f}s")
        base = result.variants["fp32"]
        assert base.perplexity is not None
        rows: list[tuple[Any, ...]] = []
        for key, v in result.variants.items():
            assert v.perplexity is not None and v.agreement is not None
            rows.append(
                (
                    "torchport fp32" if key == "fp32" else f"torchport {names[key]}",
                    f"{v.perplexity:.2f}",
                    f"{(v.perplexity / base.perplexity - 1):+.2%}",
                    f"{v.agreement:.1%}",
                )
            )
        if args.genai:
            from torchport.runtimes._tokenizer import TextCodec

            codec = TextCodec.from_package(pkg)
            assert codec is not None
            prompts = [codec.encode(p)[:32] for p in trained.prompts]
            from torchport.runtimes import Session

            ref = (
                Session.from_package(pkg_dir)
                .generate(prompts, max_new_tokens=args.tokens, ignore_eos=True)
                .tokens
            )
            sys.path.insert(0, str(Path(__file__).parent))
            from generate import genai_logits, perplexity

            windows = [w for w in _windows(codec, trained.eval_data.read_text(encoding="utf-8"))]
            fp32_ppl = perplexity(_torchport_logits(pkg_dir), windows)
            for precision in ("int8", "int4"):
                got = genai_tokens(Path(trained.path), work, precision, prompts, args.tokens)
                if isinstance(got, str):
                    rows.append((f"onnxruntime-genai {precision}", "-", "-", f"skipped: {got}"))
                    continue
                toks, out = got
                agree = np.mean([sum(a == b for a, b in zip(t, r)) / len(r) for t, r in zip(toks, ref)])
                ppl = perplexity(genai_logits(out), windows)
                rows.append(
                    (
                        f"onnxruntime-genai {precision} (its builder)",
                        f"{ppl:.2f} (torchport fp32 {fp32_ppl:.2f}, same windows)",
                        f"{(ppl / fp32_ppl - 1):+.2%}",
                        f"{agree:.1%}",
                    )
                )
        print()
        print(
            format_table(
                [
                    "variant",
                    "perplexity",
                    "vs fp32",
                    f"greedy agreement vs fp32 ({args.tokens} tokens x {result.prompts} prompts)",
                ],
                rows,
            )
        )
        print(
            "perplexity: torchport rows on up to 64 windows of 128 tokens of the held-out text (evaluate_package); "
            "genai rows on the benchmark's 8 windows, next to torchport fp32 on the same windows. Agreement: "
            "free-running greedy, position-wise share equal to torchport fp32's tokens, mean over prompts."
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _earlier(root: Path) -> Any:
    """An earlier test-bed LM build, with the current code's 16 distinct held-out prompts."""
    import dataclasses

    from torchport.exporters.examples import testbed

    built = testbed._from_meta(root, cached=True)
    _, held_files = testbed._stdlib_files()
    chars = int(built.recipe["eval_chars"])
    prompts = testbed._lm_prompts(testbed._read(held_files, chars * 4)[chars:])
    return dataclasses.replace(built, prompts=tuple(prompts))


def _windows(codec: Any, text: str, seq: int = 128, count: int = 8) -> list[list[int]]:
    ids = codec.encode(text)
    step = max(seq, (len(ids) - seq) // max(1, count))
    return [ids[i : i + seq] for i in range(0, len(ids) - seq, step)][:count]


def _torchport_logits(pkg_dir: Path) -> Any:
    sys.path.insert(0, str(Path(__file__).parent))
    from generate import torchport_logits

    return torchport_logits(pkg_dir, "fp32")


if __name__ == "__main__":
    main()
