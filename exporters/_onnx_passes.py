"""The ONNX passes: onnxscript optimizer, ORT transformer fusions, ORT offline graph, fp16, int8.

Every pass follows :mod:`torchport.exporters._passes`: a ``name`` and ``__call__(model) ->
(model, modified)``. The pass names are what ``--disable`` takes:

============== ==============================================================================
name           what it does
============== ==============================================================================
``optimize``   onnxscript / onnx-ir optimizer: constant folding, dead code, redundant casts and
               reshapes (``no_op_cast``, ``cast_cast``, ``reshape_reshape``, ...)
``ort_fusions`` onnxscript's ORT fusion rewriter (``optimize_for_ort``): Attention /
               MultiHeadAttention, SkipLayerNormalization, (Bias)Gelu, RotaryEmbedding, RMSNorm...
               into ``com.microsoft`` ops
``merge_matmuls`` one ``MatMul`` (+ ``Split``) for the linear layers that read the same input
               (a decoder's query/key/value and gate/up projections)
``ort_offline`` ONNX Runtime's own graph optimizer run offline for one execution provider and
               saved (``SessionOptions.optimized_model_filepath``), so sessions start fast
``fp16``       float16 weights and compute; float32 inputs/outputs and numerically sensitive ops
               (LayerNorm, Softmax, ReduceMean, Pow, Exp, ...) kept in float32
``int8_dynamic`` int8 weights, activations quantized at run time (``quantize_dynamic``; decoders:
               block-wise ``MatMulNBits`` with the output head kept float32)
``int8_static`` int8 QDQ with activation ranges calibrated on sample inputs (``quantize_static``)
``int4``       weight-only 4-bit ``MatMulNBits`` (block-wise scales, symmetric or asymmetric;
               output head and, as an option, embeddings as ``GatherBlockQuantized``)
============== ==============================================================================
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from torchport.exporters._onnx_files import EXTERNAL_DATA_THRESHOLD, save_onnx, weights_nbytes
from torchport.exporters._ort_logs import quiet_ort_logs
from torchport.exporters._passes import AnyModel, as_ir, as_proto, op_counts
from torchport.runtimes import OptimizationError, UsageError
from torchport.runtimes._errors import first_line
from torchport.runtimes._providers import normalize_provider

#: ops kept in float32 by the fp16 pass (numerically sensitive: reductions, exponentials, norms)
FP16_KEEP_FLOAT32_OPS: tuple[str, ...] = (
    "LayerNormalization",
    "SkipLayerNormalization",
    "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "Softmax",
    "LogSoftmax",
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceLogSumExp",
    "Pow",
    "Exp",
    "Log",
    "Sqrt",
    "Reciprocal",
    "Erf",
    "Range",
    "CumSum",
    "InstanceNormalization",
    "GroupNormalization",
    "BatchNormalization",
    "Resize",
    "Upsample",
    "TopK",
    "NonMaxSuppression",
    "RandomNormalLike",
    "RandomUniformLike",
    "EyeLike",
)

#: ORT graph optimization levels by name
ORT_LEVELS = ("basic", "extended", "all")


def _fingerprint(model: AnyModel) -> tuple[Any, ...]:
    if isinstance(model, onnx.ModelProto):
        inits = tuple(sorted(i.name for i in model.graph.initializer))
        outs = tuple(v for n in model.graph.node for v in n.output)
    else:
        inits = tuple(sorted(model.graph.initializers))
        outs = tuple(v.name for n in model.graph for v in n.outputs)
    return tuple(sorted(op_counts(model).items())), inits, outs


# ---------------------------------------------------------------- graph cleanup / fusions


class OnnxscriptOptimizePass:
    """onnxscript optimizer: constant folding, dead-code elimination, redundant cast/reshape removal.

    Example:
        >>> model, modified = OnnxscriptOptimizePass()(onnx.load("model.onnx"))  # doctest: +SKIP
    """

    name = "optimize"

    def __call__(self, model: AnyModel) -> tuple[ir.Model, bool]:
        import onnxscript.optimizer
        from onnxscript.rewriter import rewrite
        from onnxscript.rewriter.rules import common

        model = as_ir(model)
        before = _fingerprint(model)
        onnxscript.optimizer.optimize(model)
        rules = [
            common.no_op_cast_rule,
            common.cast_cast_rule,
            common.reshape_reshape_rule,
            common.squeeze_reshape_1d_rule,
        ]
        no_op = getattr(common, "no_op_reshape_rule", None) or getattr(
            common, "no_op_dynamic_reshape_rule", None
        )
        if no_op is not None:
            rules.append(no_op)
        rewrite(model, rules)
        collapse_reshapes(model)
        onnxscript.optimizer.remove_unused_nodes(model)
        return model, _fingerprint(model) != before


def _same_dim(a: Any, b: Any) -> bool:
    """Two dims known to be equal: the same integer, or the same named symbol."""
    if isinstance(a, int) or isinstance(b, int):
        return a == b
    return a is not None and b is not None and a.value is not None and a.value == b.value


def _keep_shape_through(node: ir.Node) -> None:
    """Give the output of an ONNX Runtime op that keeps its first input's shape (``RotaryEmbedding``,
    ``GroupQueryAttention`` with separate query/key/value) that shape, when the exporter left it unknown."""
    keeps = node.op_type == "RotaryEmbedding" or (
        node.op_type == "GroupQueryAttention" and len(node.inputs) > 1
    )
    if node.domain != "com.microsoft" or not keeps or node.inputs[0] is None:
        return
    if node.outputs[0].shape is None and node.inputs[0].shape is not None:
        node.outputs[0].shape = node.inputs[0].shape


def collapse_reshapes(model: ir.Model) -> int:
    """``Reshape(Reshape(x, s1), s2)`` → ``Reshape(x, s2)``, and a ``Reshape`` (or two in a row) whose
    result has the shape of what went in → what went in; returns how many were rewritten.

    onnxscript's ``reshape_reshape`` rule leaves a second shape that copies dims (``0``) alone; here
    it is rewritten when the copied dims are known to be the same in ``x`` and in the middle (the
    exporter's symbolic shapes). Attention translated per head makes such pairs: a view to
    [batch, seq, heads, head_dim] and back to [batch, seq, hidden], four per decoder layer.
    """
    count = 0
    graph_outputs = set(model.graph.outputs)
    for node in list(model.graph):
        _keep_shape_through(node)
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        allowzero = node.attributes.get("allowzero")
        middle, shape = node.inputs
        previous = middle.producer() if middle is not None else None
        constant = shape.const_value if shape is not None else None
        target = [int(t) for t in constant.numpy().reshape(-1)] if constant is not None else None
        if (
            target is not None
            and not (allowzero is not None and allowzero.value)  # 0 copies a dim (not a literal 0)
            and previous is not None
            and previous.op_type == "Reshape"
            and previous.domain in ("", "ai.onnx")
        ):
            source = previous.inputs[0]
            src_shape = source.shape if source is not None else None
            mid_shape = middle.shape if middle is not None else None
            if source is not None and src_shape is not None and mid_shape is not None:
                copied = [i for i, t in enumerate(target) if t == 0]
                if all(
                    i < len(src_shape) and i < len(mid_shape) and _same_dim(src_shape[i], mid_shape[i])
                    for i in copied
                ):
                    node.replace_input_with(0, source)
                    count += 1
        out = node.outputs[0]
        if out in graph_outputs or out.shape is None:
            continue
        # back to the shape of its input, or of the input of the reshape before it
        sources = [node.inputs[0]]
        before = sources[0].producer() if sources[0] is not None else None
        if before is not None and before.op_type == "Reshape" and before.domain in ("", "ai.onnx"):
            sources.append(before.inputs[0])
        for source in sources:
            if (
                source is not None
                and source.shape is not None
                and len(source.shape) == len(out.shape)
                and all(_same_dim(a, b) for a, b in zip(source.shape, out.shape, strict=True))
            ):
                out.replace_all_uses_with(source)
                count += 1
                break
    return count


class OrtFusionsPass:
    """Transformer fusions for ONNX Runtime via onnxscript's ``optimize_for_ort``.

    Fuses attention (``com.microsoft.Attention`` / ``MultiHeadAttention``), skip + layer norm,
    GELU / bias-GELU, rotary embeddings and RMS norm. ``details`` holds the count of each fusion.

    Args:
        pack_qkv: pack the Q, K and V projections into one ``Attention`` op (fastest in float).
            ``False`` stops at ``MultiHeadAttention`` with separate Q/K/V MatMuls, which int8
            dynamic quantization can quantize (ONNX Runtime's quantizer skips an ``Attention`` with
            ``qkv_hidden_sizes`` or an attention bias): the graph the int8 variant starts from.
    """

    name = "ort_fusions"

    def __init__(self, pack_qkv: bool = True) -> None:
        self.pack_qkv = pack_qkv
        self.details: dict[str, Any] = {}  # the count of each fusion, or why the fused graph was refused

    def __call__(self, model: AnyModel) -> tuple[ir.Model, bool]:
        import onnxscript.rewriter.ort_fusions._core as core

        model = as_ir(model)
        before = _fingerprint(model)
        original = core.fuse_attention
        if not self.pack_qkv:  # optimize_for_ort has no switch for the last (QKV-packing) step
            core.fuse_attention = lambda model, debug=False: 0
        # checked (and kept to fall back on) below the external-data size only: a copy of a
        # multi-GB graph and an in-memory session of it cost too much
        checked = weights_nbytes(model) <= EXTERNAL_DATA_THRESHOLD
        unfused = as_proto(model) if checked else None
        try:
            model, counts = core.optimize_for_ort(model)
        finally:
            core.fuse_attention = original
        self.details = {k: int(v) for k, v in counts.items() if v}
        modified = _fingerprint(model) != before
        refusal = _ort_refuses(model) if modified and unfused is not None else None
        if refusal is not None and unfused is not None:  # a fusion rule broke the graph: keep the old one
            self.details = {"refused_by_onnxruntime": refusal, "kept": "the unfused graph"}
            return as_ir(unfused), False
        return model, modified


def _ort_refuses(model: AnyModel) -> str | None:
    """ONNX Runtime's first line of refusal when it cannot load ``model`` as sessions load it (with its
    default graph optimizations, which can break on a fused graph that is valid ONNX), else ``None``."""
    import onnxruntime as ort

    proto = as_proto(model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    try:
        ort.InferenceSession(proto.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises untyped errors; the reason is reported
        return first_line(e)
    return None


class OrtOfflinePass:
    """Run ONNX Runtime's graph optimizer offline for one execution provider and keep its output.

    The saved graph contains provider-specific fused ops (at ``extended``/``all``), so it is only
    valid for that provider; :func:`optimize_package` records the provider in the manifest
    (``extra["ort_offline"]``). ``all`` also applies layout transforms tied to the CPU it ran on.

    Args:
        provider: ``"cpu"``, ``"cuda"`` or ``"tensorrt"`` (or the full ORT provider name).
        level: ``"basic"``, ``"extended"`` (default) or ``"all"``.
    """

    name = "ort_offline"

    def __init__(self, provider: str = "cpu", level: str = "extended") -> None:
        if level not in ORT_LEVELS:
            raise UsageError(f"unknown ORT optimization level {level!r}; use one of: {', '.join(ORT_LEVELS)}")
        self.provider = normalize_provider(provider)
        self.level = level
        self.details: dict[str, Any] = {}

    def __call__(self, model: AnyModel) -> tuple[onnx.ModelProto, bool]:
        import onnxruntime as ort

        if self.provider not in ort.get_available_providers():
            raise OptimizationError(
                f"execution provider {self.provider} is not available in this onnxruntime "
                f"({', '.join(ort.get_available_providers())}); pass --provider cpu or --disable {self.name}"
            )
        proto = as_proto(model)
        level = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.level]
        with tempfile.TemporaryDirectory(prefix="torchport-ort-") as tmp:
            src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
            save_onnx(proto, src)
            so = ort.SessionOptions()
            so.graph_optimization_level = level
            so.optimized_model_filepath = str(dst)
            so.log_severity_level = 3
            if _is_large(proto):
                so.add_session_config_entry(
                    "session.optimized_model_external_initializers_file_name", "out.onnx.data"
                )
            ort.InferenceSession(str(src), so, providers=[self.provider])
            out = onnx.load(str(dst))
        self.details = {"provider": self.provider, "level": self.level, "onnxruntime": ort.__version__}
        return out, _fingerprint(out) != _fingerprint(proto)


# ---------------------------------------------------------------- precision


class Fp16Pass:
    """Convert float32 weights and compute to float16.

    Inputs and outputs stay float32 (``keep_io_types``) unless ``keep_io_types=False``; the ops in
    ``keep_float32_ops`` (default :data:`FP16_KEEP_FLOAT32_OPS`) run in float32 with casts around.
    Uses ``onnxruntime.transformers.float16`` (ships inside onnxruntime).
    """

    name = "fp16"

    def __init__(self, keep_io_types: bool = True, keep_float32_ops: Sequence[str] = FP16_KEEP_FLOAT32_OPS):
        self.keep_io_types = keep_io_types
        self.keep_float32_ops = list(keep_float32_ops)

    def __call__(self, model: AnyModel) -> tuple[onnx.ModelProto, bool]:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        proto = as_proto(model)
        out = convert_float_to_float16(
            proto,
            keep_io_types=self.keep_io_types,
            op_block_list=self.keep_float32_ops,
            disable_shape_infer=_is_large(proto),
        )
        drop_duplicate_nodes(out)
        return out, True


def drop_duplicate_nodes(model: onnx.ModelProto) -> int:
    """Remove nodes that repeat an earlier node exactly (same op, inputs, outputs and attributes).

    onnxruntime's float16 converter before 1.32 adds one ``<init>_cast_to_fp32_node`` Cast per
    consumer of a shared float16 initializer, all writing the same output: ONNX Runtime then
    refuses the model ("two nodes with same node name"). Returns how many nodes were dropped.

    Example:
        >>> from onnx import helper
        >>> cast = helper.make_node("Cast", ["w"], ["w32"], to=1, name="w_cast")
        >>> g = helper.make_graph([cast, cast], "g", [], [])
        >>> drop_duplicate_nodes(helper.make_model(g))
        1
    """
    seen: set[bytes] = set()
    keep = []
    for node in model.graph.node:
        key = node.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            keep.append(node)
    dropped = len(model.graph.node) - len(keep)
    if dropped:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return dropped


#: ops ``int8_dynamic`` quantizes by default: ORT's dynamic int8 kernels pay off for matrix products
#: (MatMulInteger / DynamicQuantizeMatMul, QAttention) but ConvInteger is slower than float Conv,
#: so convolutions are left in float (use ``int8_static`` for CNNs)
INT8_DYNAMIC_OPS: tuple[str, ...] = ("MatMul", "Gemm", "Attention", "LSTM", "GRU", "EmbedLayerNormalization")


#: int8 dynamic of a text-generation decoder: weight and activation scales per 32 input rows, the
#: output head quantized too (onnxruntime-genai's int8 recipe: the float32 head of a 32000-token
#: vocabulary was most of a small decoder's bytes read per token)
DECODER_INT8_BLOCK_SIZE = 32

#: block sizes ``MatMulNBits`` takes (a power of two, at least 16)
NBITS_BLOCK_SIZES: tuple[int, ...] = (16, 32, 64, 128, 256)


def weight_only_quantize(
    proto: onnx.ModelProto,
    *,
    bits: int,
    block_size: int,
    symmetric: bool,
    exclude: Sequence[str] = (),
    embeddings: bool = False,
) -> onnx.ModelProto:
    """Block-wise weight-only quantization with ONNX Runtime's ``MatMulNBitsQuantizer``.

    Every ``MatMul`` with a constant 2-D weight (but the nodes named in ``exclude``) becomes a
    ``com.microsoft.MatMulNBits`` of ``bits`` bits, one scale (and with ``symmetric=False`` one zero
    point) per ``block_size`` input rows of each output column, ``accuracy_level`` 4 (the input is
    quantized to int8 per block at run time: int8 dot products); with ``embeddings`` every ``Gather``
    of a constant table becomes a ``GatherBlockQuantized``.
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    work = onnx.ModelProto()
    work.CopyFrom(proto)  # the quantizer rewrites the model it is given
    # the quantizer logs every node it looks at; an all-zero block (a padding embedding row) divides
    # 0 by a 0 scale before np.where picks the zero point, which numpy warns about
    with quiet_ort_logs(), np.errstate(divide="ignore", invalid="ignore"):
        quantizer = MatMulNBitsQuantizer(
            work,
            bits=bits,
            block_size=block_size,
            is_symmetric=symmetric,
            accuracy_level=4,
            nodes_to_exclude=list(exclude),
            op_types_to_quantize=("MatMul", "Gather") if embeddings else ("MatMul",),
            quant_axes=(("MatMul", 0), ("Gather", 1)),
        )
        quantizer.process()
    return quantizer.model.model


class Int8DynamicPass:
    """int8 weights, activations quantized at run time.

    Two recipes:

    - default (``quantize_dynamic``): the ops in :data:`INT8_DYNAMIC_OPS` (matrix products, fused
      attention, RNNs) get int8 weights (per tensor, or per output channel with ``per_channel``)
      and their input quantized per tensor at run time; convolutions stay in float32 because
      ONNX Runtime's dynamic ConvInteger is slower than its float Conv (quantize CNNs with
      ``int8_static``).
    - ``block_size`` (the decoder recipe, text-generation exports): every linear layer's weight
      (a ``MatMul`` with a constant 2-D weight) becomes int8 with one scale per ``block_size``
      input rows of each output column (``MatMulNBits``, 8 bits, symmetric), and its input is
      quantized per block of the same size at run time (``accuracy_level`` 4: int8 dot products).
      The output head (the ``MatMul`` that makes ``logits``) is quantized too (onnxruntime-genai's
      int8 recipe; ``keep_head=True`` keeps it float32); embeddings (``Gather``) and the
      attention's score products (no constant weight) stay float32. Per-tensor activation scales
      are what flip a decoder's greedy tokens: one outlier in a hidden state coarsens the whole
      row; per-block scales keep the logits' error about half as large at the same speed.
    """

    name = "int8_dynamic"

    def __init__(
        self,
        per_channel: bool = False,
        op_types: Sequence[str] | None = INT8_DYNAMIC_OPS,
        block_size: int | None = None,
        keep_head: bool = False,
    ) -> None:
        self.per_channel = per_channel
        self.op_types = list(op_types) if op_types else None
        self.block_size = block_size
        self.keep_head = keep_head
        self.details: dict[str, Any] = {}

    def __call__(self, model: AnyModel) -> tuple[onnx.ModelProto, bool]:
        proto = as_proto(model)  # the quantizers run shape inference themselves
        if self.block_size:
            return self._blockwise(proto)
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out = _quantize_via_files(
            proto,
            lambda src, dst: quantize_dynamic(
                src,
                dst,
                weight_type=QuantType.QInt8,
                per_channel=self.per_channel,
                op_types_to_quantize=self.op_types,
                use_external_data_format=_is_large(proto),
            ),
        )
        self.details = {"op_types": self.op_types or "all"}
        return out, _fingerprint(out) != _fingerprint(proto)

    def _blockwise(self, proto: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
        head = output_head(proto, "logits") if self.keep_head else None
        out = weight_only_quantize(
            proto,
            bits=8,
            block_size=int(self.block_size or 32),
            symmetric=True,
            exclude=[head] if head else [],
        )
        self.details = {
            "recipe": "MatMulNBits int8 weights, block-wise activations",
            "block_size": self.block_size,
            "kept_float32": ([head] if head else [])
            + ["Gather (embeddings)", "MatMul without constant weight"],
        }
        return out, _fingerprint(out) != _fingerprint(proto)


class Int4Pass:
    """Weight-only 4-bit quantization: ``MatMulNBits`` (ONNX Runtime's ``MatMulNBitsQuantizer``).

    Every linear layer's weight (a ``MatMul`` with a constant 2-D weight) becomes 4-bit with one
    scale per ``block_size`` input rows of each output column (``symmetric``: no zero point;
    asymmetric: a 4-bit zero point per block too), its input quantized to int8 per block at run
    time (``accuracy_level`` 4). ``head=False`` keeps the output head (the ``MatMul`` that makes
    ``logits``) in float32; ``embeddings=True`` turns the embedding tables (``Gather`` of a constant)
    into ``GatherBlockQuantized`` (4-bit rows, the same block size). The defaults are
    onnxruntime-genai's CPU int4: block 32, symmetric, head quantized, embeddings float32.

    Args:
        block_size: input rows per scale, one of :data:`NBITS_BLOCK_SIZES`.
        symmetric: symmetric blocks (no zero points); ``False``: asymmetric.
        head: quantize the output head too.
        embeddings: quantize the embedding tables.

    Raises:
        UsageError: a block size ``MatMulNBits`` does not take.

    Example:
        >>> Int4Pass(block_size=64).details
        {}
        >>> Int4Pass(block_size=48)
        Traceback (most recent call last):
        ...
        torchport.runtimes._errors.UsageError: --int4-block-size 48 is not one MatMulNBits takes; use one of: 16, 32, 64, 128, 256
    """

    name = "int4"

    def __init__(
        self, block_size: int = 32, symmetric: bool = True, head: bool = True, embeddings: bool = False
    ) -> None:
        if block_size not in NBITS_BLOCK_SIZES:
            raise UsageError(
                f"--int4-block-size {block_size} is not one MatMulNBits takes; use one of: "
                f"{', '.join(map(str, NBITS_BLOCK_SIZES))}"
            )
        self.block_size = block_size
        self.symmetric = symmetric
        self.head = head
        self.embeddings = embeddings
        self.details: dict[str, Any] = {}

    def __call__(self, model: AnyModel) -> tuple[onnx.ModelProto, bool]:
        proto = as_proto(model)
        head = None if self.head else output_head(proto, "logits")
        out = weight_only_quantize(
            proto,
            bits=4,
            block_size=self.block_size,
            symmetric=self.symmetric,
            exclude=[head] if head else [],
            embeddings=self.embeddings,
        )
        counts = {k.split(".")[-1]: v for k, v in op_counts(out).items()}
        self.details = {
            "recipe": "MatMulNBits int4 weights, block-wise int8 activations",
            "block_size": self.block_size,
            "symmetric": self.symmetric,
            "head": self.head,
            "embeddings": self.embeddings,
            "matmulnbits": counts.get("MatMulNBits", 0),
            "gather_block_quantized": counts.get("GatherBlockQuantized", 0),
        }
        if not counts.get("MatMulNBits") and not counts.get("GatherBlockQuantized"):
            raise OptimizationError(
                "int4 found no MatMul with a constant 2-D weight to quantize; the model has no linear "
                "layers int4 applies to (drop --int4)"
            )
        return out, True


class MergeMatMulsPass:
    """One ``MatMul`` (+ ``Split``) for the linear layers that read the same input.

    Every group of ``MatMul`` nodes with the same first input and constant 2-D weights of the same
    input size and dtype becomes one ``MatMul`` with the weights side by side, and a ``Split`` of
    its last axis gives each old output back: a decoder's query/key/value projections, and its
    gate/up projections, become one matrix product each. A decode step's matrix products read a
    single row, so one wide product instead of two or three saves their kernel launches and reads
    the input once. Column by column the result is the same product (bit for bit on the CPU);
    int8 block-wise scales are per column, so quantizing after merging gives the same weights.
    Where the three parts of a merged product are exactly a ``GroupQueryAttention``'s query, key and
    value (in that order, read by nothing else), the attention takes the packed product itself (its
    packed-QKV form, as onnxruntime-genai's graphs) and the ``Split`` goes. ``details["merged"]``
    counts the groups, ``details["packed_qkv"]`` the attentions that read a packed product.

    Example:
        >>> model, modified = MergeMatMulsPass()(onnx.load("model.onnx"))  # doctest: +SKIP
    """

    name = "merge_matmuls"

    def __init__(self) -> None:
        self.details: dict[str, Any] = {}

    def __call__(self, model: AnyModel) -> tuple[onnx.ModelProto, bool]:
        from onnx import numpy_helper

        proto = as_proto(model)
        graph = proto.graph
        inits = {i.name: i for i in graph.initializer}
        uses: dict[str, int] = {}
        for node in graph.node:
            for name in node.input:
                uses[name] = uses.get(name, 0) + 1
        groups: dict[tuple[str, int, int], list[int]] = {}
        for index, node in enumerate(graph.node):
            if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
                continue
            weight = inits.get(node.input[1])
            if weight is None or len(weight.dims) != 2 or uses.get(node.input[1]) != 1:
                continue
            groups.setdefault((node.input[0], weight.dims[0], weight.data_type), []).append(index)
        placed: dict[int, list[onnx.NodeProto]] = {}  # node index -> the merged nodes that go before it
        dropped: set[int] = set()
        drop_inits: set[str] = set()
        new_inits: list[onnx.TensorProto] = []
        for (source, _, _), indices in groups.items():
            if len(indices) < 2:
                continue
            nodes = [graph.node[i] for i in indices]
            weights = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
            stem = f"{nodes[0].name or nodes[0].output[0]}_merged"
            new_inits.append(numpy_helper.from_array(np.concatenate(weights, axis=1), f"{stem}.weight"))
            sizes = np.asarray([w.shape[1] for w in weights], np.int64)
            new_inits.append(numpy_helper.from_array(sizes, f"{stem}.split"))
            placed[indices[0]] = [
                onnx.helper.make_node("MatMul", [source, f"{stem}.weight"], [f"{stem}.out"], name=stem),
                onnx.helper.make_node(
                    "Split",
                    [f"{stem}.out", f"{stem}.split"],
                    [n.output[0] for n in nodes],
                    name=f"{stem}.split",
                    axis=-1,
                ),
            ]
            dropped.update(indices)
            drop_inits.update(n.input[1] for n in nodes)
        self.details = {"merged": len(placed)}
        if not placed:
            return proto, False
        nodes_out: list[onnx.NodeProto] = []
        for index, node in enumerate(graph.node):
            nodes_out.extend(placed.get(index, ()))
            if index not in dropped:
                nodes_out.append(node)
        packed = _pack_attention_inputs(nodes_out, {o.name for o in graph.output})
        self.details["packed_qkv"] = len(packed)
        drop_inits.update(packed)
        kept = [t for t in graph.initializer if t.name not in drop_inits]
        del graph.node[:]
        graph.node.extend(nodes_out)
        del graph.initializer[:]
        graph.initializer.extend(kept + new_inits)
        return proto, True


def _pack_attention_inputs(nodes: list[onnx.NodeProto], graph_outputs: set[str]) -> list[str]:
    """In place: each ``GroupQueryAttention`` whose query/key/value are the three outputs of one
    ``Split`` (read by nothing else) takes the Split's input as packed QKV; the Split is removed.
    Returns the split-size initializers no longer used."""
    uses: dict[str, int] = {}
    for node in nodes:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    splits = {tuple(n.output): n for n in nodes if n.op_type == "Split" and len(n.output) == 3}
    gone: list[onnx.NodeProto] = []
    for node in nodes:
        if node.op_type != "GroupQueryAttention" or node.domain != "com.microsoft" or len(node.input) < 3:
            continue
        split = splits.get(tuple(node.input[:3]))
        if split is None or any(uses.get(o) != 1 or o in graph_outputs for o in split.output):
            continue
        node.input[0], node.input[1], node.input[2] = split.input[0], "", ""
        gone.append(split)
    for split in gone:
        nodes.remove(split)
    return [s.input[1] for s in gone if len(s.input) > 1 and uses.get(s.input[1]) == 1]


def output_head(proto: onnx.ModelProto, output: str) -> str | None:
    """The name of the ``MatMul`` / ``Gemm`` that makes graph output ``output`` (through at most a few
    shape ops: Reshape, Cast...), or ``None``."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    node = producer.get(output)
    for _ in range(6):
        if node is None:
            return None
        if node.op_type in ("MatMul", "Gemm"):
            return node.name
        if not node.input:
            return None
        node = producer.get(node.input[0])
    return None


class NpzCalibrationReader:
    """A ``CalibrationDataReader`` over a list of input dicts (one dict per sample)."""

    def __init__(self, samples: Sequence[Mapping[str, np.ndarray]]) -> None:
        self.samples = list(samples)
        self._it: Iterator[Mapping[str, np.ndarray]] = iter(self.samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        nxt = next(self._it, None)
        return dict(nxt) if nxt is not None else None

    def rewind(self) -> None:
        self._it = iter(self.samples)


class Int8StaticPass:
    """int8 QDQ static quantization with activation ranges calibrated on sample inputs.

    uint8 activations (asymmetric, MinMax-calibrated) and int8 weights, per channel: the U8S8
    format ONNX Runtime's x86 kernels run fastest.

    Args:
        samples: calibration inputs, one ``{input name: array}`` dict per sample.
        per_channel: per-channel weight scales (better accuracy for convolutions; default True).
    """

    name = "int8_static"

    def __init__(self, samples: Sequence[Mapping[str, np.ndarray]], per_channel: bool = True) -> None:
        if not samples:
            raise UsageError(
                "static int8 quantization needs calibration samples; pass --calibration FILE.npz"
            )
        self.samples = list(samples)
        self.per_channel = per_channel
        self.details: dict[str, Any] = {}

    def __call__(self, model: AnyModel) -> tuple[onnx.ModelProto, bool]:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        proto = as_proto(model)  # quantize_static runs shape inference itself
        out = _quantize_via_files(
            proto,
            lambda src, dst: quantize_static(
                src,
                dst,
                NpzCalibrationReader(self.samples),
                quant_format=QuantFormat.QDQ,
                per_channel=self.per_channel,
                # U8S8: uint8 activations, int8 weights: ONNX Runtime's fast x86 format (S8S8 QDQ ran
                # ~3x slower on a ResNet-18-style CNN on AVX-512 VNNI)
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                use_external_data_format=_is_large(proto),
            ),
        )
        self.details = {"calibration_samples": len(self.samples)}
        return out, True


def _is_large(proto: onnx.ModelProto) -> bool:
    """Weights beyond the external-data threshold (protobuf's 2 GiB limit is near)."""
    return weights_nbytes(proto) > EXTERNAL_DATA_THRESHOLD


def _quantize_via_files(proto: onnx.ModelProto, quantize: Callable[[Path, Path], None]) -> onnx.ModelProto:
    """Run an ONNX Runtime quantizer (which works on files) on ``proto``; return the quantized model."""
    with tempfile.TemporaryDirectory(prefix="torchport-q-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        save_onnx(proto, src)
        with quiet_ort_logs():  # its advice to pre-process, its sessions' C++ warnings
            quantize(src, dst)
        return onnx.load(str(dst))


#: every ONNX pass class by name, in pipeline order (names and help: ``_registries.ONNX_PASSES``)
PASS_CLASSES: dict[str, type] = {
    cls.name: cls
    for cls in (
        OnnxscriptOptimizePass,
        OrtFusionsPass,
        MergeMatMulsPass,
        OrtOfflinePass,
        Fp16Pass,
        Int8DynamicPass,
        Int8StaticPass,
        Int4Pass,
    )
}
