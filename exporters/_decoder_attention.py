"""Fused attention for decoder capture: each attention layer becomes one ONNX Runtime ``GroupQueryAttention``.

The plain capture of a Hugging Face decoder leaves attention as dozens of small ops per layer: the
cache ``Concat``, an ``Expand`` of the key/value heads for grouped-query models, a ``Transpose`` of
the keys, the scale ``Mul`` on both sides, the mask, ``Softmax``. Each copies the cache or costs a
kernel launch per decode step, and on a CPU a small model spends as long in them as in its matrix
products. With :func:`fused_attention` active during capture:

* the cache object hands the attention function the new keys/values only (the past stays separate),
* the model makes no 4-D mask; the attention function calls the custom op
  ``torchport::group_query_attention`` (query, new key/value, past key/value, an additive bias made
  from the 2-D attention mask — the padding —, and the layer's sliding window), which returns the
  output and the two presents (past + new),
* torch.onnx translates that op to ``com.microsoft.GroupQueryAttention`` (``seqlens_k`` = total length
  − 1 for every row, since batches are left-padded and the bias masks the padding; the op applies
  the causal mask itself, and the window as ``local_window_size``).

Every length comes from the attention mask, none from the past: given a past buffer longer than the
mask, bound as its present too, ONNX Runtime writes the new keys/values into it in place at the
mask's length (what the generate loop does).

In eager mode the op computes exactly what the model's own attention does (concatenate, repeat the
key/value heads, scaled dot-product attention with the bias and the causal mask), so the capture
sees the same numbers; parity is still checked against the unmodified model.

ONNX Runtime's ``GroupQueryAttention`` runs on the CPU in float32 and float16; it does not take a
prompt of several tokens *and* a past for batches above one (the generation loop never asks for
that: prompts run with an empty past, decode steps take one token), it takes head sizes in multiples
of 8 (others fall back to the standard attention), and its CUDA kernel runs float16/bfloat16 only,
so a float32 package served on CUDA wants ``attention="standard"``.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

import torch

__all__ = [
    "FUSED_ATTENTION",
    "FusedAttentionError",
    "fused_attention",
    "onnx_translations",
    "ort_op_schemas",
    "rotary_caches",
    "rotary_in_attention",
    "split_cache",
]

#: the attention implementation name registered with transformers while capturing
FUSED_ATTENTION = "torchport_group_query_attention"
#: the additive bias of a masked position (finite in float16 too, so a fully padded row stays finite)
MASKED = -65504.0

#: rotary types whose frequencies do not depend on the sequence length (one cos/sin cache serves all)
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")

_state = threading.local()


class FusedAttentionError(RuntimeError):
    """The model's attention uses something the fused op does not do (the capture falls back)."""


@torch.library.custom_op("torchport::group_query_attention", mutates_args=())
def group_query_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    bias: torch.Tensor,
    seqlens: torch.Tensor,
    total: torch.Tensor,
    scale: float,
    num_heads: int,
    kv_heads: int,
    window: int,
    cos_cache: torch.Tensor | None,
    sin_cache: torch.Tensor | None,
    position_ids: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``query`` [b, heads, s, d], ``key``/``value`` [b, kv_heads, s, d] (new tokens), pasts
    [b, kv_heads, p, d], ``bias`` [b, 1, s, p+s] → output [b, s, heads, d], presents [b, kv_heads, p+s, d].
    ``window`` > 0: a query sees the last ``window`` positions, itself included (ONNX Runtime's
    ``local_window_size``, as Hugging Face's ``sliding_window``). With ``cos_cache``/``sin_cache``
    [positions, d/2] and ``position_ids`` [b, s], ``query`` and ``key`` come unrotated and the op
    rotates them (rotate-half rotary at those positions; ONNX Runtime's ``RotaryEmbedding``).
    ``seqlens`` / ``total`` are ONNX Runtime's ``seqlens_k`` and ``total_sequence_length`` (unused here)."""
    if cos_cache is not None and sin_cache is not None and position_ids is not None:
        query = _rotate(query, cos_cache, sin_cache, position_ids)
        key = _rotate(key, cos_cache, sin_cache, position_ids)
    present_key = torch.cat([past_key, key], dim=2)
    present_value = torch.cat([past_value, value], dim=2)
    groups = num_heads // kv_heads
    keys = present_key.repeat_interleave(groups, dim=1) if groups > 1 else present_key
    values = present_value.repeat_interleave(groups, dim=1) if groups > 1 else present_value
    s, t = query.shape[2], present_key.shape[2]
    causal = torch.ones(s, t, dtype=torch.bool, device=query.device).tril(t - s)
    if window > 0:
        causal = causal & ~torch.ones(s, t, dtype=torch.bool, device=query.device).tril(t - s - window)
    mask = bias.to(query.dtype).masked_fill(~causal, MASKED)
    out = torch.nn.functional.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale)
    return out.transpose(1, 2).contiguous(), present_key, present_value


@group_query_attention.register_fake
def _(  # type: ignore[no-untyped-def]  # torch reads the fake's signature as the op's
    query, key, value, past_key, past_value, bias, seqlens, total, scale, num_heads, kv_heads, window, *rotary
):  # noqa: ANN001, ANN002, ANN202, E501
    b, h, s, d = query.shape
    total = past_key.shape[2] + key.shape[2]
    return (
        query.new_empty((b, s, h, d)),
        key.new_empty((b, key.shape[1], total, d)),
        value.new_empty((b, value.shape[1], total, value.shape[3])),
    )


def _rotate(
    x: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Rotate-half rotary of ``x`` [b, heads, s, d] at ``positions`` [b, s] from caches [positions, d/2]."""
    cos = torch.cat([cos_cache[positions]] * 2, dim=-1).unsqueeze(1).to(x.dtype)
    sin = torch.cat([sin_cache[positions]] * 2, dim=-1).unsqueeze(1).to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def _attention_module(model: torch.nn.Module) -> torch.nn.Module | None:
    return next((m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "head_dim")), None)


def rotary_caches(model: torch.nn.Module, positions: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cos/sin caches [positions, head_dim/2] of ``model``'s rotary embedding when the op can apply
    it itself: one rotary module, rotate-half over the whole head (checked by running the model's
    own ``apply_rotary_pos_emb`` on random values), frequencies that do not change with the sequence
    length (:data:`STATIC_ROPE_TYPES`). ``None``: the model rotates as before, the op gets rotated
    queries/keys."""
    rotaries = [m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding")]
    attention = _attention_module(model)
    if len(rotaries) != 1 or attention is None:
        return None
    if getattr(rotaries[0], "rope_type", "default") not in STATIC_ROPE_TYPES:
        return None  # frequencies that change with the sequence length: no one cache fits
    apply = getattr(sys.modules[type(attention).__module__], "apply_rotary_pos_emb", None)
    head = int(getattr(attention, "head_dim"))  # noqa: B009  (an nn.Module attribute, untyped)
    if apply is None or head % 2:
        return None
    try:
        with torch.no_grad():
            probe = torch.zeros(1, 1, head)
            cos, sin = rotaries[0](probe, position_ids=torch.arange(positions)[None])
            cos, sin = cos[0].float(), sin[0].float()
            half = head // 2
            if cos.shape != (positions, head) or not torch.equal(cos[:, :half], cos[:, half:]):
                return None
            caches = (cos[:, :half].contiguous(), sin[:, :half].contiguous())
            gen = torch.Generator().manual_seed(0)
            q, k = torch.randn(2, 2, 5, head, generator=gen), torch.randn(2, 1, 5, head, generator=gen)
            pos = torch.tensor([[0, 1, 2, 3, 4], [3, 9, 10, 11, positions - 1]])
            got_q, got_k = apply(q, k, *rotaries[0](q, position_ids=pos))
            want_q, want_k = (_rotate(x, *caches, pos) for x in (q, k))
    except Exception:  # noqa: BLE001 - anything unexpected: keep the model's own rotary
        return None
    if not (torch.allclose(got_q, want_q, atol=1e-5) and torch.allclose(got_k, want_k, atol=1e-5)):
        return None
    return caches


@contextlib.contextmanager
def _deferred_rotary(model: torch.nn.Module) -> Iterator[None]:
    """Make the model's ``apply_rotary_pos_emb`` hand queries/keys on unrotated (the op rotates them)."""
    namespace = sys.modules[type(_attention_module(model)).__module__]
    original = namespace.apply_rotary_pos_emb

    def defer(
        q: torch.Tensor, k: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _state.deferred = True
        return q, k

    namespace.apply_rotary_pos_emb = defer  # type: ignore[attr-defined]  # the model's own module
    try:
        yield
    finally:
        namespace.apply_rotary_pos_emb = original  # type: ignore[attr-defined]


def split_cache(past: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """A ``DynamicCache`` holding ``past`` (per layer ``(key, value)``) whose ``update`` then returns the
    new keys/values as they are: the attention function finds the past here and hands both to the op."""
    from transformers import DynamicCache

    class _SplitCache(DynamicCache):
        split = False

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN202, E501
            if not self.split:
                return super().update(key_states, value_states, layer_idx, *args, **kwargs)
            return key_states, value_states

    cache = _SplitCache()
    for i, (k, v) in enumerate(past):
        cache.update(k, v, i)
    cache.split = True
    return cache


def _attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The attention function transformers calls while :func:`fused_attention` is active."""
    cache = getattr(_state, "cache", None)
    if cache is None:
        raise FusedAttentionError("the fused attention ran outside a capture")
    if (
        kwargs.get("softcap") is not None
        or kwargs.get("head_mask") is not None
        or kwargs.get("sinks") is not None
    ):
        raise FusedAttentionError("attention with soft-capping, head masks or sinks is not fused")
    layer = getattr(module, "layer_idx", None)
    if layer is None or layer >= len(cache.layers):
        raise FusedAttentionError(f"attention module {type(module).__name__} has no cache layer")
    past_key, past_value = cache.layers[layer].keys, cache.layers[layer].values
    bias, seqlens, total = _bias(query)
    deferred = getattr(_state, "deferred", False)
    rotary = (*_state.rotary, _state.position_ids) if deferred else (None, None, None)
    _state.deferred = False
    scale = float(scaling) if scaling is not None else query.shape[3] ** -0.5
    if query.shape[3] % 8:
        raise FusedAttentionError(f"head size {query.shape[3]}: GroupQueryAttention takes multiples of 8")
    window = int(kwargs.get("sliding_window") or -1)
    out, present_key, present_value = torch.ops.torchport.group_query_attention(
        query,
        key,
        value,
        past_key,
        past_value,
        bias,
        seqlens,
        total,
        scale,
        query.shape[1],
        key.shape[1],
        window,
        *rotary,
    )
    _state.presents[layer] = (present_key, present_value)
    return out, None


def _bias(query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The additive bias [b, 1, s, total] (the padding of the 2-D attention mask), ``seqlens_k`` [b]
    (total − 1 for every row) and the total length (int32 scalar), all from the mask alone: nothing
    in the graph reads the past's length, so a past of any length (a pre-allocated buffer the op
    writes into) gives the same result. Made once and shared by the layers."""
    if _state.biases:
        return _state.biases
    mask = _state.mask
    b, _, s, _ = query.shape
    total = mask.shape[1]
    bias = torch.where(mask.bool(), 0.0, MASKED).to(query.dtype)[:, None, None, :].expand(b, 1, s, total)
    length = torch.full((), total, dtype=torch.int32)
    _state.biases = (bias, (length - 1).expand(b), length)
    return _state.biases


def _no_mask(**kwargs: Any) -> None:
    """The mask function while capturing: none (the fused op masks causally, :func:`_bias` the padding,
    ``local_window_size`` the sliding window)."""
    return None


@contextlib.contextmanager
def fused_attention(
    model: torch.nn.Module,
    cache: Any,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Iterator[dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """Run ``model`` with the fused attention, ``cache`` (a :func:`split_cache`) and the 2-D
    ``attention_mask`` [b, total] the model is called with; with ``rotary`` (:func:`rotary_caches`)
    and ``position_ids`` the op applies the rotary embedding too. Yields the dict the presents land
    in, per layer."""
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(FUSED_ATTENTION, _attention)
    AttentionMaskInterface.register(FUSED_ATTENTION, _no_mask)
    configs: list[Any] = [
        c for c in (model.config, getattr(model.config, "text_config", None)) if c is not None
    ]
    before = [c._attn_implementation for c in configs]
    _state.cache, _state.presents, _state.biases, _state.mask = cache, {}, None, attention_mask
    _state.rotary, _state.position_ids, _state.deferred = rotary, position_ids, False
    defer = rotary is not None and position_ids is not None
    try:
        for config in configs:
            config._attn_implementation = FUSED_ATTENTION
        with _deferred_rotary(model) if defer else contextlib.nullcontext():
            yield _state.presents
    finally:
        for config, implementation in zip(configs, before, strict=True):
            config._attn_implementation = implementation
        _state.cache, _state.presents, _state.biases, _state.mask = None, {}, None, None
        _state.rotary, _state.position_ids, _state.deferred = None, None, False


#: the ONNX Runtime ops the translation emits: inputs (``?``: optional), outputs, attributes, and
#: the type constraints
_ORT_OPS = {
    "GroupQueryAttention": (
        "query:T key:T? value:T? past_key:T? past_value:T? seqlens_k:M total_sequence_length:M cos_cache:T? "
        "sin_cache:T? position_ids:P? attention_bias:T? head_sink:T?",
        "output:T present_key:T present_value:T",
        "num_heads:INT kv_num_heads:INT scale:FLOAT softcap:FLOAT local_window_size:INT do_rotary:INT "
        "rotary_interleaved:INT smooth_softmax:INT qk_output:INT",
    ),
    "RotaryEmbedding": (
        "input:T position_ids:P cos_cache:T sin_cache:T",
        "output:T",
        "interleaved:INT num_heads:INT rotary_embedding_dim:INT scale:FLOAT is_packed_batching:INT",
    ),
}
_ORT_TYPES = [
    ("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], ""),
    ("M", ["tensor(int32)"], ""),
    ("P", ["tensor(int64)"], ""),
]


@contextlib.contextmanager
def ort_op_schemas() -> Iterator[None]:
    """Declare ``com.microsoft.GroupQueryAttention`` and ``RotaryEmbedding`` to onnx while translating
    (torch.onnx builds nodes from schemas; onnx itself knows none of ONNX Runtime's), and withdraw
    them afterwards."""
    import onnx.reference  # noqa: F401 - built from the schemas once: before ours (a name in two domains fails it)
    import onnxscript  # noqa: F401 - imports onnx.reference too
    from onnx import defs

    optional = defs.OpSchema.FormalParameterOption.Optional
    added = []
    for op_type, (inputs, outputs, attributes) in _ORT_OPS.items():
        if defs.has(op_type, "com.microsoft"):
            continue
        formal = []
        for item in inputs.split():
            name, kind = item.split(":")
            option: dict[str, Any] = {"param_option": optional} if kind.endswith("?") else {}
            formal.append(defs.OpSchema.FormalParameter(name, kind.rstrip("?"), **option))
        schema = defs.OpSchema(
            op_type,
            "com.microsoft",
            1,
            inputs=formal,
            outputs=[defs.OpSchema.FormalParameter(*item.split(":")) for item in outputs.split()],
            type_constraints=_ORT_TYPES,
            attributes=[
                defs.OpSchema.Attribute(
                    n, getattr(defs.OpSchema.AttrType, t), required=n.endswith("num_heads")
                )
                for n, t in (item.split(":") for item in attributes.split())
            ],
        )
        defs.register_schema(schema)
        added.append(op_type)
    try:
        yield
    finally:
        for op_type in added:
            defs.deregister_schema(op_type, 1, "com.microsoft")


def rotary_in_attention(head_size: int) -> bool:
    """Whether ``GroupQueryAttention`` itself applies the rotary embedding (``do_rotary=1``, the cos/sin
    caches and ``position_ids`` as its inputs) for heads of ``head_size``: its CPU kernel rotates head
    sizes in multiples of 16; others get one ``RotaryEmbedding`` per query and key before it."""
    return head_size % 16 == 0


def onnx_translations(rotary_inside: bool = False) -> dict[Any, Any]:
    """torch.onnx ``custom_translation_table`` entries for the fused op (use inside :func:`ort_op_schemas`).

    With ``rotary_inside`` (:func:`rotary_in_attention`) a rotary layer's ``GroupQueryAttention`` takes
    the cos/sin caches and ``position_ids`` and rotates the queries/keys itself (``do_rotary=1``): one
    op instead of two ``RotaryEmbedding`` and the attention. Its kernel honours ``position_ids`` row by
    row in a decode step but rotates a multi-token first prompt from ``position_ids[0, 0]`` for every
    row, so such a graph takes a batched prompt only unpadded (equal lengths; the generate loop runs
    prompts of different lengths apart, ``extra.generation.rotary: attention``)."""
    from onnxscript import opset18 as op
    from onnxscript.values import Opset

    msft = Opset("com.microsoft", 1)

    def translate(  # type: ignore[no-untyped-def]  # noqa: ANN202  (onnxscript reads annotations as ONNX types)
        query,
        key,
        value,
        past_key,
        past_value,
        bias,
        seqlens,
        total,
        scale,
        num_heads,
        kv_heads,
        window,  # noqa: ANN001
        cos_cache=None,
        sin_cache=None,
        position_ids=None,  # noqa: ANN001
    ):
        flat = op.Constant(value_ints=[0, 0, -1])
        q = op.Reshape(op.Transpose(query, perm=[0, 2, 1, 3]), flat)
        k = op.Reshape(op.Transpose(key, perm=[0, 2, 1, 3]), flat)
        v = op.Reshape(op.Transpose(value, perm=[0, 2, 1, 3]), flat)
        inside = cos_cache is not None and rotary_inside  # the attention rotates at position_ids itself
        if cos_cache is not None and not inside:  # rotary at the given positions, one op per query and key
            q = msft.RotaryEmbedding(q, position_ids, cos_cache, sin_cache, num_heads=num_heads)
            k = msft.RotaryEmbedding(k, position_ids, cos_cache, sin_cache, num_heads=kv_heads)
        rotary = (cos_cache, sin_cache, position_ids) if inside else (None, None, None)
        out, present_key, present_value = msft.GroupQueryAttention(
            *(q, k, v, past_key, past_value, seqlens, total, *rotary, bias),
            num_heads=num_heads,
            kv_num_heads=kv_heads,
            scale=scale,
            local_window_size=window,
            **({"do_rotary": 1} if inside else {}),
        )
        out = op.Reshape(out, op.Constant(value_ints=[0, 0, num_heads, -1]))
        return out, present_key, present_value

    return {torch.ops.torchport.group_query_attention.default: translate}
