"""Causal language models with a key/value cache: ``export --task text-generation``.

A causal LM exported this way takes

    input_ids[batch, seq], attention_mask[batch, past_seq+seq], position_ids[batch, seq] (when the
    model's forward takes them), past_key_values.<i>.key / .value[batch, kv_heads, past_seq, head_dim]

and returns ``logits[batch, seq, vocab]`` and ``present.<i>.key / .value[batch, kv_heads,
past_seq+seq, head_dim]``. One graph serves the prompt step (``past_seq = 0``) and every decode step
(the presents of one step are the pasts of the next). With the fused attention (the default, see
``_decoder_attention``) nothing in the graph reads the past's length: the mask gives it, so the past
may also be a longer pre-allocated buffer that the step writes into and returns as its present
(``extra.generation.kv_cache: shared-buffer``).

The capture wraps the model in :class:`DecoderModule`, which rebuilds a ``DynamicCache`` from the flat
past tensors; ``attention_mask``'s length is left to torch.export (``Dim.AUTO``) so it may be any
``past_seq + seq``. Mixture-of-experts models get the batched experts implementation before capture
(the grouped-matmul one has no ONNX translation).

Parity (:func:`check_decoder_parity`) runs eager PyTorch and ONNX Runtime over several steps — a
left-padded batched prompt, then decode steps feeding each side's own presents back — and compares
logits and presents at the positions the attention mask keeps (padding positions hold garbage in
both).
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from torchport.exporters._capture_failures import export_error
from torchport.exporters._onnx_export import finalize_model, onnx_from_program, save_model
from torchport.exporters._outputs import is_causal_lm
from torchport.exporters._strategies import Attempt
from torchport.exporters._torch_logs import quiet_torch_logs
from torchport.runtimes._errors import ExportError, UsageError, ValidationError, describe_error, first_line
from torchport.runtimes._manifest import DimRange, TensorSpec, Variant
from torchport.runtimes._parity import ParityResult, VariantParity, compare_output, tolerance_for

__all__ = [
    "TASKS",
    "DecoderModule",
    "DecoderSignature",
    "check_decoder_parity",
    "export_decoder",
    "wants_decoder",
]

#: ``--task`` values: ``auto`` picks ``text-generation`` for causal LM folders unless --outputs is given
TASKS = ("auto", "text-generation", "text2text-generation", "automatic-speech-recognition", "default")
STRATEGY = "dynamo-nonstrict-kv-cache"
#: the example sizes of the capture (distinct, none 0 or 1, so no dim is specialized)
_EXAMPLE = {"batch": 2, "seq": 3, "past_seq": 5}
DEFAULT_BATCH = DimRange(1, 32)
MAX_SEQ = 2048


def wants_decoder(
    loaded: Any,
    task: str | None,
    outputs: Any,
    inputs: Sequence[Any] | None,
    sample: Any = None,
    before_commit: Any = None,
) -> bool:
    """Whether ``export`` should take the key/value-cache path.

    ``task="text-generation"`` asks for it (and fails for a model that is no causal LM); ``"auto"``
    (the default) takes it for a Hugging Face causal LM when neither ``--outputs`` nor ``--input`` is
    given; ``"default"`` never does. A ``--sample`` file or a ``before_commit`` hook (which expect
    the plain export's inputs) also keep ``"auto"`` on the plain path.

    Raises:
        UsageError: an unknown task, or text-generation for a model that cannot do it.
    """
    task = task or "auto"
    if task not in TASKS:
        raise UsageError(f"unknown --task {task!r}; use one of: {', '.join(TASKS)}")
    if task in ("default", "text2text-generation", "automatic-speech-recognition"):
        return False
    module = getattr(loaded, "module", None)
    causal = loaded.kind == "huggingface" and module is not None and is_causal_lm(module)
    if task == "text-generation":
        if not causal:
            raise UsageError(
                f"--task text-generation needs a Hugging Face causal LM folder (*ForCausalLM, *LMHeadModel); "
                f"{loaded.reference} is a {type(module).__name__ if module is not None else loaded.kind}"
            )
        if inputs or sample is not None:
            raise UsageError(
                "--task text-generation sets its own inputs (input_ids, attention_mask, past key/values); "
                "drop --input/--sample"
            )
        if outputs not in (None, "default"):
            raise UsageError(
                "--task text-generation exports logits and present.N.key/value; drop --outputs "
                "(or use --outputs without --task for a plain export)"
            )
        if before_commit is not None:
            raise UsageError(
                "--task text-generation runs its own parity gate; a before_commit hook is not used"
            )
        return True
    return causal and outputs in (None, "default") and not inputs and sample is None and before_commit is None


# --------------------------------------------------------------------------- the wrapper


@dataclass
class DecoderSignature:
    """The shape of a decoder's cache, learnt from one eager run.

    Attributes:
        num_layers: cache layers.
        kv_heads / head_dims: per layer.
        dtype: the cache dtype (the model's float dtype).
        vocab: size of the logits' last dim.
        position_ids: whether forward takes ``position_ids``.
        cache_arg: forward's keyword for the cache (``past_key_values`` or ``cache``).
    """

    num_layers: int
    kv_heads: list[int]
    head_dims: list[int]
    dtype: str
    vocab: int
    position_ids: bool
    cache_arg: str

    def _cache_specs(self, prefix: str, seq_dim: str) -> list[TensorSpec]:
        """``<prefix>.<i>.key/value[batch, kv_heads, seq_dim, head_dim]`` for every layer."""
        return [
            TensorSpec(
                f"{prefix}.{i}.{kv}", self.dtype, ["batch", self.kv_heads[i], seq_dim, self.head_dims[i]]
            )
            for i in range(self.num_layers)
            for kv in ("key", "value")
        ]

    def input_names(self) -> list[str]:
        return [s.name for s in self.input_specs((0, 0), 1)]

    def output_names(self) -> list[str]:
        return [s.name for s in self.output_specs()]

    def input_specs(self, vocab_range: tuple[int, int], max_positions: int) -> list[TensorSpec]:
        """The decoder's inputs with the values each accepts: masks are 0/1 (left padding is 0),
        positions run up to the model's last position."""
        specs = [
            TensorSpec("input_ids", "int64", ["batch", "seq"], vocab_range),
            TensorSpec("attention_mask", "int64", ["batch", "past_seq+seq"], (0, 1)),
        ]
        if self.position_ids:
            specs.append(TensorSpec("position_ids", "int64", ["batch", "seq"], (0, max_positions - 1)))
        return specs + self._cache_specs("past_key_values", "past_seq")

    def output_specs(self) -> list[TensorSpec]:
        logits = TensorSpec("logits", self.dtype, ["batch", "seq", self.vocab])
        return [logits] + self._cache_specs("present", "past_seq+seq")

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers,
            "kv_heads": list(self.kv_heads),
            "head_dims": list(self.head_dims),
            "kv_dtype": self.dtype,
            "vocab": self.vocab,
            "position_ids": self.position_ids,
            "past": "past_key_values.{i}.{kv}",
            "present": "present.{i}.{kv}",
        }


class DecoderModule(torch.nn.Module):
    """``forward(input_ids, attention_mask, [position_ids], *past)`` → ``(logits, *presents)``.

    The past tensors are ``key, value`` per layer; a ``DynamicCache`` is rebuilt from them on each call.
    """

    def __init__(self, model: torch.nn.Module, signature: DecoderSignature) -> None:
        super().__init__()
        self.model = model
        self.signature = signature
        #: capture with one fused attention op per layer (see ``_decoder_attention``); eager runs
        #: for parity keep the model's own attention
        self.fused = False
        #: the exported graph's ``GroupQueryAttention`` applies the rotary embedding itself (set by the
        #: capture): its batched prompts must be unpadded, so parity runs each prompt row apart
        self.rotary_inside = False

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *rest: torch.Tensor) -> Any:
        from transformers import DynamicCache

        sig = self.signature
        kwargs: dict[str, Any] = {}
        if sig.position_ids:
            kwargs["position_ids"], rest = rest[0], rest[1:]
        # full layers even for sliding-window models: the attention mask (fused: the op's
        # local_window_size) applies the window, the cache keeps every position (a sliding layer crops it, which no dynamic shape can express)
        if self.fused:
            return self._fused_forward(input_ids, attention_mask, rest, kwargs)
        cache = DynamicCache()
        for i in range(sig.num_layers):
            cache.update(rest[2 * i], rest[2 * i + 1], i)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=True,
            return_dict=True,
            **{sig.cache_arg: cache},
            **kwargs,
        )
        present = _cache_of(out)
        tensors = [out.logits]
        for layer in present.layers[: sig.num_layers]:
            tensors += [layer.keys, layer.values]
        return tuple(tensors)

    def _fused_forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, past: Any, kwargs: dict[str, Any]
    ) -> Any:
        from torchport.exporters._decoder_attention import FusedAttentionError, fused_attention, split_cache

        sig = self.signature
        cache = split_cache([(past[2 * i], past[2 * i + 1]) for i in range(sig.num_layers)])
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None
        if hasattr(self, "rotary_cos"):  # buffers (nn.Module types its attributes as Tensor | Module)
            rotary = (cast(torch.Tensor, self.rotary_cos), cast(torch.Tensor, self.rotary_sin))
        position_ids = kwargs.get("position_ids")
        with fused_attention(self.model, cache, attention_mask, position_ids, rotary) as presents:
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                use_cache=True,
                return_dict=True,
                **{sig.cache_arg: cache},
                **kwargs,
            )
        if sorted(presents) != list(range(sig.num_layers)):
            raise FusedAttentionError(f"the fused attention ran for layers {sorted(presents)} only")
        tensors = [out.logits]
        for i in range(sig.num_layers):
            tensors += list(presents[i])
        return tuple(tensors)


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "past_key_values", None)
    if cache is None:
        cache = getattr(out, "cache", None)
    if cache is None or not hasattr(cache, "layers"):
        raise ExportError(
            "capture failed: the model returned no key/value cache with use_cache=True; "
            "export it with --outputs logits",
            stage="capture",
        )
    return cache


def _prepare(model: torch.nn.Module) -> list[str]:
    """Switch the model to what exports: batched experts for MoE models. Returns notes."""
    notes = []
    get = getattr(model, "get_experts_implementation", None)
    if callable(get):
        try:
            current = get()
        except Exception:  # noqa: BLE001 - models without experts
            current = None
        values = set(current.values()) if isinstance(current, dict) else {current}
        if values - {None, "eager", "batched_mm"}:
            model.set_experts_implementation("batched_mm")  # type: ignore[operator]  # a transformers model's
            notes.append(f"experts implementation {'/'.join(sorted(map(str, values)))} -> batched_mm")
    return notes


def decoder_signature(model: torch.nn.Module) -> DecoderSignature:
    """Learn the cache layout from one eager prompt step of ``model``."""
    params = inspect.signature(model.forward).parameters
    cache_arg = "past_key_values" if "past_key_values" in params else "cache"
    if cache_arg not in params:
        raise ExportError(
            f"capture failed: {type(model).__name__}.forward takes no past_key_values; "
            "export it with --outputs logits",
            stage="capture",
        )
    ids = torch.zeros((1, 2), dtype=torch.int64)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, return_dict=True)
    cache = _cache_of(out)
    keys = [layer.keys for layer in cache.layers]
    dtype = {torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(keys[0].dtype, "float32")
    return DecoderSignature(
        num_layers=len(keys),
        kv_heads=[int(k.shape[1]) for k in keys],
        head_dims=[int(k.shape[3]) for k in keys],
        dtype=dtype,
        vocab=int(out.logits.shape[-1]),
        position_ids="position_ids" in params,
        cache_arg=cache_arg,
    )


def decoder_inputs(
    sig: DecoderSignature,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    past: Sequence[np.ndarray] | None,
) -> dict[str, np.ndarray]:
    """The feeds of one step: ``position_ids`` from the mask (as Hugging Face ``generate`` makes them)
    and empty pasts for a prompt step."""
    batch, seq = input_ids.shape
    feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
    if sig.position_ids:
        pos = np.cumsum(attention_mask, axis=-1) - 1
        pos = np.where(attention_mask == 0, 1, pos)
        feeds["position_ids"] = pos[:, -seq:].astype(np.int64)
    dtype = np.dtype(sig.dtype)
    for i in range(sig.num_layers):
        for j, kv in enumerate(("key", "value")):
            feeds[f"past_key_values.{i}.{kv}"] = (
                past[2 * i + j]
                if past is not None
                else np.zeros((batch, sig.kv_heads[i], 0, sig.head_dims[i]), dtype)
            )
    return feeds


# --------------------------------------------------------------------------- capture


def capture_decoder(
    module: DecoderModule, dims: Mapping[str, DimRange], *, progress_note: Any = None
) -> torch.export.ExportedProgram:
    """torch.export (non-strict) of the wrapper with dynamic batch, seq and past_seq.

    Raises:
        ExportError: stage ``"capture"``, with the op and the user's line.
    """
    sig = module.signature
    b, s, p = _EXAMPLE["batch"], _EXAMPLE["seq"], _EXAMPLE["past_seq"]
    rng = np.random.default_rng(0)
    mask = np.ones((b, p + s), np.int64)
    past = [
        rng.standard_normal((b, sig.kv_heads[i], p, sig.head_dims[i])).astype(sig.dtype)
        for i in range(sig.num_layers)
        for _ in range(2)
    ]
    feeds = decoder_inputs(sig, rng.integers(0, sig.vocab, (b, s)), mask, past)
    tensors = [torch.from_numpy(feeds[n]) for n in sig.input_names()]
    Dim = torch.export.Dim
    batch = Dim("batch", min=dims["batch"].min, max=dims["batch"].max)
    seq = Dim("seq", min=dims["seq"].min, max=dims["seq"].max)
    past_seq = Dim("past_seq", min=dims["past_seq"].min, max=dims["past_seq"].max)
    rest = ([{0: batch, 1: seq}] if sig.position_ids else []) + [
        {0: batch, 2: past_seq} for _ in range(2 * sig.num_layers)
    ]
    shapes = ({0: batch, 1: seq}, {0: batch, 1: Dim.AUTO}, tuple(rest))
    try:
        with quiet_torch_logs(), torch.no_grad():
            return torch.export.export(module, tuple(tensors), dynamic_shapes=shapes, strict=False)
    except Exception as e:  # noqa: BLE001 - analysed and re-raised
        raise export_error("capture", e, prefix="torch.export (non-strict, with key/value cache)") from e


def _dims(loaded: Any, user: Mapping[str, DimRange]) -> dict[str, DimRange]:
    config = loaded.hf_config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    max_pos = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
    limit = min(int(max_pos), MAX_SEQ) if isinstance(max_pos, int) and max_pos > 1 else MAX_SEQ
    dims = {"batch": DEFAULT_BATCH, "seq": DimRange(1, limit), "past_seq": DimRange(0, limit - 1)}
    for name, rng in user.items():
        if name not in dims:
            raise UsageError(f"--dim {name}: a text-generation export has dims batch, seq and past_seq")
        if rng.max > dims[name].max:
            raise UsageError(
                f"--dim {name}={rng.min}..{rng.max}: the model has {limit} positions; "
                f"use --dim {name}={rng.min}..{dims[name].max}"
            )
        dims[name] = rng
    for name, low in (("batch", 1), ("seq", 1), ("past_seq", 0)):
        if dims[name].min > _EXAMPLE[name] or dims[name].max < _EXAMPLE[name]:
            raise UsageError(
                f"--dim {name}={dims[name].min}..{dims[name].max} must include {_EXAMPLE[name]} "
                f"(the size the capture runs at), e.g. --dim {name}={low}..{max(dims[name].max, 8)}"
            )
    return dims


# --------------------------------------------------------------------------- parity


@dataclass
class _Step:
    description: str
    feeds: dict[str, np.ndarray]
    keep: np.ndarray  #: [batch, seq] bool: positions of real tokens (logits compared there)
    keep_total: np.ndarray  #: [batch, past_seq+seq] bool: cache positions of real tokens


def _plan_steps(sig: DecoderSignature, dims: Mapping[str, DimRange], steps: int, seed: int) -> list[Any]:
    """Token ids and masks of a left-padded batched prompt and ``steps`` decode steps."""
    rng = np.random.default_rng(seed)
    longest = max(2, min(8, dims["seq"].max))
    batch = min(3, dims["batch"].max)
    lengths = [longest] + [int(rng.integers(1, longest + 1)) for _ in range(batch - 1)]
    ids = rng.integers(0, sig.vocab, (batch, longest))
    mask = np.zeros((batch, longest), np.int64)
    for row, n in enumerate(lengths):
        mask[row, longest - n :] = 1
    steps = max(0, min(steps, dims["past_seq"].max - longest + 1))
    decode = [rng.integers(0, sig.vocab, (batch, 1)) for _ in range(steps)]
    return [(ids, mask)] + [(d, None) for d in decode]


def _gather(arr: np.ndarray, keep: np.ndarray, axis: int) -> np.ndarray:
    """Rows of ``arr`` where ``keep[batch, pos]`` (pos on ``axis``), flattened to 2-D."""
    moved = np.moveaxis(arr, axis, 1)  # [batch, pos, ...]
    return moved[keep].reshape(int(keep.sum()), -1)


def rotates_in_attention(path: str | Path) -> bool:
    """Whether the decoder graph at ``path`` has a ``GroupQueryAttention`` that applies the rotary
    embedding itself (``do_rotary=1``): its batched prompts must be unpadded."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(
        node.op_type == "GroupQueryAttention"
        and any(a.name == "do_rotary" and a.i == 1 for a in node.attribute)
        for node in graph.node
    )


def _unpadded_prompt(run: Any, sig: DecoderSignature, ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """A left-padded prompt step run one row at a time without its padding, the outputs laid out as
    the batched step's (logits [batch, seq, vocab], presents [batch, heads, seq, dim], zeros at padding)."""
    rows = []
    for r in range(ids.shape[0]):
        n = int(mask[r].sum())
        rows.append(
            run(decoder_inputs(sig, ids[r : r + 1, ids.shape[1] - n :], np.ones((1, n), np.int64), None))
        )
    out = []
    for j, first in enumerate(rows[0]):
        axis = 1 if j == 0 else 2
        shape = list(first.shape)
        shape[0], shape[axis] = ids.shape[0], ids.shape[1]
        full = np.zeros(shape, first.dtype)
        for r, values in enumerate(rows):
            n = values[j].shape[axis]
            index = [slice(r, r + 1)] + [slice(None)] * (full.ndim - 1)
            index[axis] = slice(ids.shape[1] - n, None)
            full[tuple(index)] = values[j]
        out.append(full)
    return out


def _run_steps(
    run: Any, sig: DecoderSignature, plan: Sequence[Any], unpadded: bool = False
) -> list[tuple[_Step, list[np.ndarray]]]:
    """Run ``plan``; with ``unpadded`` the prompt step runs row by row (see :func:`rotates_in_attention`)."""
    past = None
    mask = None
    out: list[tuple[_Step, list[np.ndarray]]] = []
    for k, (ids, step_mask) in enumerate(plan):
        if step_mask is not None:
            mask = step_mask
        else:
            assert mask is not None
            mask = np.concatenate([mask, np.ones((mask.shape[0], ids.shape[1]), np.int64)], axis=1)
        feeds = decoder_inputs(sig, ids, mask, past)
        if unpadded and k == 0 and not mask.all():
            values = _unpadded_prompt(run, sig, ids, mask)
        else:
            values = run(feeds)
        past = values[1:]
        desc = f"prompt batch {ids.shape[0]} seq {ids.shape[1]}" if k == 0 else f"decode step {k}"
        keep = mask[:, -ids.shape[1] :].astype(bool)
        out.append((_Step(desc, feeds, keep, mask.astype(bool)), values))
    return out


def check_decoder_parity(
    module: DecoderModule,
    files: Mapping[str, Path],
    *,
    dims: Mapping[str, DimRange],
    steps: int = 4,
    seed: int = 0,
    atol: float | None = None,
    rtol: float | None = None,
    tolerances: Mapping[str, Any] | None = None,
    provider: str = "cpu",
    fp32_reference: Path | None = None,
) -> ParityResult:
    """Eager vs ONNX Runtime over a prompt step and ``steps`` decode steps, for each variant file.

    Each side feeds its own presents back as the next past, so differences that grow over the
    steps show. Logits and presents are compared at the positions the attention mask keeps. A graph
    whose attention applies the rotary embedding (:func:`rotates_in_attention`) takes its batched
    prompt unpadded: both sides then run the prompt step row by row (as the generate loop does).

    With ``fp32_reference`` (the validated ``model.onnx``) every variant other than ``fp32`` is
    compared with that ONNX model over the same steps instead (the trust chain's variant link,
    recorded as ``reference: "fp32"``); ``fp32`` itself is always compared with eager PyTorch.

    Example:
        >>> check_decoder_parity(DecoderModule(model, sig), {"fp32": Path("out/m/model.onnx")},
        ...                      dims=dims)                                                # doctest: +SKIP
    """
    start = time.perf_counter()
    sig = module.signature
    plan = _plan_steps(sig, dims, steps, seed)
    names = sig.output_names()
    unpadded = any(
        rotates_in_attention(p) for p in [*files.values(), *([fp32_reference] if fp32_reference else [])]
    )

    def eager(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        tensors = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in sig.input_names()]
        with torch.no_grad():
            return [t.detach().numpy() for t in module(*tensors)]

    references: dict[str, Any] = {"eager": _run_steps(eager, sig, plan, unpadded)}
    cases = [step.description for step, _ in references["eager"]]
    variants: dict[str, VariantParity] = {}
    onnx_runs: dict[Path, Any] = {}  # the fp32 file is both a variant and the others' reference

    def onnx_steps(file: Any) -> Any:
        key = Path(file).resolve()
        if key not in onnx_runs:
            onnx_runs[key] = _run_steps(_onnx_runner(file, names, provider), sig, plan, unpadded)
        return onnx_runs[key]

    for variant, path in files.items():
        against = "fp32" if fp32_reference is not None and variant != "fp32" else "eager"
        tol = tolerance_for(variant, atol, rtol, tolerances)
        vp = VariantParity(variant=variant, file=Path(path).name, tolerance=tol, reference=against)
        variants[variant] = vp
        try:
            if against not in references:
                references[against] = onnx_steps(fp32_reference)
            got = onnx_steps(path)
        except Exception as e:  # noqa: BLE001 - reported in the table
            vp.error = describe_error(e)
            continue
        for j, name in enumerate(names):
            ref_rows, got_rows = [], []
            for (step, ref_values), (_, got_values) in zip(references[against], got, strict=True):
                keep, axis = (step.keep, 1) if j == 0 else (step.keep_total, 2)
                ref_rows.append(_gather(ref_values[j], keep, axis))
                got_rows.append(_gather(got_values[j], keep, axis))
            spec = TensorSpec(name, sig.dtype, [None, None])
            # presents: elementwise (fp32) or cosine (fp16/int8); no top-1 of cache rows
            pt = tol if j == 0 else _no_top1(tol)
            vp.outputs.append(compare_output(spec, got_rows, ref_rows, pt, logits=j == 0))
    return ParityResult(
        model=str(getattr(module.model, "name_or_path", "") or type(module.model).__name__),
        cases=cases,
        variants=variants,
        provider=provider,
        seconds=time.perf_counter() - start,
    )


def _onnx_runner(path: Any, names: Sequence[str], provider: str) -> Any:
    from torchport.runtimes import Session

    sess = Session(path, providers=provider)
    return lambda feeds: [sess.run(feeds, validate=False)[n] for n in names]


def _no_top1(tol: Any) -> Any:
    from dataclasses import replace

    return replace(tol, min_top1=None)


# --------------------------------------------------------------------------- the export


@dataclass
class DecoderOptions:
    """What ``export_model`` passes on to :func:`export_decoder` (see its arguments)."""

    dims: Mapping[str, DimRange] = field(default_factory=dict)
    opset: int | None = None
    validate: bool = True
    level: str = "none"
    fp16: bool = False
    int8: str | None = None
    int4: Any = None  # an Int4Pass (the int4 variant's recipe) or None
    disable: Sequence[str] = ()
    atol: float | None = None
    rtol: float | None = None
    steps: int = 4
    external_data_threshold: int | None = None
    attention: str = "fused"


def export_decoder(loaded: Any, writer: Any, progress: Any, options: DecoderOptions) -> dict[str, Any]:
    """Capture, translate, optimize and validate a causal LM with its cache into ``writer.path``.

    Returns a dict with ``program``-independent results: ``module`` (the wrapper), ``signature``,
    ``dims``, ``model`` (the ONNX IR model), ``data_files``, ``strategy``, ``attempts``, ``variants``,
    ``passes``, ``parity`` (report dict or ``None``), ``parity_result``, ``opset``, ``seconds``.

    Raises:
        ExportError: capture or translation failed.
        UsageError: bad dims or options (``--int8 static`` is not offered here).
        ValidationError: a variant does not match eager PyTorch over the steps.
    """
    from torchport.exporters._onnx_export import EXTERNAL_DATA_THRESHOLD

    if options.int8 not in (None, "dynamic"):
        raise UsageError("--task text-generation supports --int8 dynamic only")
    model = loaded.module
    notes = _prepare(model)
    dims = _dims(loaded, options.dims)
    with progress.stage("inputs") as st:
        sig = decoder_signature(model)
        module = DecoderModule(model, sig).eval()
        st.detail = (
            f"text-generation: {sig.num_layers} cache layers, kv heads {sig.kv_heads[0]}, "
            f"head dim {sig.head_dims[0]}; " + ", ".join(f"{k}={v.min}..{v.max}" for k, v in dims.items())
        )
    start = time.perf_counter()
    with progress.stage("export") as st:
        onnx_model, attention = _capture_and_translate(module, dims, options, notes)
        opset = int(onnx_model.opset_imports.get("", options.opset or 0))
        st.detail = f"strategy {STRATEGY}, opset {opset}" + (f"; {'; '.join(notes)}" if notes else "")
    seconds = time.perf_counter() - start
    vocab_range = (0, sig.vocab - 1)
    specs = sig.input_specs(vocab_range, dims["seq"].max)
    with progress.stage("save") as st:
        finalize_model(
            onnx_model,
            specs,
            dims,
            {
                "torchport.source": loaded.reference,
                "torchport.strategy": STRATEGY,
                "torch.version": torch.__version__,
            },
        )
        _name_total_dims(onnx_model)
        path = writer.path / "model.onnx"
        data_files = save_model(
            onnx_model,
            path,
            external_data_threshold=options.external_data_threshold or EXTERNAL_DATA_THRESHOLD,
        )
        st.detail = "model.onnx" + (f" + {', '.join(data_files)}" if data_files else "")
    variants = {"fp32": Variant(file="model.onnx", precision="fp32", data_files=list(data_files))}
    passes: list[dict[str, Any]] = []
    if options.level != "none" or options.fp16 or options.int8 or options.int4 is not None:
        import onnx

        from torchport.exporters._onnx_files import save_onnx
        from torchport.exporters._onnx_passes import DECODER_INT8_BLOCK_SIZE
        from torchport.exporters._optimize import VARIANT_FILES, optimize_model

        with progress.stage("optimize") as st:
            built, passes = optimize_model(
                onnx.load(str(path)),
                level=options.level,
                fp16=options.fp16,
                int8=options.int8,
                disable=options.disable,
                int8_block_size=DECODER_INT8_BLOCK_SIZE,
                int4=options.int4,
            )
            for vname, proto in built.items():
                file = VARIANT_FILES[vname]
                variants[vname] = Variant(
                    file=file, precision=vname, data_files=save_onnx(proto, writer.path / file)
                )
            st.detail = f"level {options.level}, variants {', '.join(variants)}"
    result = None
    if options.validate:
        with progress.stage("validate") as st:
            files = {k: writer.path / v.file for k, v in variants.items()}
            result = check_decoder_parity(
                module,
                files,
                dims=dims,
                steps=options.steps,
                atol=options.atol,
                rtol=options.rtol,
                fp32_reference=files["fp32"],
            )
            st.detail = (
                f"{'passed' if result else 'FAILED'} over {len(result.cases)} steps ({', '.join(files)})"
            )
        if not result:
            raise ValidationError(
                "the exported decoder does not match eager PyTorch over prompt and decode steps; no package "
                f"was written (inspect with --no-validate, or loosen --atol/--rtol)\n{result}"
            )
        for k, v in variants.items():
            vp = result.variants.get(k)
            variants[k] = Variant(
                file=v.file,
                precision=v.precision,
                parity=vp.summary() if vp else None,
                data_files=v.data_files,
            )
    return {
        "module": module,
        "signature": sig,
        "dims": dims,
        "specs": specs,
        "outputs": sig.output_specs(),
        "model": onnx_model,
        "data_files": data_files,
        "strategy": STRATEGY,
        "attempts": [Attempt(STRATEGY, ok=True, seconds=seconds, warnings=notes)],
        "variants": variants,
        "passes": passes,
        "parity_result": result,
        "parity": result.to_dict() if result is not None else None,
        "opset": opset,
        "seconds": seconds,
        "attention": attention,
        "rotary_inside": module.rotary_inside,
    }


def _capture_and_translate(
    module: DecoderModule, dims: Mapping[str, DimRange], options: DecoderOptions, notes: list[str]
) -> tuple[Any, str]:
    """Capture and translate with the fused attention when asked (falling back to the model's own
    attention, with a note, where the fused op does not fit); returns the ONNX model and the
    attention used (``"fused"`` or ``"standard"``)."""
    if options.attention == "fused":
        from torchport.exporters._decoder_attention import rotary_caches, rotary_in_attention

        module.fused = True
        caches = rotary_caches(module.model, dims["seq"].max) if module.signature.position_ids else None
        if caches is not None:  # buffers, so the capture makes them initializers
            module.register_buffer("rotary_cos", caches[0], persistent=False)
            module.register_buffer("rotary_sin", caches[1], persistent=False)
        inside = caches is not None and rotary_in_attention(2 * int(caches[0].shape[1]))
        try:
            translated = _translate(module, dims, options.opset, fused=True, rotary_inside=inside)
            module.rotary_inside = inside
            return translated, "fused"
        except Exception as e:  # noqa: BLE001 - any failure of the fused path: the standard one decides
            notes.append(f"fused attention not used ({first_line(e)[:160]})")
        finally:
            module.fused = False
            for name in ("rotary_cos", "rotary_sin"):
                module._buffers.pop(name, None)
    return _translate(module, dims, options.opset, fused=False), "standard"


def _translate(
    module: DecoderModule,
    dims: Mapping[str, DimRange],
    opset: int | None,
    *,
    fused: bool,
    rotary_inside: bool = False,
) -> Any:
    """Capture ``module`` and translate it to ONNX (with the fused attention's op and translation;
    ``rotary_inside``: the attention op rotates, see ``onnx_translations``)."""
    from torchport.exporters._decoder_attention import onnx_translations, ort_op_schemas

    sig = module.signature
    program = capture_decoder(module, dims)
    try:
        with quiet_torch_logs(), ort_op_schemas() if fused else contextlib.nullcontext():
            return onnx_from_program(
                program,
                input_names=sig.input_names(),
                output_names=sig.output_names(),
                opset=opset,
                custom_translation_table=onnx_translations(rotary_inside) if fused else None,
            )
    except Exception as e:  # noqa: BLE001
        raise export_error("ONNX translation", e, prefix="torch.onnx dynamo exporter", program=program) from e


def _name_total_dims(model: Any) -> None:
    """Rename ``past_seq + seq`` (as the exporter writes the sum) to ``past_seq+seq`` on inputs/outputs."""
    import onnx_ir as ir

    for value in [*model.graph.inputs, *model.graph.outputs]:
        if value.shape is None:
            continue
        dims = []
        changed = False
        for d in value.shape:
            if (
                isinstance(d, ir.SymbolicDim)
                and d.value
                and d.value.replace(" ", "") in ("past_seq+seq", "seq+past_seq")
            ):
                dims.append("past_seq+seq")
                changed = True
            else:
                dims.append(d)
        if changed:
            value.shape = ir.Shape(dims)


def generation_extra(sig: DecoderSignature, config: Any, dims: Mapping[str, DimRange]) -> dict[str, Any]:
    """The manifest's ``extra["generation"]``: cache layout and the config's special tokens."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config

    def ids(value: Any) -> list[int]:
        if value is None:
            return []
        return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]

    return {
        "task": "text-generation",
        **sig.to_dict(),
        "max_positions": dims["seq"].max,
        # attention sees at most this many positions back (the exported mask applies it; the cache
        # keeps every position up to max_positions)
        "sliding_window": getattr(text, "sliding_window", None),
        "eos_token_id": ids(getattr(text, "eos_token_id", None)),
        "bos_token_id": ids(getattr(text, "bos_token_id", None)),
        "pad_token_id": ids(getattr(text, "pad_token_id", None)),
    }


def export_text_generation(
    loaded: Any,
    writer: Any,
    progress: Any,
    gate: Any,
    *,
    dims: Mapping[str, DimRange],
    opset: int | None,
    name: str,
    version: str,
    producer: Any,
    attention: str = "fused",
) -> tuple[Any, str, list[Attempt]]:
    """``export_model``'s text-generation branch: export, gate and commit into ``writer``.

    Args:
        gate: the export's ``GateOptions`` (level, fp16, int8, disable, validate, atol, rtol).
        producer: ``producer(opset) -> dict`` for the manifest.

    Returns:
        ``(package, strategy, attempts)``.
    """
    from torchport.exporters._text_assets import copy_text_assets
    from torchport.runtimes._manifest import Manifest

    done = export_decoder(
        loaded,
        writer,
        progress,
        DecoderOptions(
            dims=dims,
            opset=opset,
            validate=gate.validate,
            level=gate.level,
            fp16=gate.fp16,
            int8=gate.int8,
            int4=gate.int4_pass(),
            disable=tuple(gate.disable),
            atol=gate.atol,
            rtol=gate.rtol,
            attention=attention,
        ),
    )
    extra: dict[str, Any] = {
        "generation": generation_extra(done["signature"], loaded.hf_config, done["dims"])
    }
    extra["generation"]["attention"] = done["attention"]
    if done["attention"] == "fused":
        # the fused op reads the lengths from the mask and writes into the past it is given: a
        # pre-allocated buffer can be both past and present (see runtimes' DecodeBatch)
        extra["generation"]["kv_cache"] = "shared-buffer"
    if done["rotary_inside"]:
        # GroupQueryAttention rotates (do_rotary): a batched prompt must be unpadded (the loop runs
        # prompts of different lengths apart); decode steps take each row's position_ids
        extra["generation"]["rotary"] = "attention"
    text = copy_text_assets(loaded.reference, writer.path, loaded.hf_config, task="text-generation")
    if text is not None:
        extra["generation"].update(text.pop("generation_defaults", {}))
        extra["text"] = text
    if not gate.validate:
        extra["validation"] = "skipped"
    if done["passes"]:
        extra["optimization"] = {"level": gate.level, "fp16": gate.fp16, "int8": gate.int8}
        if gate.int4:
            extra["optimization"]["int4"] = True
    result = done["parity_result"]
    manifest = Manifest(
        name=name,
        version=str(version),
        inputs=done["specs"],
        outputs=done["outputs"],
        dynamic_dims=dict(done["dims"]),
        producer=producer(done["opset"]),
        source={"kind": loaded.kind, "reference": loaded.reference, "sha256": loaded.sha256},
        export={
            "strategy": done["strategy"],
            "attempts": [a.to_dict() for a in done["attempts"]],
            "opset": done["opset"],
            "seconds": round(done["seconds"], 3),
            "outputs": "logits+present",
            "task": "text-generation",
        },
        variants=done["variants"],
        passes=done["passes"],
        parity=result.summary() if result is not None else None,
        validated=result is not None,
        extra=extra,
    )
    with progress.stage("commit") as st:
        package = writer.commit(manifest, parity=done["parity"])
        st.detail = str(package.path)
    return package, done["strategy"], done["attempts"]
