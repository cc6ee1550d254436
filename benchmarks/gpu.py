"""GPU benchmark: torchport on CUDA against eager PyTorch on the same GPU, in one process.

Needs onnxruntime-gpu (CUDAExecutionProvider), torch with CUDA and transformers. Models are built
from configs with random weights (nothing downloaded):

* encoder: BERT-base (``--quick``: 4 layers, hidden 256), sequence 128, batch 1 and 32. Rows: eager
  PyTorch fp32 and fp16 on the GPU (the baselines), the torchport package's fp32 and fp16 variants on
  CUDAExecutionProvider (IOBinding, as ``Session`` runs them), fp32 with plain ``run`` (no IOBinding)
  to show what binding buys, and the package's fp32 on CPU. Every row is host to host (numpy in,
  numpy out), as a server sees it; parity is the min cosine / max abs error against eager fp32.
* server: ``torchport serve`` of the same package on CUDA and on CPU, binary tensors, concurrency 1
  and 32, dynamic batching on: req/s and p50.
* generate: a Llama-style ~50M model (8 layers, hidden 512, vocab 32000), prompt 32, 128 new greedy
  tokens: Hugging Face eager ``generate`` on the GPU vs torchport's ``Session.generate`` on CUDA
  (KV cache bound on the device), tokens/s and greedy-token agreement.

    python benchmarks/gpu.py [--quick] [--runs 50] [--no-server] [--no-generate] [--provider cuda]

``--provider cpu`` runs the same flow without a GPU (a dry run of the script itself).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchport.runtimes._table import format_table

QUICK = os.environ.get("TORCHPORT_BENCH_QUICK") == "1"
SEQ = 128


def make_bert() -> torch.nn.Module:
    """BERT-base (or a 4-layer, hidden-256 BERT with --quick) with random weights, eval mode."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = (
        BertConfig()
        if not QUICK
        else BertConfig(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024)
    )
    return BertModel(cfg, add_pooling_layer=False).eval()


def median_ms(fns: dict[str, Callable[[], Any]], runs: int, rounds: int = 3) -> dict[str, float]:
    """Median ms per callable, timed in interleaved rounds so drifts hit every row alike."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(max(runs // rounds, 1)):
                t = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


def parity(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    a, b = got.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
    return cos, float(np.max(np.abs(a - b)))


def encoder_section(work: Path, provider: str, runs: int) -> tuple[Path, list[tuple]]:
    from torchport.exporters import export_model, optimize_package
    from torchport.runtimes import Session

    device = "cuda" if provider == "cuda" else "cpu"
    pkg = work / "bert"
    t = time.perf_counter()
    export_model(
        f"{Path(__file__).resolve()}:make_bert",
        pkg,
        inputs=["input_ids:int64[batch,seq]", "attention_mask:int64[batch,seq]"],
        dims=["batch=1..32", f"seq=8..{SEQ}"],
        quiet=True,
        overwrite=True,
    )
    export_s = time.perf_counter() - t
    t = time.perf_counter()
    optimize_package(pkg, level="all", fp16=True)
    print(f"export (validated) {export_s:.1f} s, optimize --level all --fp16 {time.perf_counter() - t:.1f} s")

    model = make_bert().to(device)
    half = copy.deepcopy(model).half() if device == "cuda" else None
    sessions = {
        "fp32": Session.from_package(pkg, variant="fp32", providers=provider),
        "fp16": Session.from_package(pkg, variant="fp16", providers=provider),
        "fp32 cpu": Session.from_package(pkg, variant="fp32", providers="cpu"),
    }
    plain = Session.from_package(pkg, variant="fp32", providers=provider)
    plain._use_iobinding = False  # the plain InferenceSession.run path, for comparison
    print(f"sessions: {', '.join(f'{k}={s.provider}' for k, s in sessions.items())}")

    rows: list[tuple] = []
    rng = np.random.default_rng(0)
    for batch in (1, 32):
        ids = rng.integers(1000, 30000, (batch, SEQ)).astype(np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}

        def eager(m: torch.nn.Module | None = model, f: dict = feeds) -> np.ndarray:
            with torch.inference_mode():
                t_in = {k: torch.from_numpy(v).to(device) for k, v in f.items()}
                return m(**t_in).last_hidden_state.float().cpu().numpy()

        fns: dict[str, Callable[[], Any]] = {"eager PyTorch fp32": eager}
        if half is not None:
            fns["eager PyTorch fp16"] = lambda f=feeds: eager(half, f)
        fns["torchport fp32"] = lambda f=feeds: sessions["fp32"].run(f)["last_hidden_state"]
        fns["torchport fp32, no IOBinding"] = lambda f=feeds: plain.run(f)["last_hidden_state"]
        fns["torchport fp16"] = lambda f=feeds: sessions["fp16"].run(f)["last_hidden_state"]
        if batch == 1:
            fns["torchport fp32 on CPU"] = lambda f=feeds: sessions["fp32 cpu"].run(f)["last_hidden_state"]
        ref = eager()
        times = median_ms(fns, runs if batch == 1 else max(runs // 4, 6))
        base = times["eager PyTorch fp32"]
        for name, ms in times.items():
            cos, err = parity(np.asarray(fns[name](), np.float32), ref)
            rows.append((batch, name, round(ms, 3), round(base / ms, 2), f"{cos:.6f}", f"{err:.2e}"))
    return pkg, rows


def server_section(pkg: Path, provider: str, duration: float) -> list[tuple]:
    from torchport.runtimes._loadgen import bench_server
    from torchport.runtimes.server import InferenceServer, ServerConfig

    rows: list[tuple] = []
    for prov in dict.fromkeys([provider, "cpu"]):
        server = InferenceServer(
            pkg,
            ServerConfig(
                port=0, access_log=False, warmup=1, providers=prov, max_batch_size=32, max_queue_delay_ms=2
            ),
        ).start_in_thread()
        try:
            result = bench_server(
                f"http://127.0.0.1:{server.port}",
                protocols=["binary"],
                concurrency=[1, 32],
                duration=duration,
                dims={"*": SEQ},
            )
        finally:
            server.stop()
        for row in result:
            rows.append(
                (
                    prov,
                    row.concurrency,
                    row.requests,
                    row.errors,
                    round(row.p50_ms, 2),
                    round(row.p99_ms, 2),
                    round(row.rps, 1),
                )
            )
    return rows


def generate_section(work: Path, provider: str, new: int) -> list[tuple]:
    sys.path.insert(0, str(Path(__file__).parent))
    # the same ~50M Llama-style model, HF runner and interleaved timing as benchmarks/generate.py
    from generate import build_model, hf_eager, interleaved

    from torchport.exporters import export_model
    from torchport.runtimes import Session

    device = "cuda" if provider == "cuda" else "cpu"
    folder = work / "llama-50m"
    build_model(folder)
    t = time.perf_counter()
    package = work / "llama-pkg"
    export_model(str(folder), package, quiet=True, overwrite=True, attention="standard")  # CUDA
    print(f"decoder export (validated) {time.perf_counter() - t:.1f} s")
    prompt = [1] + [int(x) for x in np.random.default_rng(0).integers(3, 32000, 31)]
    sess = Session.from_package(package, providers=provider)
    print(f"decoder session: {sess.provider}")

    def ours() -> list[int]:
        return sess.generate([prompt], max_new_tokens=new, ignore_eos=True).tokens[0]

    runners = [("Hugging Face eager fp32", hf_eager(folder, prompt, new, device)), ("torchport fp32", ours)]
    results = interleaved(runners, repeats=3)
    best = {k: s for k, (s, _) in results.items()}
    tokens = {k: t for k, (_, t) in results.items()}
    base_s, base_tok = best["Hugging Face eager fp32"], tokens["Hugging Face eager fp32"]
    rows = []
    for k in best:
        agree = sum(a == b for a, b in zip(tokens[k], base_tok, strict=False)) / len(base_tok)
        rows.append(
            (
                k,
                round(new / best[k], 1),
                round(best[k] * 1e3 / new, 2),
                round(base_s / best[k], 2),
                f"{agree:.0%}",
            )
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 4-layer BERT instead of BERT-base")
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per server point")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--provider", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--no-server", action="store_true")
    parser.add_argument("--no-generate", action="store_true")
    args = parser.parse_args()
    if args.quick:
        os.environ["TORCHPORT_BENCH_QUICK"] = "1"  # export_model imports this file anew: same config
        globals()["QUICK"] = True
    import onnxruntime as ort

    if args.provider == "cuda" and (
        "CUDAExecutionProvider" not in ort.get_available_providers() or not torch.cuda.is_available()
    ):
        print(
            "needs onnxruntime-gpu and torch with a CUDA device; --provider cpu runs a dry run",
            file=sys.stderr,
        )
        return 1
    gpu = torch.cuda.get_device_name(0) if args.provider == "cuda" else "none (dry run on CPU)"
    print(f"GPU: {gpu}; torch {torch.__version__}, onnxruntime {ort.__version__}")
    with tempfile.TemporaryDirectory(prefix="tp-gpu-") as tmp:
        work = Path(tmp)
        pkg, rows = encoder_section(work, args.provider, args.runs)
        title = f"{'BERT-small (4L, 256)' if args.quick else 'BERT-base'} seq {SEQ}, host to host"
        print(
            format_table(
                ["batch", "runtime", "p50 ms", "x eager fp32", "cosine", "max abs"], rows, title=title
            )
        )
        sys.stdout.flush()
        if not args.no_server:
            srows = server_section(pkg, args.provider, args.duration)
            print(
                format_table(
                    ["provider", "concurrency", "requests", "errors", "p50 ms", "p99 ms", "req/s"],
                    srows,
                    title="torchport serve, binary tensors, batch-1 requests, dynamic batching (max 32)",
                )
            )
            sys.stdout.flush()
        if not args.no_generate:
            grows = generate_section(work, args.provider, args.new_tokens)
            print(
                format_table(
                    ["runtime", "tokens/s", "ms/token", "x HF eager", "greedy agreement"],
                    grows,
                    title=f"Llama-style ~50M, prompt 32, {args.new_tokens} new greedy tokens",
                )
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
