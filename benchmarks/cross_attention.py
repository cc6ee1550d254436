"""Cross-attention keys/values in an encoder-decoder's decoder step: computed once by the encoder graph
and fed as cache inputs (what ``export --task text2text-generation`` does), or recomputed from
``encoder_hidden_states`` in every decoder step. Prints ms per decoder step for both, and the ratio.

    python benchmarks/cross_attention.py [--src 64] [--steps 64] [--threads 2]

A BART-base-shaped decoder (random weights, 6 layers, d_model 768) by default: the cost the choice
changes is the two cross projections per layer over the source, paid once or at every step.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _alternative(model: Any, sig: Any) -> Any:
    """The decoder that takes encoder_hidden_states and projects them at every step."""
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    from torchport.exporters._seq2seq_export import _caches

    class Recompute(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: Any, mask: Any, hidden: Any, *past: Any) -> Any:
            n = sig.num_layers
            cache = _caches(model, [(past[2 * i], past[2 * i + 1]) for i in range(n)], [])
            out = model(
                encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
                attention_mask=mask,
                decoder_input_ids=ids,
                cache=cache,
                use_cache=True,
            )
            tensors = [out.logits]
            for layer in cache.self_attention_cache.layers[:n]:
                tensors += [layer.keys, layer.values]
            return tuple(tensors)

    return Recompute().eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=int, default=64)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import onnxruntime as ort
    import torch
    import transformers as T

    from torchport.exporters._seq2seq_export import _caches, capture_parts, seq2seq_signature
    from torchport.exporters._strategies import rewrite_contiguous
    from torchport.runtimes._manifest import DimRange

    torch.manual_seed(0)
    cfg = T.BartConfig(
        d_model=768,
        encoder_layers=1,
        decoder_layers=6,
        encoder_attention_heads=12,
        decoder_attention_heads=12,
        encoder_ffn_dim=3072,
        decoder_ffn_dim=3072,
        vocab_size=8000,
        max_position_embeddings=256,
    )
    model = T.BartForConditionalGeneration(cfg).eval()
    sig = seq2seq_signature(model)
    dims = {
        "batch": DimRange(1, 8),
        "seq": DimRange(1, 255),
        "past_seq": DimRange(0, 255),
        "src_seq": DimRange(1, 256),
    }
    tmp = Path(tempfile.mkdtemp())
    graphs = capture_parts(model, sig, dims, None)
    from torchport.exporters._onnx_export import save_model

    save_model(graphs["decoder"], tmp / "cache.onnx")
    Dim = torch.export.Dim
    b, s, p = Dim("batch", min=1, max=8), Dim("seq", min=1, max=255), Dim("past_seq", min=0, max=255)
    src = Dim("src_seq", min=1, max=256)
    alt = _alternative(model, sig)
    ex = (
        torch.zeros((2, 3), dtype=torch.int64),
        torch.ones((2, 7), dtype=torch.int64),
        torch.zeros((2, 7, 768)),
    )
    past = tuple(torch.zeros((2, 12, 4, 64)) for _ in range(2 * sig.num_layers))
    with torch.no_grad():
        prog = torch.export.export(
            alt,
            ex + past,
            dynamic_shapes=({0: b, 1: s}, {0: b, 1: src}, {0: b, 1: src}, tuple({0: b, 2: p} for _ in past)),
            strict=False,
        )
    rewrite_contiguous(prog)
    torch.onnx.export(prog, f=str(tmp / "recompute.onnx"), dynamo=True, optimize=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    rng = np.random.default_rng(0)
    mask = np.ones((1, args.src), np.int64)
    hidden = rng.standard_normal((1, args.src, 768)).astype(np.float32)
    enc = torch.from_numpy(hidden)
    with torch.no_grad():  # the cross keys/values the encoder graph would give
        cache = _caches(model, [], [])
        model(
            encoder_outputs=(enc,),
            attention_mask=torch.from_numpy(mask),
            decoder_input_ids=torch.zeros((1, 1), dtype=torch.int64),
            cache=cache,
            use_cache=True,
        )
        cross = [
            t.numpy() for layer in cache.cross_attention_cache.layers for t in (layer.keys, layer.values)
        ]
    rows = []
    for label, file in (
        ("cross k/v as cache inputs (exported)", "cache.onnx"),
        ("recomputed from encoder_hidden_states", "recompute.onnx"),
    ):
        sess = ort.InferenceSession(str(tmp / file), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        pastv = [np.zeros((1, 12, 0, 64), np.float32) for _ in range(2 * sig.num_layers)]
        start = None
        for step in range(args.steps + 4):
            if step == 4:
                start = time.perf_counter()
            ids = np.asarray([[step % 100]], np.int64)
            if file == "cache.onnx":
                feeds = dict(zip(names, [ids, mask, *pastv, *cross], strict=True))
            else:
                feeds = dict(zip(names, [ids, mask, hidden, *pastv], strict=True))
            out = sess.run(None, feeds)
            pastv = out[1:]
        rows.append((label, (time.perf_counter() - start) / args.steps * 1e3))
    base = rows[0][1]
    print(
        f"decoder step, BART-base shape, source {args.src} tokens, {args.steps} steps, {args.threads} threads"
    )
    print(f"{'variant':<42} {'ms/step':>8} {'ratio':>6}")
    for label, ms in rows:
        print(f"{label:<42} {ms:8.2f} {ms / base:6.2f}")


if __name__ == "__main__":
    main()
