"""The pass framework and each ONNX pass, on real ONNX models and a real dynamo-exported tiny BERT."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.exporters._pkgutil import make_bert_package
from torchport.exporters import FunctionPass, PassPipeline
from torchport.exporters._onnx_passes import (
    Fp16Pass,
    Int8DynamicPass,
    Int8StaticPass,
    MergeMatMulsPass,
    OnnxscriptOptimizePass,
    OrtFusionsPass,
    OrtOfflinePass,
)
from torchport.exporters._passes import as_proto, op_counts
from torchport.runtimes import OptimizationError, ProviderError, UsageError


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(as_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _foldable_model() -> onnx.ModelProto:
    """y = x * (c1 + c2) with a no-op Cast: constant folding and cast removal have work to do."""
    c1 = numpy_helper.from_array(np.full((4,), 1.5, np.float32), "c1")
    c2 = numpy_helper.from_array(np.full((4,), 0.5, np.float32), "c2")
    nodes = [
        helper.make_node("Add", ["c1", "c2"], ["c"], name="add_consts"),
        helper.make_node("Cast", ["x"], ["x_same"], to=TensorProto.FLOAT, name="noop_cast"),
        helper.make_node("Mul", ["x_same", "c"], ["y"], name="mul"),
        helper.make_node("Relu", ["c"], ["unused"], name="dead"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [c1, c2],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.fixture(scope="module")
def bert_onnx(tmp_path_factory):
    _, pkg = make_bert_package(tmp_path_factory.mktemp("bert") / "pkg")
    return onnx.load(str(pkg.model_path()))


BERT_FEEDS = {
    "input_ids": np.random.default_rng(0).integers(0, 100, (2, 12)).astype(np.int64),
    "attention_mask": np.ones((2, 12), np.int64),
}


def test_pipeline_records_counts_and_fused_ops():
    def to_sigmoid(model):
        model = onnx.ModelProto.FromString(model.SerializeToString())
        for n in model.graph.node:
            if n.op_type == "Relu":
                n.op_type = "Sigmoid"
        return model, True

    result = PassPipeline([FunctionPass("noop", lambda m: (m, False)), FunctionPass("swap", to_sigmoid)])(
        _foldable_model()
    )
    noop, swap = result.records
    assert (noop.name, noop.modified, noop.nodes_before, noop.nodes_after) == ("noop", False, 4, 4)
    assert swap.modified and swap.fused == {"Sigmoid": 1} and swap.removed == {"Relu": 1}
    assert swap.seconds >= 0 and result.modified
    assert op_counts(result.model)["Sigmoid"] == 1
    assert "swap" in str(result) and result.to_list()[1]["fused"] == {"Sigmoid": 1}


def test_pipeline_disable_skips_and_rejects_unknown_names():
    def boom(model):
        raise AssertionError("must not run")

    result = PassPipeline([FunctionPass("boom", boom)], disable=["boom"])(_foldable_model())
    assert result.records[0].skipped and not result.modified
    with pytest.raises(UsageError, match=r"unknown pass 'nope'.*this pipeline has: boom"):
        PassPipeline([FunctionPass("boom", boom)], disable=["nope"])


def test_failing_pass_names_itself_and_how_to_skip_it():
    def broken(model):
        raise RuntimeError("kaputt")

    with pytest.raises(
        OptimizationError, match=r"pass 'broken' failed: RuntimeError: kaputt; skip it with --disable broken"
    ):
        PassPipeline([FunctionPass("broken", broken)])(_foldable_model())


def test_onnxscript_optimizer_folds_constants_and_removes_dead_code_and_noop_cast():
    model = _foldable_model()
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    out, modified = OnnxscriptOptimizePass()(model)
    proto = as_proto(out)
    ops = op_counts(proto)
    assert modified
    assert ops == {"Mul": 1}, ops  # Add of constants folded, Cast and dead Relu gone
    np.testing.assert_allclose(_run(proto, {"x": x})[0], x * 2.0)
    # a second run has nothing left to do
    assert OnnxscriptOptimizePass()(proto)[1] is False


def test_ort_fusions_fuse_attention_skip_layernorm_and_gelu_in_dynamo_bert(bert_onnx):
    before = op_counts(bert_onnx)
    assert not any(k.startswith("com.microsoft") for k in before)
    fusion = OrtFusionsPass()
    out, modified = fusion(onnx.ModelProto.FromString(bert_onnx.SerializeToString()))
    ops = op_counts(out)
    assert modified
    assert ops["com.microsoft.Attention"] == 2  # one per layer
    assert ops["com.microsoft.SkipLayerNormalization"] == 4  # two per layer
    assert (
        ops["com.microsoft.BiasGelu"] + ops["com.microsoft.Gelu"] + ops.get("com.microsoft.FastGelu", 0) == 2
    )
    assert fusion.details["attention"] == 2
    unpacked, _ = OrtFusionsPass(pack_qkv=False)(onnx.ModelProto.FromString(bert_onnx.SerializeToString()))
    un_ops = op_counts(unpacked)
    assert un_ops["com.microsoft.MultiHeadAttention"] == 2 and "com.microsoft.Attention" not in un_ops
    for a, b in zip(_run(unpacked, BERT_FEEDS), _run(bert_onnx, BERT_FEEDS), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert sum(ops.values()) < sum(before.values()) / 2
    for a, b in zip(_run(out, BERT_FEEDS), _run(bert_onnx, BERT_FEEDS), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_ort_offline_graph_is_provider_specific_and_recorded(bert_onnx):
    p = OrtOfflinePass("cpu", "extended")
    out, _ = p(bert_onnx)
    assert p.details["provider"] == "CPUExecutionProvider" and p.details["level"] == "extended"
    for a, b in zip(_run(out, BERT_FEEDS), _run(bert_onnx, BERT_FEEDS), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(
            OptimizationError, match=r"CUDAExecutionProvider is not available.*--disable ort_offline"
        ):
            OrtOfflinePass("cuda")(bert_onnx)
    with pytest.raises(
        ProviderError, match="unknown execution provider 'tpu'; use one of: coreml, cpu, cuda"
    ):
        OrtOfflinePass("tpu")  # the same provider table and error as sessions


def test_fp16_keeps_float32_io_and_sensitive_ops(bert_onnx):
    out, modified = Fp16Pass()(bert_onnx)
    assert modified
    assert [i.type.tensor_type.elem_type for i in out.graph.output] == [TensorProto.FLOAT] * 2
    big = [i for i in out.graph.initializer if numpy_helper.to_array(i).size > 100]
    assert big and all(i.data_type == TensorProto.FLOAT16 for i in big if i.data_type in (1, 10))
    # LayerNormalization stays in float32: its data input comes out of a Cast to float
    casts_to_float = {
        n.output[0] for n in out.graph.node if n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT
    }
    ln = [n for n in out.graph.node if n.op_type == "LayerNormalization"]
    assert ln and all(n.input[0] in casts_to_float for n in ln)
    ref = _run(bert_onnx, BERT_FEEDS)
    got = _run(out, BERT_FEEDS)
    for a, b in zip(got, ref, strict=True):
        assert a.dtype == np.float32
        cos = float(np.dot(a.ravel(), b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b))
        assert cos > 0.999


def test_duplicate_casts_of_older_float16_converters_are_merged():
    """onnxruntime < 1.32 writes one Cast per consumer of a shared float16 weight kept in float32:
    ONNX Runtime refuses that model; the fp16 pass drops the repeats."""
    from torchport.exporters._onnx_passes import drop_duplicate_nodes

    w = numpy_helper.from_array(np.ones(4, np.float16), "w")
    cast = helper.make_node(
        "Cast", ["w"], ["w_cast_to_fp32"], to=TensorProto.FLOAT, name="w_cast_to_fp32_node"
    )
    nodes = [
        cast,
        helper.make_node("Add", ["x", "w_cast_to_fp32"], ["a"]),
        cast,
        helper.make_node("Mul", ["a", "w_cast_to_fp32"], ["y"]),
    ]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("x", "y")]
    model = helper.make_model(
        helper.make_graph(nodes, "g", io[:1], io[1:], [w]), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 9
    with pytest.raises(Exception, match="same node name|more than one node|duplicate"):
        _run(model, {"x": np.ones(4, np.float32)})
    assert drop_duplicate_nodes(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Cast", "Add", "Mul"]
    np.testing.assert_array_equal(_run(model, {"x": np.ones(4, np.float32)})[0], np.full(4, 2.0, np.float32))


def test_int8_dynamic_and_static(bert_onnx):
    dyn, modified = Int8DynamicPass()(bert_onnx)
    assert modified and op_counts(dyn)["MatMulInteger"] >= 8
    rng = np.random.default_rng(1)
    samples = [
        {
            "input_ids": rng.integers(0, 100, (1, 8)).astype(np.int64),
            "attention_mask": np.ones((1, 8), np.int64),
        }
        for _ in range(4)
    ]
    p = Int8StaticPass(samples)
    static, _ = p(bert_onnx)
    ops = op_counts(static)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0 and p.details["calibration_samples"] == 4
    ref = _run(bert_onnx, BERT_FEEDS)
    for q in (dyn, static):
        out = _run(q, BERT_FEEDS)[0]
        cos = float(np.dot(out.ravel(), ref[0].ravel()) / np.linalg.norm(out) / np.linalg.norm(ref[0]))
        assert cos > 0.98
    with pytest.raises(UsageError, match="needs calibration samples"):
        Int8StaticPass([])


def _parallel_matmuls_model() -> onnx.ModelProto:
    """x feeds three linear layers (q, k, v: 8 → 8, 4, 4) and one of another input size (h: 6 → 5);
    `shared` is a weight two MatMuls use, which must stay as it is."""
    rng = np.random.default_rng(0)
    weights = {
        "wq": rng.standard_normal((8, 8)),
        "wk": rng.standard_normal((8, 4)),
        "wv": rng.standard_normal((8, 4)),
        "wh": rng.standard_normal((6, 5)),
        "shared": rng.standard_normal((5, 3)),
    }
    inits = [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()]
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
        helper.make_node("Relu", ["x"], ["x_relu"], name="relu"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v_proj"),
        helper.make_node("MatMul", ["h", "wh"], ["h5"], name="h_proj"),
        helper.make_node("MatMul", ["h5", "shared"], ["a"], name="a_proj"),
        helper.make_node("MatMul", ["h5", "shared"], ["b"], name="b_proj"),
    ]
    graph = helper.make_graph(
        nodes,
        "parallel",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", 6]),
        ],
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)
            for n, shape in [
                ("q", ["batch", "seq", 8]),
                ("k", ["batch", "seq", 4]),
                ("v", ["batch", "seq", 4]),
                ("x_relu", ["batch", "seq", 8]),
                ("a", ["batch", 3]),
                ("b", ["batch", 3]),
            ]
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_merge_matmuls_makes_one_product_per_shared_input():
    model = _parallel_matmuls_model()
    feeds = {
        "x": np.random.default_rng(1).standard_normal((2, 3, 8)).astype(np.float32),
        "h": np.random.default_rng(2).standard_normal((2, 6)).astype(np.float32),
    }
    before = _run(model, feeds)
    merge = MergeMatMulsPass()
    merged, modified = merge(model)
    assert modified and merge.details == {"merged": 1, "packed_qkv": 0}  # no attention reads q/k/v here
    counts = op_counts(merged)
    # q/k/v → one MatMul + Split; h_proj alone and the two users of `shared` stay
    assert counts["MatMul"] == 4 and counts["Split"] == 1
    assert {"wq", "wk", "wv"}.isdisjoint(i.name for i in merged.graph.initializer)
    onnx.checker.check_model(merged)
    for want, got in zip(before, _run(merged, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    again, modified = MergeMatMulsPass()(merged)
    assert not modified
