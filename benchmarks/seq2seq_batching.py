"""Continuous batching of an encoder-decoder: one decoder run per step for every request vs one run per cohort.

The server's generation engine (its thread, its queue, the real ONNX Runtime sessions; no HTTP) gets
``--streams`` text-to-text requests of different source lengths, one every ``--interval-ms``, so they
join the running batch at different steps. Two modes of the same package, measured in one process,
rounds interleaved:

- ``one run``: joiners merge into the running rows (self caches left-padded with the decoder's own
  mask, cross keys/values right-padded to the longest source): one decoder run per step;
- ``cohorts``: each group that joined together keeps its own decoder run per step (what packages
  whose decoder takes no mask get, and what the engine did before).

Reported: median time to first token, the slowest stream's end, aggregate tokens/s, and whether both
modes gave every request the same tokens. Random weights at T5-small's shape (``--tiny`` for a test).

    python benchmarks/seq2seq_batching.py [--tiny] [--streams 8] [--new-tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


def _seq2seq_bench() -> Any:
    """benchmarks/seq2seq.py (its model builders and shapes)."""
    spec = importlib.util.spec_from_file_location("_seq2seq_bench", Path(__file__).with_name("seq2seq.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _workload(engine: Any, prompts: list[list[int]], new: int, interval: float) -> dict[str, Any]:
    from torchport.runtimes._generate import GenRequest, SamplingParams
    from torchport.runtimes.server._generate_engine import Job

    loop = asyncio.get_running_loop()
    firsts: list[float | None] = [None] * len(prompts)
    ends: list[float] = [0.0] * len(prompts)
    done = [loop.create_future() for _ in prompts]
    rows = []
    start = time.perf_counter()
    for k, prompt in enumerate(prompts):
        submitted = time.perf_counter()
        row = GenRequest(list(prompt), SamplingParams(max_new_tokens=new, ignore_eos=True))
        rows.append(row)

        def on_token(token: int | None, k: int = k, at: float = submitted) -> None:
            if firsts[k] is None:
                firsts[k] = time.perf_counter() - at

        def on_done(exc: BaseException | None, k: int = k) -> None:
            ends[k] = time.perf_counter() - start
            done[k].set_exception(exc) if exc is not None else done[k].set_result(None)

        engine.submit(Job(row, on_token, on_done, loop))
        if k + 1 < len(prompts):
            await asyncio.sleep(interval)
    await asyncio.gather(*done)
    wall = time.perf_counter() - start
    return {
        "ttft": statistics.median(f or 0.0 for f in firsts) * 1e3,
        "end": max(ends),
        "tps": sum(len(r.tokens) for r in rows) / wall,
        "tokens": [list(r.tokens) for r in rows],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (for the test)")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--interval-ms", type=float, default=40.0, help="between two requests' arrivals")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    base = _seq2seq_bench()
    _, t5_shape = base.SHAPES["tiny" if args.tiny else "real"]
    rng = np.random.default_rng(0)
    lengths = [int(n) for n in np.linspace(8, 64, args.streams)[rng.permutation(args.streams)]]
    prompts = [[int(t) for t in rng.integers(3, 32000, n)] + [1] for n in lengths]

    from torchport.exporters import export_model
    from torchport.runtimes import Session
    from torchport.runtimes.server._generate_engine import GenerationEngine

    results: dict[str, list[dict[str, Any]]] = {"cohorts": [], "one run": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base.build_t5(work / "t5", t5_shape)
        export_model(str(work / "t5"), work / "pkg", task="text2text-generation", overwrite=True, quiet=True)
        session = Session.from_package(work / "pkg", intra_op_threads=args.threads, inter_op_threads=1)
        for r in range(args.rounds + 1):  # round 0 warms up
            for mode in ("cohorts", "one run") if r % 2 == 0 else ("one run", "cohorts"):
                engine = GenerationEngine(session, max_batch=args.streams)
                engine.batch.join = mode == "one run"  # type: ignore[union-attr]
                got = asyncio.run(_workload(engine, prompts, args.new_tokens, args.interval_ms / 1e3))
                engine.close()
                got["steps"] = engine.steps
                if r:
                    results[mode].append(got)
    same = all(
        a["tokens"] == b["tokens"] for a, b in zip(results["cohorts"], results["one run"], strict=True)
    )
    print(
        f"T5 {'tiny' if args.tiny else 'small'} shape, {args.streams} streams (sources {min(lengths)}-{max(lengths)} "
        f"tokens, one every {args.interval_ms:g} ms), {args.new_tokens} new tokens each, threads {args.threads}, "
        f"median of {args.rounds} interleaved rounds"
    )
    print(f"{'mode':<10} {'TTFT ms (median)':>17} {'last end s':>11} {'tokens/s (all)':>15} {'steps':>6}")
    med: dict[str, dict[str, float]] = {}
    for mode, runs in results.items():
        med[mode] = {k: statistics.median(run[k] for run in runs) for k in ("ttft", "end", "tps", "steps")}
        m = med[mode]
        print(f"{mode:<10} {m['ttft']:>17.1f} {m['end']:>11.2f} {m['tps']:>15.1f} {m['steps']:>6.0f}")
    print(
        f"one run vs cohorts: tokens/s {med['one run']['tps'] / med['cohorts']['tps']:.2f}x, "
        f"TTFT {med['cohorts']['ttft'] / max(med['one run']['ttft'], 1e-9):.2f}x lower; same tokens: "
        f"{'yes' if same else 'NO'}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
