"""Export wall time: torchport's export pipeline vs a bare ``torch.onnx.export(dynamo=True)``.

Both sides start from the same source and write an ONNX file with the same dynamic dims:

* baseline: build the model (factory / ``from_pretrained``), ``torch.onnx.export(model, args,
  dynamic_shapes=..., dynamo=True)``, ``save``;
* torchport: ``export_model(source, out)`` — load, example inputs, eager probe run, capture,
  translation, dim naming, metadata, manifest, atomic package write — with the parity gate off
  (``validate=False``: the gate is extra work the baseline does not do; it is timed separately in the
  last column).

Each cell is the median of ``--repeats`` runs after one warm-up of each path. Target: ratio ≤ 1.3.

    python benchmarks/export.py [--repeats 3] [--models mlp,cnn,bert,gpt2]
"""

from __future__ import annotations

import argparse
import inspect
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from torchport.exporters import export_model  # noqa: E402


def _hf_folder(root: Path, name: str) -> Path:
    import transformers as T

    folder = root / name
    if folder.exists():
        return folder
    torch.manual_seed(0)
    if name == "bert":
        model = T.BertModel(
            T.BertConfig(
                vocab_size=1000,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=128,
                max_position_embeddings=128,
            )
        )
    else:
        model = T.GPT2LMHeadModel(
            T.GPT2Config(
                vocab_size=1000,
                n_embd=64,
                n_layer=2,
                n_head=2,
                n_positions=128,
                bos_token_id=0,
                eos_token_id=0,
            )
        )
    model.save_pretrained(folder)
    return folder


def _baseline_builtin(module_name: str):
    import importlib

    def run(out: Path) -> None:
        mod = importlib.import_module(f"torchport.exporters.examples.{module_name}")
        model = mod.make_model()
        args = mod.example_inputs()
        ((name, axes),) = mod.DYNAMIC_DIMS.items()
        dims = {axis: torch.export.Dim(d, min=lo, max=hi) for axis, (d, lo, hi) in axes.items()}
        program = torch.onnx.export(model, args, dynamic_shapes=(dims,), dynamo=True, verbose=False)
        program.save(str(out))

    return run


def _baseline_hf(folder: Path, kind: str):
    def run(out: Path) -> None:
        import transformers as T

        cls = T.BertModel if kind == "bert" else T.GPT2LMHeadModel
        model = cls.from_pretrained(folder).eval()
        batch, seq = torch.export.Dim("batch", min=1, max=32), torch.export.Dim("seq", min=1, max=128)
        ids = torch.randint(0, 1000, (2, 8))
        kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
        if kind == "gpt2":  # the bare exporter fails on the cache output otherwise
            kwargs["use_cache"] = False
            shapes["use_cache"] = None
        program = torch.onnx.export(
            model, (), kwargs=kwargs, dynamic_shapes=shapes, dynamo=True, verbose=False
        )
        program.save(str(out))

    return run


def _timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="mlp,cnn,bert,gpt2")
    opts = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    has_gate = "validate" in inspect.signature(export_model).parameters

    work = Path(tempfile.mkdtemp(prefix="torchport-bench-export-"))
    try:
        cases = {}
        for name in opts.models.split(","):
            if name in ("mlp", "cnn"):
                cases[name] = (f"torchport.exporters.examples.{name}:make_model", _baseline_builtin(name), {})
            else:
                folder = _hf_folder(work / "hf", name)
                cases[name] = (
                    str(folder),
                    _baseline_hf(folder, name),
                    {"dims": ["batch=1..32", "seq=1..128"]},
                )

        rows = []
        for name, (source, baseline, extra) in cases.items():
            gate_off = {"validate": False} if has_gate else {}
            counter = iter(range(10_000))

            def ours(gate: dict, extra=extra, source=source, counter=counter) -> None:
                out = work / f"pkg-{next(counter)}"
                export_model(source, out, quiet=True, **extra, **gate)
                shutil.rmtree(out)

            def base(baseline=baseline) -> None:
                out = work / "bare.onnx"
                baseline(out)
                out.unlink()

            base()  # warm-up of both paths (first capture in a process pays one-off costs)
            ours(gate_off)
            t_base, t_ours, t_gate = [], [], []
            for _ in range(opts.repeats):
                t_base.append(_timed(base))
                t_ours.append(_timed(ours, gate_off))
            if has_gate:
                t_gate.append(_timed(ours, {}))
            b, o = statistics.median(t_base), statistics.median(t_ours)
            g = statistics.median(t_gate) if t_gate else float("nan")
            rows.append((name, b, o, o / b, g))
            print(f"  {name}: bare {b:.2f}s, torchport {o:.2f}s", file=sys.stderr, flush=True)

        print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, median of {opts.repeats}\n")
        header = f"{'model':<8} {'bare torch.onnx.export':>23} {'torchport export':>17} {'ratio':>7} {'+ parity gate':>14}"
        print(header)
        print("-" * len(header))
        for name, b, o, r, g in rows:
            print(f"{name:<8} {b:>22.2f}s {o:>16.2f}s {r:>6.2f}x {g:>13.2f}s")
        worst = max(r for *_, r, _ in rows)
        print(f"\nworst ratio {worst:.2f}x (target <= 1.30x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
