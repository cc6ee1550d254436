"""Encoder-decoder models that generate: ``export --task text2text-generation`` (T5, BART, Marian,
mBART) and ``--task automatic-speech-recognition`` (Whisper).

A package holds two ONNX graphs (see docs/design.md, package format):

- ``encoder.onnx``: ``input_ids[batch, src_seq]`` + ``attention_mask[batch, src_seq]`` (text) or
  ``input_features[batch, mel, frames]`` (speech) → ``cross.<i>.key / .value[batch, heads, src_seq,
  head_dim]``: the encoder, and the cross-attention keys/values of every decoder layer computed once
  from its output (the decoder's own projections, run in this graph);
- ``model.onnx`` (the decoder, the package's main graph): ``decoder_input_ids[batch, seq]``,
  ``encoder_attention_mask[batch, src_seq]`` (text), ``past_key_values.<i>.key / .value[batch,
  heads, past_seq, head_dim]`` (self-attention cache) and the ``cross.<i>.key / .value`` of the
  encoder → ``logits[batch, seq, vocab]`` and ``present.<i>.key / .value[batch, heads,
  past_seq+seq, head_dim]``.

The cross-attention keys/values are cache inputs of the decoder, computed once by the encoder graph:
the measured alternative (the decoder takes ``encoder_hidden_states`` and projects them at every
step) is slower per step (docs/design.md records the measurement). Each part is validated against
eager PyTorch at shapes the capture did not see, then optimized and quantized per part, each variant
validated against the fp32 graphs over the same steps.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchport.exporters._capture_failures import export_error
from torchport.exporters._onnx_export import finalize_model, onnx_from_program, save_model
from torchport.exporters._strategies import Attempt
from torchport.exporters._torch_logs import quiet_torch_logs
from torchport.runtimes._errors import ExportError, UsageError, ValidationError, describe_error, first_line
from torchport.runtimes._manifest import DimRange, TensorSpec, Variant
from torchport.runtimes._parity import ParityResult, VariantParity, compare_output, tolerance_for

__all__ = ["SEQ2SEQ_TASKS", "Seq2SeqSignature", "export_seq2seq", "wants_seq2seq"]

SEQ2SEQ_TASKS = ("text2text-generation", "automatic-speech-recognition")
STRATEGY = "dynamo-nonstrict-encoder-decoder"
#: capture sizes (distinct, none 0 or 1, so no dim is specialized)
_EXAMPLE = {"batch": 2, "seq": 3, "past_seq": 4, "src_seq": 7}
DEFAULT_BATCH = DimRange(1, 32)
MAX_SEQ = 1024
#: the variant files of each part (the decoder keeps the package's usual names)
PART_FILES = {
    "encoder": {
        "fp32": "encoder.onnx",
        "fp16": "encoder.fp16.onnx",
        "int8": "encoder.int8.onnx",
        "int4": "encoder.int4.onnx",
    },
    "decoder": {
        "fp32": "model.onnx",
        "fp16": "model.fp16.onnx",
        "int8": "model.int8.onnx",
        "int4": "model.int4.onnx",
    },
}


def _is_seq2seq_lm(model: Any) -> bool:
    config = getattr(model, "config", None)
    return bool(getattr(config, "is_encoder_decoder", False)) and hasattr(model, "get_encoder")


def wants_seq2seq(loaded: Any, task: str | None, outputs: Any, inputs: Any, sample: Any = None) -> bool:
    """Whether ``export`` takes the encoder-decoder generation path.

    ``--task text2text-generation`` / ``automatic-speech-recognition`` ask for it; ``auto`` takes it for
    a Hugging Face encoder-decoder with a language-model head when no ``--outputs``/``--input`` is given.

    Raises:
        UsageError: the task asked for a model that is no encoder-decoder, or with --input/--outputs.
    """
    task = task or "auto"
    module = getattr(loaded, "module", None)
    ok = loaded.kind == "huggingface" and module is not None and _is_seq2seq_lm(module)
    ok = (
        ok
        and "ForConditionalGeneration" in type(module).__name__
        or (ok and "MTModel" in type(module).__name__)
    )
    if task in SEQ2SEQ_TASKS:
        if not ok:
            raise UsageError(
                f"--task {task} needs a Hugging Face encoder-decoder folder (*ForConditionalGeneration); "
                f"{loaded.reference} is a {type(module).__name__ if module is not None else loaded.kind}"
            )
        if inputs or sample is not None or outputs not in (None, "default"):
            raise UsageError(
                f"--task {task} sets its own inputs and outputs; drop --input/--sample/--outputs"
            )
        assert module is not None  # ok implies a loaded module
        audio = "input_features" in inspect.signature(module.forward).parameters
        if audio != (task == "automatic-speech-recognition"):
            right = "automatic-speech-recognition" if audio else "text2text-generation"
            raise UsageError(
                f"{type(module).__name__} takes {'audio' if audio else 'text'}; use --task {right}"
            )
        return True
    return task == "auto" and ok and outputs in (None, "default") and not inputs and sample is None


# --------------------------------------------------------------------------- the wrappers


@dataclass
class Seq2SeqSignature:
    """The cache layout of an encoder-decoder, learnt from one eager run."""

    num_layers: int
    heads: list[int]
    head_dims: list[int]
    dtype: str
    vocab: int
    d_model: int
    audio: bool
    mel: int = 0
    frames: int = 0
    src_seq: int = 0  #: the encoder output's fixed length (speech); 0: dynamic
    #: the decoder takes ``decoder_attention_mask`` (a left-padded self cache: rows at different
    #: positions share one run) and, with absolute position embeddings, ``decoder_position_ids``
    decoder_mask: bool = True
    positions: bool = False

    def kv(self, prefix: str, seq: str | int) -> list[TensorSpec]:
        return [
            TensorSpec(f"{prefix}.{i}.{kv}", self.dtype, ["batch", self.heads[i], seq, self.head_dims[i]])
            for i in range(self.num_layers)
            for kv in ("key", "value")
        ]

    @property
    def src(self) -> str | int:
        return self.src_seq or "src_seq"

    def encoder_inputs(self, vocab_range: tuple[int, int]) -> list[TensorSpec]:
        if self.audio:
            return [TensorSpec("input_features", self.dtype, ["batch", self.mel, self.frames])]
        return [
            TensorSpec("input_ids", "int64", ["batch", "src_seq"], vocab_range),
            TensorSpec("attention_mask", "int64", ["batch", "src_seq"], (0, 1)),
        ]

    def encoder_outputs(self) -> list[TensorSpec]:
        return self.kv("cross", self.src)

    def decoder_inputs(self, vocab_range: tuple[int, int]) -> list[TensorSpec]:
        specs = [TensorSpec("decoder_input_ids", "int64", ["batch", "seq"], vocab_range)]
        if not self.audio:
            specs.append(TensorSpec("encoder_attention_mask", "int64", ["batch", "src_seq"], (0, 1)))
        if self.decoder_mask:
            specs.append(TensorSpec("decoder_attention_mask", "int64", ["batch", "past_seq+seq"], (0, 1)))
        if self.decoder_mask and self.positions:
            # warm-up values (any position below max_positions is legal)
            specs.append(TensorSpec("decoder_position_ids", "int64", ["batch", "seq"], (0, 1)))
        return specs + self.kv("past_key_values", "past_seq") + self.kv("cross", self.src)

    def decoder_outputs(self) -> list[TensorSpec]:
        return [TensorSpec("logits", self.dtype, ["batch", "seq", self.vocab])] + self.kv(
            "present", "past_seq+seq"
        )


def _caches(
    model: torch.nn.Module, pairs: Sequence[tuple[Any, Any]], cross: Sequence[tuple[Any, Any]]
) -> Any:
    from transformers import DynamicCache, EncoderDecoderCache

    own, other = DynamicCache(), DynamicCache()
    for i, (k, v) in enumerate(pairs):
        own.update(k, v, i)
    for i, (k, v) in enumerate(cross):
        other.update(k, v, i)
    return EncoderDecoderCache(own, other)


class EncoderPart(torch.nn.Module):
    """``forward(input_ids, attention_mask)`` / ``forward(input_features)`` → cross keys/values."""

    def __init__(self, model: torch.nn.Module, sig: Seq2SeqSignature) -> None:
        super().__init__()
        self.model = model
        self.sig = sig

    def forward(self, source: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Any:
        from transformers.modeling_outputs import BaseModelOutput

        encoder: Any = self.model.get_encoder()  # type: ignore[operator]
        if self.sig.audio:
            hidden = encoder(input_features=source).last_hidden_state
        else:
            hidden = encoder(input_ids=source, attention_mask=attention_mask).last_hidden_state
        cache = _caches(self.model, [], [])
        start = torch.zeros((source.shape[0], 1), dtype=torch.int64, device=source.device)
        # one decoder step fills the cross-attention cache (its logits are not an output: pruned)
        self.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
            attention_mask=attention_mask,
            decoder_input_ids=start,
            cache=cache,
            use_cache=True,
        )
        out = []
        for layer in cache.cross_attention_cache.layers[: self.sig.num_layers]:
            out += [layer.keys, layer.values]
        return tuple(out)


class _RowPositions(torch.nn.Module):
    """A decoder's absolute position embedding looked up at each row's own positions (``ids``, set for
    one call by :class:`DecoderPart`); without them, the model's own (positions from the cache length)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.offset = int(getattr(inner, "offset", 0) or 0)  # BART/mBART: ids + 2
        self.ids: torch.Tensor | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.ids is None:
            return self.inner(*args, **kwargs)
        weight: Any = self.inner.weight
        return weight[self.ids + self.offset]


def _decoder_positions(model: torch.nn.Module) -> _RowPositions | None:
    """The decoder's position embedding, wrapped as :class:`_RowPositions` (once); ``None`` for
    families without absolute positions (T5's relative bias needs none: left padding keeps distances)."""
    decoder: Any = model.get_decoder()  # type: ignore[operator]
    inner = getattr(decoder, "embed_positions", None)
    if inner is None or not hasattr(inner, "weight"):
        return inner if isinstance(inner, _RowPositions) else None
    if not isinstance(inner, _RowPositions):
        inner = _RowPositions(inner)
        decoder.embed_positions = inner
    return inner


class DecoderPart(torch.nn.Module):
    """``forward(decoder_input_ids, [encoder_attention_mask], [decoder_attention_mask],
    [decoder_position_ids], *self_past, *cross)`` → logits, presents."""

    def __init__(self, model: torch.nn.Module, sig: Seq2SeqSignature) -> None:
        super().__init__()
        self.model = model
        self.sig = sig
        self.row_positions = _decoder_positions(model) if sig.decoder_mask and sig.positions else None

    def forward(self, decoder_input_ids: torch.Tensor, *rest: torch.Tensor) -> Any:
        from transformers.modeling_outputs import BaseModelOutput

        sig = self.sig
        mask = self_mask = ids = None
        if not sig.audio:
            mask, rest = rest[0], rest[1:]
        if sig.decoder_mask:
            self_mask, rest = rest[0], rest[1:]
        if self.row_positions is not None:
            ids, rest = rest[0], rest[1:]
        n = sig.num_layers
        own = [(rest[2 * i], rest[2 * i + 1]) for i in range(n)]
        cross = [(rest[2 * n + 2 * i], rest[2 * n + 2 * i + 1]) for i in range(n)]
        cache = _caches(self.model, own, cross)
        # the cross attention reads the cache (computed by the encoder graph); the hidden states only
        # give the encoder's length to the masks
        key = cross[0][0]
        hidden = key.new_zeros((key.shape[0], key.shape[2], sig.d_model))
        if self.row_positions is not None:
            self.row_positions.ids = ids
        try:
            out = self.model(
                encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
                attention_mask=mask,
                decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=self_mask,
                cache=cache,
                use_cache=True,
            )
        finally:
            if self.row_positions is not None:
                self.row_positions.ids = None
        tensors = [out.logits]
        for layer in cache.self_attention_cache.layers[:n]:
            tensors += [layer.keys, layer.values]
        return tuple(tensors)


def seq2seq_signature(model: torch.nn.Module) -> Seq2SeqSignature:
    """The layout of ``model``'s caches from one eager step."""
    config = model.config
    audio = "input_features" in inspect.signature(model.forward).parameters
    mel = int(getattr(config, "num_mel_bins", 0) or 0)
    frames = 2 * int(getattr(config, "max_source_positions", 0) or 0) if audio else 0
    with torch.no_grad():
        if audio:
            src = torch.zeros((1, mel, frames))
            out = model(
                input_features=src, decoder_input_ids=torch.zeros((1, 1), dtype=torch.int64), use_cache=True
            )
        else:
            ids = torch.ones((1, 3), dtype=torch.int64)
            out = model(
                input_ids=ids, decoder_input_ids=torch.zeros((1, 1), dtype=torch.int64), use_cache=True
            )
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    keys = [layer.keys for layer in cache.cross_attention_cache.layers]
    dtype = {torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(keys[0].dtype, "float32")
    d_model = int(getattr(config, "d_model", 0) or getattr(config, "hidden_size", 0))
    return Seq2SeqSignature(
        num_layers=len(keys),
        heads=[int(k.shape[1]) for k in keys],
        head_dims=[int(k.shape[3]) for k in keys],
        dtype=dtype,
        vocab=int(out.logits.shape[-1]),
        d_model=d_model,
        audio=audio,
        mel=mel,
        frames=frames,
        src_seq=int(keys[0].shape[2]) if audio else 0,
        positions=_decoder_positions(model) is not None,
    )


def _dims(model: Any, sig: Seq2SeqSignature, user: Mapping[str, DimRange]) -> dict[str, DimRange]:
    config = model.config
    src_max = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    tgt_max = getattr(config, "max_target_positions", None) or src_max
    src_limit = min(int(src_max), MAX_SEQ) if isinstance(src_max, int) and src_max > 1 else 512
    tgt_limit = min(int(tgt_max), MAX_SEQ) if isinstance(tgt_max, int) and tgt_max > 1 else 512
    dims = {"batch": DEFAULT_BATCH, "seq": DimRange(1, tgt_limit), "past_seq": DimRange(0, tgt_limit - 1)}
    if not sig.audio:
        dims["src_seq"] = DimRange(1, src_limit)
    for name, rng in user.items():
        if name not in dims:
            raise UsageError(f"--dim {name}: this export has dims {', '.join(dims)}")
        if rng.max > dims[name].max or rng.min > _EXAMPLE[name] or rng.max < _EXAMPLE[name]:
            raise UsageError(
                f"--dim {name}={rng.min}..{rng.max}: must include {_EXAMPLE[name]} and stay within "
                f"{dims[name].min}..{dims[name].max}"
            )
        dims[name] = rng
    return dims


# --------------------------------------------------------------------------- capture


def _example(sig: Seq2SeqSignature, batch: int, src: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if sig.audio:
        return {"input_features": rng.standard_normal((batch, sig.mel, sig.frames)).astype(sig.dtype)}
    mask = np.ones((batch, src), np.int64)
    for row in range(1, batch):  # right padding, as tokenizers pad for encoders
        mask[row, src - int(rng.integers(0, src // 2 + 1)) :] = 0
    return {"input_ids": rng.integers(3, sig.vocab, (batch, src)).astype(np.int64), "attention_mask": mask}


def _capture(module: torch.nn.Module, args: tuple[Any, ...], shapes: Any, what: str) -> Any:
    try:
        with quiet_torch_logs(), torch.no_grad():
            return torch.export.export(module, args, dynamic_shapes=shapes, strict=False)
    except Exception as e:  # noqa: BLE001 - analysed and re-raised
        raise export_error("capture", e, prefix=f"torch.export (non-strict, {what})") from e


def _translate(program: Any, inputs: Sequence[str], outputs: Sequence[str], opset: int | None) -> Any:
    from torchport.exporters._strategies import rewrite_contiguous

    # with symbolic shapes the decomposition of contiguous() can drop its copy (T5's attention)
    rewrite_contiguous(program)
    try:
        with quiet_torch_logs():
            return onnx_from_program(
                program, input_names=list(inputs), output_names=list(outputs), opset=opset
            )
    except Exception as e:  # noqa: BLE001
        raise export_error("ONNX translation", e, prefix="torch.onnx dynamo exporter", program=program) from e


def capture_parts(
    model: Any, sig: Seq2SeqSignature, dims: Mapping[str, DimRange], opset: int | None
) -> dict[str, Any]:
    """Capture and translate the encoder and the decoder; returns ``{part: onnx_ir model}``."""
    Dim = torch.export.Dim
    b, s, p, src = _EXAMPLE["batch"], _EXAMPLE["seq"], _EXAMPLE["past_seq"], _EXAMPLE["src_seq"]
    batch = Dim("batch", min=dims["batch"].min, max=dims["batch"].max)
    seq = Dim("seq", min=dims["seq"].min, max=dims["seq"].max)
    past_seq = Dim("past_seq", min=dims["past_seq"].min, max=dims["past_seq"].max)
    src_dim = Dim("src_seq", min=dims["src_seq"].min, max=dims["src_seq"].max) if not sig.audio else None
    enc = EncoderPart(model, sig).eval()
    feeds = _example(sig, b, src, 0)
    args: tuple[torch.Tensor, ...]
    src_mask: torch.Tensor | None = None
    if sig.audio:
        args = (torch.from_numpy(feeds["input_features"]),)
        shapes: Any = ({0: batch},)
    else:
        src_mask = torch.from_numpy(feeds["attention_mask"])
        args = (torch.from_numpy(feeds["input_ids"]), src_mask)
        shapes = ({0: batch, 1: src_dim}, {0: batch, 1: src_dim})
    in_names = [t.name for t in sig.encoder_inputs((0, 0))]
    out_names = [t.name for t in sig.encoder_outputs()]
    encoder = _translate(_capture(enc, args, shapes, "encoder"), in_names, out_names, opset)
    with torch.no_grad():
        cross = enc(*args)
    dec = DecoderPart(model, sig).eval()
    rng = np.random.default_rng(1)
    past = [
        torch.from_numpy(rng.standard_normal((b, sig.heads[i], p, sig.head_dims[i])).astype(sig.dtype))
        for i in range(sig.num_layers)
        for _ in range(2)
    ]
    dargs: list[Any] = [torch.from_numpy(rng.integers(0, sig.vocab, (b, s)).astype(np.int64))]
    dshapes: list[Any] = [{0: batch, 1: seq}]
    if src_mask is not None:
        dargs.append(src_mask)
        dshapes.append({0: batch, 1: src_dim})
    if sig.decoder_mask:  # row 1 left-padded by one position
        self_mask = np.ones((b, p + s), np.int64)
        self_mask[1:, 0] = 0
        dargs.append(torch.from_numpy(self_mask))
        dshapes.append({0: batch, 1: torch.export.Dim.AUTO})
        if sig.positions:
            dargs.append(torch.from_numpy(_positions(self_mask, s)))
            dshapes.append({0: batch, 1: seq})
    dargs += past + list(cross)
    dshapes += [{0: batch, 2: past_seq} for _ in past] + [
        {0: batch} if sig.audio else {0: batch, 2: src_dim} for _ in cross
    ]
    in_names = [t.name for t in sig.decoder_inputs((0, 0))]
    out_names = [t.name for t in sig.decoder_outputs()]
    decoder = _translate(
        _capture(dec, tuple(dargs), (dshapes[0], tuple(dshapes[1:])), "decoder with cache"),
        in_names,
        out_names,
        opset,
    )
    return {"encoder": encoder, "decoder": decoder}


# --------------------------------------------------------------------------- parity


def _steps(
    sig: Seq2SeqSignature, dims: Mapping[str, DimRange], steps: int, seed: int
) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """Unseen shapes: batch 3, a source of 11 (speech: fixed), a 2-token first step then single tokens."""
    rng = np.random.default_rng(seed)
    batch = min(3, dims["batch"].max)
    src = min(11, dims["src_seq"].max) if "src_seq" in dims else 0
    feeds = _example(sig, batch, src, seed + 7)
    first = min(2, dims["seq"].max)
    plan = [rng.integers(0, sig.vocab, (batch, first)).astype(np.int64)]
    plan += [
        rng.integers(0, sig.vocab, (batch, 1)).astype(np.int64)
        for _ in range(max(0, min(steps, dims["past_seq"].max - first)))
    ]
    return feeds, plan


def _positions(mask: np.ndarray, seq: int) -> np.ndarray:
    """Each row's positions of its last ``seq`` tokens: real tokens counted, padding at 0."""
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    return np.ascontiguousarray(positions[:, -seq:]).astype(np.int64)


def _run_parts(
    run_enc: Any,
    run_dec: Any,
    sig: Seq2SeqSignature,
    feeds: Mapping[str, np.ndarray],
    plan: Sequence[np.ndarray],
) -> list[list[np.ndarray]]:
    """Every step's outputs: the encoder's cross keys/values, then each decoder step's logits and presents."""
    cross = run_enc(feeds)
    results = [cross]
    batch = plan[0].shape[0]
    past = [
        np.zeros((batch, sig.heads[i], 0, sig.head_dims[i]), sig.dtype)
        for i in range(sig.num_layers)
        for _ in range(2)
    ]
    length = 0
    for ids in plan:
        dfeeds = {"decoder_input_ids": ids}
        if not sig.audio:
            dfeeds["encoder_attention_mask"] = feeds["attention_mask"]
        length += ids.shape[1]
        if sig.decoder_mask:  # from the second step on, the last row's first position is padding
            self_mask = np.ones((batch, length), np.int64)
            if length > ids.shape[1]:
                self_mask[-1, 0] = 0
            dfeeds["decoder_attention_mask"] = self_mask
            if sig.positions:
                dfeeds["decoder_position_ids"] = _positions(self_mask, ids.shape[1])
        names = [t.name for t in sig.kv("past_key_values", 0)] + [t.name for t in sig.kv("cross", 0)]
        dfeeds.update(zip(names, [*past, *cross], strict=True))
        out = run_dec(dfeeds)
        past = out[1:]
        results.append(out)
    return results


def check_seq2seq_parity(
    model: Any,
    sig: Seq2SeqSignature,
    files: Mapping[str, tuple[Path, Path]],
    *,
    dims: Mapping[str, DimRange],
    steps: int = 4,
    seed: int = 0,
    atol: float | None = None,
    rtol: float | None = None,
) -> ParityResult:
    """Eager vs ONNX Runtime for every variant's ``(encoder, decoder)`` files over an encoder run and
    decoder steps (each side feeding its own presents back). ``fp32`` is compared with eager PyTorch,
    every other variant with the fp32 files (the trust chain's variant link)."""
    from torchport.runtimes import Session

    start = time.perf_counter()
    feeds, plan = _steps(sig, dims, steps, seed)
    enc_names = [t.name for t in sig.encoder_inputs((0, 0))]
    dec_names = [t.name for t in sig.decoder_inputs((0, 0))]
    enc_mod, dec_mod = EncoderPart(model, sig).eval(), DecoderPart(model, sig).eval()

    def eager(mod: Any, names: Sequence[str]) -> Any:
        def run(f: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            with torch.no_grad():
                return [
                    t.numpy() for t in mod(*[torch.from_numpy(np.ascontiguousarray(f[n])) for n in names])
                ]

        return run

    def onnx(path: Path) -> Any:
        sess = Session(path)
        outs = sess.output_names
        return lambda f: [sess.run(dict(f), validate=False)[n] for n in outs]

    refs: dict[str, Any] = {
        "eager": _run_parts(eager(enc_mod, enc_names), eager(dec_mod, dec_names), sig, feeds, plan)
    }
    cases = ["encoder"] + [f"decoder step {k} (seq {ids.shape[1]})" for k, ids in enumerate(plan)]
    variants: dict[str, VariantParity] = {}
    out_names = [t.name for t in sig.encoder_outputs()] + [t.name for t in sig.decoder_outputs()]
    for variant, (enc_file, dec_file) in files.items():
        against = "eager" if variant == "fp32" else "fp32"
        tol = tolerance_for(variant, atol, rtol, None)
        vp = VariantParity(
            variant=variant, file=f"{enc_file.name}+{dec_file.name}", tolerance=tol, reference=against
        )
        variants[variant] = vp
        try:
            got = _run_parts(onnx(enc_file), onnx(dec_file), sig, feeds, plan)
            if variant == "fp32":
                refs["fp32"] = got
            ref = refs[against]
        except Exception as e:  # noqa: BLE001 - reported in the table
            vp.error = describe_error(e)
            continue
        keep = feeds["attention_mask"].astype(bool) if not sig.audio else None
        from dataclasses import replace

        no_top1 = replace(tol, min_top1=None)
        # the encoder's cross keys/values (at the source positions the mask keeps)
        for j, name in enumerate(out_names[: 2 * sig.num_layers]):
            g, r = got[0][j], ref[0][j]
            if keep is not None:
                g, r = np.moveaxis(g, 2, 1)[keep], np.moveaxis(r, 2, 1)[keep]
            vp.outputs.append(
                compare_output(
                    TensorSpec(name, sig.dtype, [None, None]),
                    [g.reshape(len(g), -1)],
                    [r.reshape(len(r), -1)],
                    no_top1,
                    logits=False,
                )
            )
        for j, name in enumerate(out_names[2 * sig.num_layers :]):
            gs = [
                step[j].reshape(-1, step[j].shape[-1]) if j == 0 else step[j].reshape(step[j].shape[0], -1)
                for step in got[1:]
            ]
            rs = [
                step[j].reshape(-1, step[j].shape[-1]) if j == 0 else step[j].reshape(step[j].shape[0], -1)
                for step in ref[1:]
            ]
            vp.outputs.append(
                compare_output(
                    TensorSpec(name, sig.dtype, [None, None]),
                    gs,
                    rs,
                    tol if j == 0 else no_top1,
                    logits=j == 0,
                )
            )
    return ParityResult(
        model=str(getattr(model, "name_or_path", "") or type(model).__name__),
        cases=cases,
        variants=variants,
        provider="cpu",
        seconds=time.perf_counter() - start,
    )


# --------------------------------------------------------------------------- the export


def _generation_extra(
    model: Any, sig: Seq2SeqSignature, dims: Mapping[str, DimRange], task: str, parts: Mapping[str, Any]
) -> dict[str, Any]:
    config = model.config
    gen_config = getattr(model, "generation_config", None)

    def ids(value: Any) -> list[int]:
        if value is None:
            return []
        return [int(v) for v in (value if isinstance(value, list | tuple) else [value])]

    def pick(name: str) -> Any:
        value = getattr(gen_config, name, None) if gen_config is not None else None
        return value if value is not None else getattr(config, name, None)

    settings: dict[str, Any] = {}
    for key in (
        "max_length",
        "num_beams",
        "length_penalty",
        "early_stopping",
        "no_repeat_ngram_size",
        "min_length",
        "min_new_tokens",
        "repetition_penalty",
        "do_sample",
        "temperature",
        "top_k",
        "top_p",
    ):
        value = getattr(gen_config, key, None) if gen_config is not None else None
        if isinstance(value, bool | int | float) and value is not None:
            settings[key] = value
    bad = getattr(gen_config, "bad_words_ids", None) if gen_config is not None else None
    if isinstance(bad, list | tuple) and bad:  # the runtime's logits rules apply them (runtimes._logits)
        settings["bad_words_ids"] = [[int(t) for t in seq] for seq in bad]
    forced = []
    fdi = pick("forced_decoder_ids")
    if isinstance(fdi, list | tuple):
        forced = [[int(a), int(b)] for a, b in fdi if b is not None]
    return {
        "task": task,
        "architecture": "encoder-decoder",
        "num_layers": sig.num_layers,
        "heads": list(sig.heads),
        "head_dims": list(sig.head_dims),
        "kv_dtype": sig.dtype,
        "vocab": sig.vocab,
        "source": "input_features" if sig.audio else "input_ids",
        "max_positions": dims["past_seq"].max + 1,
        "max_source": dims["src_seq"].max if "src_seq" in dims else sig.src_seq,
        "decoder_start_token_id": int(pick("decoder_start_token_id") or 0),
        "eos_token_id": ids(pick("eos_token_id")),
        "pad_token_id": ids(pick("pad_token_id")),
        "bos_token_id": ids(pick("bos_token_id")),
        "forced_bos_token_id": pick("forced_bos_token_id"),
        "forced_eos_token_id": pick("forced_eos_token_id"),
        "forced_decoder_ids": forced,
        "suppress_tokens": ids(pick("suppress_tokens")),
        "begin_suppress_tokens": ids(pick("begin_suppress_tokens")),
        "generation_config": settings,
        "cross_attention": "cache-inputs",
        "decoder_mask": sig.decoder_mask,
        "decoder_positions": sig.decoder_mask and sig.positions,
        "parts": parts,
    }


def export_seq2seq(
    loaded: Any,
    writer: Any,
    progress: Any,
    gate: Any,
    *,
    task: str | None,
    dims: Mapping[str, DimRange],
    opset: int | None,
    name: str,
    version: str,
    producer: Any,
    steps: int = 4,
) -> tuple[Any, str, list[Attempt]]:
    """``export_model``'s encoder-decoder branch: capture both parts, optimize, validate, commit.

    Raises:
        ExportError: capture or translation failed.
        ValidationError: a part or variant does not match (nothing is written).
    """
    import onnx

    from torchport.exporters._onnx_files import save_onnx
    from torchport.exporters._optimize import optimize_model
    from torchport.exporters._text_assets import copy_text_assets
    from torchport.runtimes._manifest import Manifest

    if gate.int8 not in (None, "dynamic"):
        raise UsageError("encoder-decoder exports support --int8 dynamic only")
    model = loaded.module.eval()
    notes: list[str] = []
    if getattr(model.config, "model_type", "") in ("t5", "mt5", "umt5"):  # see the fallback below
        model.set_attn_implementation("eager")
    with progress.stage("inputs") as st:
        sig = seq2seq_signature(model)
        task = (
            task
            if task in SEQ2SEQ_TASKS
            else ("automatic-speech-recognition" if sig.audio else "text2text-generation")
        )
        dims = _dims(model, sig, dims)
        st.detail = (
            f"{task}: {sig.num_layers} decoder layers, heads {sig.heads[0]}, head dim {sig.head_dims[0]}; "
            + ", ".join(f"{k}={v.min}..{v.max}" for k, v in dims.items())
        )
    start = time.perf_counter()
    with progress.stage("export") as st:
        try:
            graphs = capture_parts(model, sig, dims, opset)
        except ExportError as first:
            # SDPA's output view fails translation with symbolic strides in some families (T5):
            # the model's eager attention computes the same and translates
            if getattr(model.config, "_attn_implementation", "eager") == "eager":
                raise
            model.set_attn_implementation("eager")
            notes.append(f"attention sdpa -> eager ({first_line(first)[:120]})")
            graphs = capture_parts(model, sig, dims, opset)
        used_opset = int(graphs["decoder"].opset_imports.get("", opset or 0))
        st.detail = f"strategy {STRATEGY}, opset {used_opset}, parts encoder + decoder" + "".join(
            f"; {n}" for n in notes
        )
    seconds = time.perf_counter() - start
    vocab_range = (0, sig.vocab - 1)
    specs = {
        "encoder": (sig.encoder_inputs(vocab_range), sig.encoder_outputs()),
        "decoder": (sig.decoder_inputs(vocab_range), sig.decoder_outputs()),
    }
    all_dims = dict(dims)
    files: dict[str, dict[str, str]] = {"encoder": {}, "decoder": {}}
    data: dict[str, dict[str, list[str]]] = {"encoder": {}, "decoder": {}}
    with progress.stage("save") as st:
        for part, graph in graphs.items():
            part_dims = {
                k: v
                for k, v in all_dims.items()
                if any(k in [d for d in s.shape if isinstance(d, str)] for s in specs[part][0])
            }
            finalize_model(
                graph,
                specs[part][0],
                part_dims,
                {
                    "torchport.source": loaded.reference,
                    "torchport.strategy": STRATEGY,
                    "torchport.part": part,
                    "torch.version": torch.__version__,
                },
            )
            _name_total_dims(graph)
            file = PART_FILES[part]["fp32"]
            data[part]["fp32"] = save_model(graph, writer.path / file)
            files[part]["fp32"] = file
        st.detail = ", ".join(files[p]["fp32"] for p in files)
    passes: list[dict[str, Any]] = []
    if gate.level != "none" or gate.fp16 or gate.int8 or gate.int4:
        with progress.stage("optimize") as st:
            for part in ("encoder", "decoder"):
                built, records = optimize_model(
                    onnx.load(str(writer.path / files[part]["fp32"])),
                    level=gate.level,
                    fp16=gate.fp16,
                    int8=gate.int8,
                    int4=gate.int4_pass(),  # weight-only 4-bit MatMulNBits, each part (validated below)
                    disable=tuple(gate.disable),
                )
                for vname, proto in built.items():
                    file = PART_FILES[part][vname]
                    data[part][vname] = save_onnx(proto, writer.path / file)
                    files[part][vname] = file
                passes += [{**r, "part": part} for r in records]
            st.detail = f"level {gate.level}, variants {', '.join(files['decoder'])}"
    result = None
    if gate.validate:
        with progress.stage("validate") as st:
            pairs = {
                v: (writer.path / files["encoder"][v], writer.path / files["decoder"][v])
                for v in files["decoder"]
            }
            result = check_seq2seq_parity(
                model, sig, pairs, dims=dims, steps=steps, atol=gate.atol, rtol=gate.rtol
            )
            st.detail = (
                f"{'passed' if result else 'FAILED'} over {len(result.cases)} cases ({', '.join(pairs)})"
            )
        if not result:
            raise ValidationError(
                "the exported encoder/decoder do not match eager PyTorch; no package was written "
                f"(inspect with --no-validate, or loosen --atol/--rtol)\n{result}"
            )
    variants = {}
    parts: dict[str, Any] = {}
    for part in ("encoder", "decoder"):
        parts[part] = {
            "inputs": [s.to_dict() for s in specs[part][0]],
            "outputs": [s.to_dict() for s in specs[part][1]],
            "variants": {v: {"file": f, "data_files": data[part][v]} for v, f in files[part].items()},
        }
    for v, f in files["decoder"].items():
        vp = result.variants.get(v) if result is not None else None
        variants[v] = Variant(
            file=f, precision=v, parity=vp.summary() if vp else None, data_files=data["decoder"][v]
        )
    extra: dict[str, Any] = {"generation": _generation_extra(model, sig, dims, task, parts)}
    if sig.audio:  # speech: the feature extractor's settings (carried) and Whisper's prompt tokens
        from torchport.exporters._audio_assets import copy_audio_assets
        from torchport.runtimes._audio_prompt import whisper_settings

        extra["audio"] = copy_audio_assets(loaded.reference, writer.path, model.config)
        gen_config = getattr(model, "generation_config", None)
        if gen_config is not None:
            extra["generation"]["whisper"] = whisper_settings(gen_config.to_dict())
    text = copy_text_assets(loaded.reference, writer.path, loaded.hf_config, task=task)
    if text is not None:
        defaults = text.pop("generation_defaults", {})
        for key in ("eos_token_id", "pad_token_id"):
            if defaults.get(key):
                extra["generation"][key] = defaults[key]
        extra["text"] = text
    if not gate.validate:
        extra["validation"] = "skipped"
    if passes:
        extra["optimization"] = {"level": gate.level, "fp16": gate.fp16, "int8": gate.int8}
        if gate.int4:
            extra["optimization"]["int4"] = {
                "block_size": gate.int4_block_size,
                "symmetric": gate.int4_symmetric,
                "head": gate.int4_head,
                "embeddings": gate.int4_embeddings,
            }
    manifest = Manifest(
        name=name,
        version=str(version),
        inputs=specs["decoder"][0],
        outputs=specs["decoder"][1],
        dynamic_dims=all_dims,
        producer=producer(used_opset),
        source={"kind": loaded.kind, "reference": loaded.reference, "sha256": loaded.sha256},
        export={
            "strategy": STRATEGY,
            "attempts": [Attempt(STRATEGY, ok=True, seconds=seconds, warnings=notes).to_dict()],
            "opset": used_opset,
            "seconds": round(seconds, 3),
            "outputs": "encoder: cross; decoder: logits+present",
            "task": task,
        },
        variants=variants,
        passes=passes,
        parity=result.summary() if result is not None else None,
        validated=result is not None,
        extra=extra,
    )
    with progress.stage("commit") as st:
        package = writer.commit(manifest, parity=result.to_dict() if result is not None else None)
        st.detail = str(package.path)
    return package, STRATEGY, [Attempt(STRATEGY, ok=True, seconds=seconds, warnings=notes)]


def _name_total_dims(model: Any) -> None:
    from torchport.exporters._decoder_export import _name_total_dims as rename

    rename(model)


def check_seq2seq_package(
    package: Any,
    variants: Sequence[str],
    model: Any,
    *,
    steps: int = 4,
    seed: int = 0,
    atol: float | None = None,
    rtol: float | None = None,
) -> ParityResult:
    """``validate`` of an encoder-decoder package: every variant's encoder and decoder files against
    the eager model (``fp32``) or the fp32 files (the others), as the export checked them.

    Raises:
        ValidationError: the eager model is no encoder-decoder, or its layout differs from the package's.
    """
    module = getattr(model, "module", model)
    if module is None or not _is_seq2seq_lm(module):
        raise ValidationError(
            f"{package.manifest.name!r} is an encoder-decoder package; --model must be the Hugging Face "
            f"model it came from, not a {type(module).__name__}"
        )
    module = module.eval()
    if getattr(module.config, "model_type", "") in ("t5", "mt5", "umt5"):
        module.set_attn_implementation("eager")
    gen = package.manifest.extra["generation"]
    # packages exported before the decoder took its own mask (and positions) are checked as they are
    sig = replace(seq2seq_signature(module), decoder_mask=bool(gen.get("decoder_mask")))
    if [sig.num_layers, sig.heads, sig.head_dims] != [gen["num_layers"], gen["heads"], gen["head_dims"]]:
        raise ValidationError(
            f"--model has {sig.num_layers} decoder layers, heads {sig.heads}, head dims {sig.head_dims}; "
            f"the package has {gen['num_layers']}, {gen['heads']}, {gen['head_dims']}"
        )
    parts = gen["parts"]
    files = {
        v: (
            package.file(parts["encoder"]["variants"][v]["file"]),
            package.file(parts["decoder"]["variants"][v]["file"]),
        )
        for v in ["fp32", *[v for v in variants if v != "fp32"]]
    }
    return check_seq2seq_parity(
        module, sig, files, dims=package.manifest.dynamic_dims, steps=steps, seed=seed, atol=atol, rtol=rtol
    )
