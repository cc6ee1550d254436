"""A broader set of real architectures measured outside the test suite.

Each architecture is a Hugging Face transformers model built from a tiny config (2 layers, hidden
32-64, small vocab) with random weights and ``save_pretrained`` into a temporary folder. Two paths
start from that folder:

* bare: ``torch.onnx.export(model, args, kwargs=..., dynamic_shapes=..., dynamo=True)`` on the plain
  model (no wrapper, default outputs, default ``use_cache``) with the same example inputs and dynamic
  batch/seq dims torchport would use (``load_model(folder).example_inputs``), then one run of the
  saved file in onnxruntime. ``OK`` or the first line of the first error.
* torchport: ``export_model(folder, out, quiet=True)`` with its defaults (parity gate on, dynamic
  dims from the HF config): success, the strategy that produced ``model.onnx``, parity, seconds.

Every model runs in its own try/except, so one failure does not stop the run. The summary line
compares how many architectures each path exports (the bare path counts only when onnxruntime runs
the file too).

    python benchmarks/architectures.py [--models bert,gpt2,llama,...]
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from torchport.exporters import export_model, load_model  # noqa: E402
from torchport.runtimes._table import format_table  # noqa: E402


def _bert(T):
    return T.BertModel(
        T.BertConfig(
            vocab_size=500,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
    )


def _distilbert(T):
    return T.DistilBertModel(
        T.DistilBertConfig(
            vocab_size=500, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128
        )
    )


def _roberta(T):
    return T.RobertaModel(
        T.RobertaConfig(
            vocab_size=500,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=130,
        )
    )


def _gpt2(T):
    return T.GPT2LMHeadModel(
        T.GPT2Config(
            vocab_size=500, n_embd=32, n_layer=2, n_head=2, n_positions=128, bos_token_id=0, eos_token_id=0
        )
    )


#: shared tiny size of the Llama-style decoders (Llama, Qwen2, Mistral)
_TINY_DECODER = dict(
    vocab_size=500,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


def _llama(T):
    return T.LlamaForCausalLM(
        T.LlamaConfig(
            **_TINY_DECODER,
        )
    )


def _qwen2(T):
    return T.Qwen2ForCausalLM(
        T.Qwen2Config(
            **_TINY_DECODER,
        )
    )


def _mistral(T):
    return T.MistralForCausalLM(
        T.MistralConfig(
            **_TINY_DECODER,
            sliding_window=None,
        )
    )


def _vit(T):
    return T.ViTModel(
        T.ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        )
    )


def _swin(T):
    return T.SwinModel(
        T.SwinConfig(
            image_size=32,
            patch_size=4,
            embed_dim=16,
            depths=[1, 1],
            num_heads=[2, 2],
            window_size=4,
        )
    )


def _whisper(T):
    return T.WhisperForConditionalGeneration(
        T.WhisperConfig(
            vocab_size=500,
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            num_mel_bins=16,
            max_source_positions=32,
            max_target_positions=32,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
        )
    )


def _t5(T):
    return T.T5ForConditionalGeneration(
        T.T5Config(
            vocab_size=500,
            d_model=32,
            d_kv=16,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=2,
            decoder_start_token_id=0,
        )
    )


#: name -> (builder, source suffix: "" for the whole folder, ":encoder" for the encoder)
MODELS: dict[str, tuple[Callable, str]] = {
    "bert": (_bert, ""),
    "distilbert": (_distilbert, ""),
    "roberta": (_roberta, ""),
    "gpt2": (_gpt2, ""),
    "llama": (_llama, ""),
    "qwen2": (_qwen2, ""),
    "mistral": (_mistral, ""),
    "vit": (_vit, ""),
    "swin": (_swin, ""),
    "whisper": (_whisper, ":encoder"),
    "t5": (_t5, ":encoder"),
}


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(e: BaseException, limit: int = 120) -> str:
    """``Outer <- RootCause: first line of the root cause`` (torch.onnx wraps the real error)."""
    chain, seen = [e], {id(e)}
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and id(nxt) not in seen:
        chain.append(nxt)
        seen.add(id(nxt))
    root = chain[-1]
    lines = [ln.strip() for ln in _ANSI.sub("", str(root)).splitlines() if ln.strip()]
    text = f"{type(root).__name__}: {lines[0]}" if lines else type(root).__name__
    if root is not e:
        text = f"{type(e).__name__} <- {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _build(root: Path, name: str) -> str:
    import transformers as T

    builder, suffix = MODELS[name]
    folder = root / name
    torch.manual_seed(0)
    model = builder(T).eval()
    model.save_pretrained(folder)
    return f"{folder}{suffix}"


def _bare(source: str, out: Path) -> str:
    """Bare torch.onnx.export of the plain model + one onnxruntime run; "OK" or the first error line."""
    import numpy as np
    import onnxruntime as ort

    loaded = load_model(source)
    ex = loaded.example_inputs
    if ex is None:
        return "no example inputs"
    try:
        program = torch.onnx.export(
            loaded.module,
            tuple(ex.args),
            kwargs=dict(ex.kwargs),
            dynamic_shapes=ex.dynamic_shapes(),
            dynamo=True,
            verbose=False,
        )
        program.save(str(out))
    except Exception as e:  # noqa: BLE001 - the benchmark records every failure
        return "export: " + _first_line(e)
    try:
        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        leaves = [
            t for t in torch.utils._pytree.tree_leaves((ex.args, ex.kwargs)) if isinstance(t, torch.Tensor)
        ]
        names = [i.name for i in sess.get_inputs()]
        if len(names) != len(leaves):
            return f"ort: model has {len(names)} inputs, example has {len(leaves)} tensors"
        feeds = {n: np.asarray(t.detach().cpu().numpy()) for n, t in zip(names, leaves, strict=True)}
        sess.run(None, feeds)
    except Exception as e:  # noqa: BLE001
        return "ort: " + _first_line(e)
    return "OK"


def _torchport(source: str, out: Path) -> tuple[str, str, str, float]:
    """(status, strategy, parity, seconds) of export_model with its defaults."""
    from torchport.runtimes import ValidationError

    start = time.perf_counter()
    try:
        result = export_model(source, out, quiet=True)
    except ValidationError as e:  # the gate refused the package: a mismatch, or eager itself failed
        return "FAIL: validate: " + _first_line(e, 90), "-", "FAIL", time.perf_counter() - start
    except Exception as e:  # noqa: BLE001
        stage = getattr(e, "stage", None)
        return f"FAIL: {stage or ''} {_first_line(e)}".strip(), "-", "-", time.perf_counter() - start
    seconds = time.perf_counter() - start
    parity = "pass" if result.manifest.validated else "not validated"
    return "OK", result.strategy, parity, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ",".join(MODELS))
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    opts = parser.parse_args(argv)
    names = [n.strip() for n in opts.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    warnings.filterwarnings("ignore")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.disable_progress_bar()

    work = Path(tempfile.mkdtemp(prefix="torchport-bench-arch-"))
    rows = []
    try:
        for name in names:
            bare, status, strategy, parity, seconds = "-", "FAIL", "-", "-", float("nan")
            try:
                source = _build(work / "hf", name)
                try:
                    bare = _bare(source, work / f"{name}-bare.onnx")
                except Exception as e:  # noqa: BLE001
                    bare = _first_line(e)
                    if opts.verbose:
                        traceback.print_exc()
                status, strategy, parity, seconds = _torchport(source, work / f"{name}-pkg")
            except Exception as e:  # noqa: BLE001
                status = "FAIL: " + _first_line(e)
                if opts.verbose:
                    traceback.print_exc()
            rows.append((name, bare, status, strategy, parity, seconds))
            print(f"  {name}: bare {bare} | torchport {status} ({seconds:.1f}s)", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\ntorch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads\n"
    )
    cols = ("model", "bare torch.onnx.export", "torchport", "strategy", "parity", "seconds")
    print(format_table(cols, [(*r[:5], round(r[5], 1)) for r in rows]))
    n_ours = sum(r[2] == "OK" for r in rows)
    n_bare = sum(r[1] == "OK" for r in rows)
    print(f"\ntorchport exported {n_ours}/{len(rows)}, bare torch.onnx.export {n_bare}/{len(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
