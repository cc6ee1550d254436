"""Optimization benchmark: eager PyTorch vs plain torch.onnx.export vs torchport fp32 / fp16 / int8.

One table, all timed in one process with 2 threads (torch.set_num_threads(2), ONNX Runtime
intra_op_num_threads=2). Models, random weights, nothing downloaded:

* ``bert``: BERT-base from ``BertConfig()`` (12 layers, hidden 768), batch 1, sequence 128;
* ``resnet``: a ResNet-18-style CNN written here, batch 1, 3x224x224.

Rows: eager PyTorch (the baseline), plain ``torch.onnx.export(dynamo=True)`` run in ONNX Runtime
with its default (ORT_ENABLE_ALL) optimizations, and the torchport package made by
``export_model`` + ``optimize_package(level="all", fp16=True, int8="dynamic")``: fp32, fp16 (on CPU
only reported: CPUs have few fp16 kernels) and int8 dynamic. Columns: median latency, speed-up
over eager (``x eager``), parity vs eager on the timed input (min cosine over outputs, max abs
error), and model size. Below the table: the optimization step's own time and the targets.

    python benchmarks/optimize.py                 # full: BERT-base + ResNet-18-style, ~5-8 min on 2 cores
    python benchmarks/optimize.py --quick         # 4-layer BERT, narrow ResNet: ~1 min
    python benchmarks/optimize.py --models bert --runs 50
    python benchmarks/optimize.py --models '' --testbed-size test   # only the trained classifiers' accuracy

Held-out accuracy of the test bed's trained classifiers (``torchport.exporters.examples.testbed``:
a CNN on scikit-learn's digits, a BERT telling which standard-library package a line is from; built on
this machine, cached) per variant (fp32, fp16, int8 dynamic), from ``optimize_package(eval_data=...)``;
target: int8 within 1 point of fp32.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

THREADS = 2
QUICK = os.environ.get("TORCHPORT_BENCH_QUICK") == "1"


# ---------------------------------------------------------------- models (factories for export_model)


def make_bert() -> nn.Module:
    """BERT-base (or a 4-layer, hidden-256 BERT with --quick) with random weights."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = (
        BertConfig()
        if not QUICK
        else BertConfig(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024)
    )
    return BertModel(cfg, add_pooling_layer=True).eval()


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.down is None else self.down(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + idt)


class ResNet18Like(nn.Module):
    """ResNet-18 layout: stem, 4 stages x 2 basic blocks, global pool, 1000-way head."""

    def __init__(self, width: int = 64, classes: int = 1000) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        chans = [w, 2 * w, 4 * w, 8 * w]
        blocks: list[nn.Module] = []
        cin = w
        for i, c in enumerate(chans):
            blocks += [BasicBlock(cin, c, 1 if i == 0 else 2), BasicBlock(c, c, 1)]
            cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(image))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def make_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = ResNet18Like(width=64 if not QUICK else 16).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics so folding matters numerically
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _spec(name: str) -> dict[str, Any]:
    if name == "bert":
        vocab = 30522
        rng = np.random.default_rng(0)
        ids = rng.integers(0, vocab, (1, 128)).astype(np.int64)
        mask = np.ones((1, 128), np.int64)
        return {
            "factory": "make_bert",
            "inputs": ["input_ids:int64[batch,seq]", "attention_mask:int64[batch,seq]"],
            "dims": ["batch=1..8", "seq=8..128"],
            "feeds": {"input_ids": ids, "attention_mask": mask},
            "dynamic": {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}},
            "title": "BERT-base b1 s128" if not QUICK else "BERT-small(4L,256) b1 s128",
        }
    side = 224 if not QUICK else 96
    img = np.random.default_rng(0).standard_normal((1, 3, side, side)).astype(np.float32)
    return {
        "factory": "make_resnet",
        "inputs": [f"image:float32[batch,3,{side},{side}]"],
        "dims": ["batch=1..8"],
        "feeds": {"image": img},
        "dynamic": {"image": {0: "batch"}},
        "title": f"ResNet-18-style b1 {side}px" if not QUICK else f"ResNet-18-style(w16) b1 {side}px",
    }


# ---------------------------------------------------------------- measuring


def _median_ms_round_robin(fns: list[Any], runs: int, warmup: int, rounds: int = 3) -> list[float]:
    """Median ms of each callable, timed in ``rounds`` rounds of consecutive runs per callable.

    Rounds spread background load over all rows; runs stay consecutive within a round so one
    session's spinning ONNX Runtime threads do not slow the next callable down.
    """
    times: list[list[float]] = [[] for _ in fns]
    per_round = max(1, runs // rounds)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            for _ in range(warmup):
                fn()
            for _ in range(per_round):
                t = time.perf_counter()
                fn()
                times[i].append((time.perf_counter() - t) * 1000)
    return [statistics.median(t) for t in times]


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _parity(got: list[np.ndarray], ref: list[np.ndarray]) -> tuple[float, float]:
    cos, mabs = 1.0, 0.0
    for g, r in zip(got, ref, strict=True):
        g64, r64 = g.astype(np.float64).ravel(), r.astype(np.float64).ravel()
        c = float(np.dot(g64, r64) / (np.linalg.norm(g64) * np.linalg.norm(r64) + 1e-30))
        cos = min(cos, c)
        mabs = max(mabs, float(np.max(np.abs(g64 - r64))))
    return cos, mabs


def _size(path: Path) -> int:
    data = Path(str(path) + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def bench_model(
    name: str, workdir: Path, runs: int, warmup: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from torchport.exporters import optimize_package, validate
    from torchport.exporters._export import export_model

    spec = _spec(name)
    model = globals()[spec["factory"]]()
    feeds = spec["feeds"]
    names = list(feeds)
    tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {"title": spec["title"]}

    with torch.no_grad():
        out = model(**tensors)
    from torch.utils import _pytree as pytree

    def eager_flat() -> list[np.ndarray]:
        with torch.no_grad():
            o = model(**tensors)
        return [x.numpy() for x in pytree.tree_leaves(o) if isinstance(x, torch.Tensor)]

    ref = [x.numpy() for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor)]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    timed: list[Any] = [eager_flat]
    rows.append({"variant": "eager PyTorch", "cos": 1.0, "abs": 0.0, "size": weights})

    # plain torch.onnx.export (dynamo), ORT with its default optimizations
    plain = workdir / f"{name}_plain.onnx"
    dims: dict[str, Any] = {}
    dyn = {}
    for inp, axes in spec["dynamic"].items():
        dyn[inp] = {}
        for axis, dname in axes.items():
            dims.setdefault(
                dname,
                torch.export.Dim(dname, min=1 if dname == "batch" else 8, max=8 if dname == "batch" else 128),
            )
            dyn[inp][axis] = dims[dname]
    t = time.perf_counter()
    torch.onnx.export(model, (), str(plain), kwargs=tensors, dynamo=True, dynamic_shapes=dyn, verbose=False)
    info["plain_export_s"] = time.perf_counter() - t
    sess = _session(plain)
    got = sess.run(None, feeds)
    cos, mabs = _parity(got, ref)
    timed.append(lambda s=sess: s.run(None, feeds))
    rows.append({"variant": "torch.onnx.export + ORT", "cos": cos, "abs": mabs, "size": _size(plain)})

    # torchport: export_model + optimize_package
    pkg_dir = workdir / f"{name}_pkg"
    t = time.perf_counter()
    export_model(
        f"{Path(__file__).resolve()}:{spec['factory']}",
        pkg_dir,
        inputs=spec["inputs"],
        dims=spec["dims"],
        quiet=True,
        overwrite=True,
        validate=False,  # validated below, timed on its own
    )
    info["torchport_export_s"] = time.perf_counter() - t
    import shutil

    # what `export --level all` adds: the fp32 optimization alone, on a copy of the package
    fp32_only = workdir / f"{name}_fp32only"
    shutil.copytree(pkg_dir, fp32_only)
    t = time.perf_counter()
    optimize_package(fp32_only, level="all")
    info["optimize_fp32_s"] = time.perf_counter() - t
    shutil.rmtree(fp32_only)
    static_dir = None
    if name == "resnet":  # CNNs: int8 static (QDQ) is the int8 that pays off on CPU
        static_dir = workdir / f"{name}_static"
        shutil.copytree(pkg_dir, static_dir)
        optimize_package(static_dir, level="basic", int8="static")
    t = time.perf_counter()
    result = optimize_package(pkg_dir, level="all", fp16=True, int8="dynamic")
    info["optimize_s"] = time.perf_counter() - t
    info["fp32_passes_s"] = sum(r["seconds"] for r in result.records if r["variant"] == "fp32")
    info["fusions"] = next((r["fused"] for r in result.records if r["name"] == "ort_fusions"), {})
    t = time.perf_counter()
    parity = validate(pkg_dir, model, n=5)
    info["validate_s"] = time.perf_counter() - t
    info["parity"] = "passed" if parity else "FAILED"
    manifest = result.package.manifest
    paths = [(v, result.package.model_path(v)) for v in ("fp32", "fp16", "int8")]
    if static_dir is not None:
        paths.append(("int8-static", static_dir / "model.int8.onnx"))
    for variant, path in paths:
        sess = _session(path)
        input_names = [i.name for i in sess.get_inputs()]
        vfeeds = {n: feeds[n] for n in input_names}
        got = sess.run(None, vfeeds)
        cos, mabs = _parity(got, ref)
        timed.append(lambda s=sess, f=vfeeds: s.run(None, f))
        label = {
            "fp32": "torchport fp32",
            "fp16": "torchport fp16 (CPU: reported only)",
            "int8": "torchport int8 dynamic",
            "int8-static": "torchport int8 static (QDQ)",
        }[variant]
        rows.append({"variant": label, "cos": cos, "abs": mabs, "size": _size(path)})
    del manifest, names
    print(f"... timing {name}: {len(timed)} rows x {runs} runs in 3 rounds", file=sys.stderr, flush=True)
    for row, ms in zip(rows, _median_ms_round_robin(timed, runs, warmup), strict=True):
        row["ms"] = ms
    return rows, info


def accuracy_rows(name: str, size: str, tmp: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Held-out accuracy per variant of a trained test-bed classifier (``digits`` or ``bert``):
    built (or reused from the cache), exported, optimized with fp16 + int8 dynamic, and scored by
    ``optimize_package(eval_data=...)`` (the gate opened wide so that every variant is reported)."""
    from torchport.exporters import export_model, optimize_package
    from torchport.exporters.examples.testbed import build

    start = time.perf_counter()
    trained = build(name, size, quiet=False)
    built_s = time.perf_counter() - start
    out = tmp / f"testbed-{name}"
    export_model(trained.source, out, quiet=True)
    result = optimize_package(
        out, fp16=True, int8="dynamic", eval_data=trained.eval_data, max_accuracy_drop=100.0
    )
    record = result.package.manifest.extra["eval"]
    rows = [
        {"variant": v, "accuracy": r["accuracy"], "agreement": r["agreement"], "samples": r["samples"]}
        for v, r in record["variants"].items()
    ]
    info = {
        "title": f"{name} ({size}, trained)",
        "eager_accuracy": trained.metrics["accuracy"],
        "train_s": trained.metrics["train_seconds"],
        "params": trained.metrics["params"],
        "cached": trained.cached,
        "built_s": built_s,
    }
    return info, rows


def print_accuracy(results: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> list[tuple[str, bool, str]]:
    header = f"{'trained classifier':<30} {'variant':<8} {'held-out acc':>12} {'vs fp32':>9} {'top-1 agree':>12} {'samples':>8}"
    print()
    print(header)
    print("-" * len(header))
    verdicts = []
    for info, rows in results:
        base = rows[0]["accuracy"]
        for r in rows:
            print(
                f"{info['title']:<30} {r['variant']:<8} {r['accuracy'] * 100:11.2f}% "
                f"{(r['accuracy'] - base) * 100:+8.2f}pt {r['agreement'] * 100:11.1f}% {r['samples']:8d}"
            )
        print(
            f"  eager PyTorch held-out accuracy {info['eager_accuracy'] * 100:.2f}%, {info['params']:,} parameters, "
            f"trained in {info['train_s']:.1f} s" + (" (reused from the cache)" if info["cached"] else "")
        )
        int8 = next(r for r in rows if r["variant"] == "int8")
        verdicts.append(
            (
                f"{info['title']}: int8 held-out accuracy within 1 point of fp32",
                (base - int8["accuracy"]) * 100 <= 1.0,
                f"{(int8['accuracy'] - base) * 100:+.2f} pt",
            )
        )
    return verdicts


def main(argv: list[str] | None = None) -> int:
    global QUICK
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="bert,resnet", help="comma-separated: bert, resnet")
    parser.add_argument(
        "--quick", action="store_true", help="smaller configs (4-layer BERT, narrow 96px ResNet)"
    )
    parser.add_argument("--runs", type=int, default=30, help="timed runs per row (median reported)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--classifiers",
        default="digits,bert",
        help="trained test-bed classifiers whose held-out accuracy per variant is reported ('' for none)",
    )
    parser.add_argument(
        "--testbed-size",
        default=None,
        choices=["test", "bench"],
        help="test-bed size of the trained classifiers (default bench; --quick: test)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        QUICK = True
        os.environ["TORCHPORT_BENCH_QUICK"] = "1"  # export_model imports this file anew: same configs
    torch.set_num_threads(THREADS)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("torch").setLevel(logging.ERROR)
    print(
        f"torch {torch.__version__}, onnxruntime {ort.__version__}, {THREADS} threads, {os.cpu_count()} CPUs",
        flush=True,
    )
    results = []
    accuracy = []
    size = args.testbed_size or ("test" if QUICK else "bench")
    with tempfile.TemporaryDirectory(prefix="torchport-bench-") as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            print(f"... {name}", file=sys.stderr, flush=True)
            results.append(bench_model(name, Path(tmp), args.runs, args.warmup))
        for name in [m.strip() for m in args.classifiers.split(",") if m.strip()]:
            print(f"... trained {name} ({size})", file=sys.stderr, flush=True)
            accuracy.append(accuracy_rows(name, size, Path(tmp)))

    header = f"{'model':<30} {'variant':<36} {'median ms':>10} {'x eager':>8} {'cosine':>10} {'max abs':>10} {'size MB':>8}"
    print()
    print(header)
    print("-" * len(header))
    verdicts = []
    for rows, info in results:
        eager = rows[0]["ms"]
        for r in rows:
            print(
                f"{info['title']:<30} {r['variant']:<36} {r['ms']:10.2f} {eager / r['ms']:8.2f} {r['cos']:10.6f} {r['abs']:10.2e} {r['size'] / 1e6:8.1f}"
            )
        by = {r["variant"]: r for r in rows}
        fp32, plain = by["torchport fp32"], by["torch.onnx.export + ORT"]
        int8 = by.get("torchport int8 static (QDQ)", by["torchport int8 dynamic"])
        verdicts += [
            (
                f"{info['title']}: torchport fp32 not slower than plain export",
                fp32["ms"] <= plain["ms"] * 1.02,
                f"{plain['ms'] / fp32['ms']:.2f}x plain",
            ),
            (
                f"{info['title']}: torchport fp32 >= 1.3x eager",
                eager / fp32["ms"] >= 1.3,
                f"{eager / fp32['ms']:.2f}x",
            ),
            (
                f"{info['title']}: {int8['variant'].replace('torchport ', '')} >= 2.5x eager",
                eager / int8["ms"] >= 2.5,
                f"{eager / int8['ms']:.2f}x",
            ),
            (
                f"{info['title']}: {int8['variant'].replace('torchport ', '')} cosine >= 0.99 on every output",
                int8["cos"] >= 0.99,
                f"{int8['cos']:.4f}",
            ),
        ]
        print()
        print(
            f"{info['title']}: torchport export {info['torchport_export_s']:.1f} s (plain {info['plain_export_s']:.1f} s); "
            f"optimize_package --level all {info['optimize_fp32_s']:.1f} s, with fp16 + int8 variants "
            f"{info['optimize_s']:.1f} s (fp32 passes {info['fp32_passes_s']:.1f} s); "
            f"validate (5 inputs, 3 variants) {info['validate_s']:.1f} s: {info['parity']}; "
            f"fused: {', '.join(f'{k}x{v}' for k, v in sorted(info['fusions'].items()) if k.startswith('com.')) or '-'}"
        )
        if "BERT" in info["title"]:
            verdicts.append(
                (
                    f"{info['title']}: optimization (level all) adds <= 30 s",
                    info["optimize_fp32_s"] <= 30,
                    f"{info['optimize_fp32_s']:.1f} s (with fp16 + int8 variants {info['optimize_s']:.1f} s)",
                )
            )
    if accuracy:
        verdicts += print_accuracy(accuracy)
    print()
    for text, ok, value in verdicts:
        print(f"  [{'ok' if ok else 'MISS'}] {text}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
