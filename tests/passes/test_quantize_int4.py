import logging

import numpy as np
import onnx_ir as ir
import pytest
from onnxruntime.quantization.matmul_nbits_quantizer import (
    DefaultWeightOnlyQuantConfig,
    MatMulNBitsQuantizer,
)

from qgraph.bundle import Bundle
from qgraph.errors import PipelineError
from qgraph.examples import example_audio
from qgraph.manager import run_pipeline
from qgraph.passes._blockquant import block_quantize, fake_quantize
from qgraph.passes.inline_lm_head import InlineLmHead
from qgraph.passes.quantize_int4 import QuantizeMatMulNBits
from qgraph.pipeline import expand
from qgraph.registry import default_registry
from qgraph.runtime import AsrSession
from qgraph.testing import check_pass, model_from_text, op_types
from tests.passes.bundles import as_initializers, decoder_bundle

# K=80 is not a multiple of any block size (ORT pads the last block); W3 is stored
# column-major, so its numpy() view is not row-major (the kernel must get row-major bytes).
THREE_MATMULS = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,5,80] x, float[80,64] W1, float[64,48] W2, float[80,64] W3)
    => (float[2,5,48] y, float[2,5,64] z) {
    h = MatMul (x, W1)
    a = Relu (h)
    y = MatMul (a, W2)
    z = MatMul (x, W3)
}
"""


def three_matmuls() -> ir.Model:
    rng = np.random.default_rng(0)
    model = model_from_text(THREE_MATMULS)
    arrays = {
        "W1": rng.standard_normal((80, 64)).astype(np.float32),
        "W2": rng.standard_normal((64, 48)).astype(np.float32),
        "W3": np.asfortranarray(rng.standard_normal((80, 64)).astype(np.float32)),
    }
    return as_initializers(model, arrays)


def ort_quantized(model: ir.Model, bits: int, block: int, sym: bool, level: int) -> ir.Model:
    config = DefaultWeightOnlyQuantConfig(
        block_size=block, is_symmetric=sym, accuracy_level=level, bits=bits
    )
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(ir.to_proto(model), algo_config=config)
    quantizer.process()
    return ir.from_proto(quantizer.model.model)


@pytest.mark.parametrize(
    "bits,block,sym,level",
    [(4, 32, False, 0), (4, 64, True, 4), (4, 128, False, 4), (8, 64, False, 0), (8, 32, True, 1)],
)
def test_packed_bytes_equal_onnxruntime_quantizer(bits, block, sym, level):
    reference = ort_quantized(three_matmuls(), bits, block, sym, level)
    model = three_matmuls()
    p = QuantizeMatMulNBits(bits=bits, block_size=block, symmetric=sym, accuracy_level=level)
    check_pass(p, model)
    ours = {n.outputs[0].name: n for n in model.graph if n.op_type == "MatMulNBits"}
    theirs = {n.outputs[0].name: n for n in reference.graph if n.op_type == "MatMulNBits"}
    assert sorted(ours) == sorted(theirs) == ["h", "y", "z"]
    for out, node in ours.items():
        ref = theirs[out]
        assert {k: a.value for k, a in node.attributes.items()} == {
            k: a.value for k, a in ref.attributes.items()
        }
        assert [v.name for v in node.inputs] == [v.name for v in ref.inputs]
        for mine, orts in zip(node.inputs[1:], ref.inputs[1:], strict=True):
            assert list(mine.const_value.shape) == list(orts.const_value.shape)
            assert mine.const_value.tobytes() == orts.const_value.tobytes(), mine.name


@pytest.mark.parametrize("bits,sym", [(4, False), (4, True), (8, False)])
def test_column_slices_give_the_same_bytes(bits, sym):
    """Big or transposed weights are packed a slice of columns at a time, byte for byte alike."""
    w = np.random.default_rng(4).standard_normal((200, 300)).astype(np.float32)
    whole = block_quantize(w, bits, 64, sym)
    sliced = block_quantize(np.asfortranarray(w), bits, 64, sym, chunk_bytes=4 * 256 * 7)
    for a, b in zip(whole, sliced, strict=True):
        np.testing.assert_array_equal(a, b)


def test_rewrites_lazily_and_streams_each_weight_once(tmp_path):
    model = three_matmuls()
    reads = []
    for value in model.graph.initializers.values():
        source = value.const_value

        def read(source=source):
            reads.append(source.name)
            return source

        value.const_value = ir.LazyTensor(read, dtype=source.dtype, shape=source.shape)
    p = QuantizeMatMulNBits()
    assert p(model).modified and reads == []  # nothing computed while rewriting
    bundle = Bundle()
    bundle.add_component("m", model)
    bundle.save(tmp_path / "out")
    assert sorted(reads) == ["W1", "W2", "W3"]  # packed, scales, zero points: one read each
    assert op_types(model) == ["MatMulNBits", "Relu", "MatMulNBits", "MatMulNBits"]
    assert {v.const_value.dtype for v in model.graph.initializers.values()} == {
        ir.DataType.UINT8,
        ir.DataType.FLOAT,
    }


NAMED = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[1,4,64] x, float[64,64] q, float[64,64] o, float[64,128] lm, float[1,4,64] act)
    => (float[1,4,64] y, float[1,4,128] logits, float[1,4,4] scores) {
    a = MatMul (x, q)
    y = MatMul (a, o)
    logits = MatMul (y, lm)
    t = Transpose <perm = [0, 2, 1]> (act)
    scores = MatMul (x, t)
}
"""


def named_model() -> ir.Model:
    """q and o named by the exporter's module scopes, the lm_head by its weight's name."""
    model = model_from_text(NAMED)
    scopes = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.o_proj"]
    for node, scope in zip(list(model.graph)[:2], scopes, strict=True):
        node.metadata_props["pkg.torch.onnx.name_scopes"] = repr(["", scope, "linear"])
    rng = np.random.default_rng(1)
    arrays = {
        "q": rng.standard_normal((64, 64)).astype(np.float32),
        "o": rng.standard_normal((64, 64)).astype(np.float32),
        "lm": rng.standard_normal((64, 128)).astype(np.float32),
    }
    model = as_initializers(model, arrays)
    model.graph.initializers["lm"].name = "lm_head.weight"
    return model


def test_roles_and_exclusions_select_weights():
    check = check_pass(QuantizeMatMulNBits(roles=("q", "lm_head")), named_model())
    assert check.stats == {
        "quantized": 2,
        "skipped:role o not selected": 1,
        "skipped:weight is not a constant": 1,
    }
    check = check_pass(QuantizeMatMulNBits(exclude=("*.layers.1.*", "lm_head.*")), named_model())
    assert check.stats == {
        "quantized": 1,
        "skipped:excluded": 2,
        "skipped:weight is not a constant": 1,
    }
    assert op_types(check.after)[0] == "MatMulNBits"


def test_packed_projection_takes_the_roles_it_packs():
    model = named_model()
    packed = next(iter(model.graph))  # stands for q and k packed side by side
    packed.metadata_props["qgraph.module_scopes"] = (
        "model.layers.0.self_attn.q_proj,model.layers.0.self_attn.k_proj"
    )
    check = check_pass(QuantizeMatMulNBits(roles=("q", "o")), model, expect_modified=True)
    assert check.stats["skipped:role q+k not selected"] == 1
    check = check_pass(QuantizeMatMulNBits(exclude=("*.k_proj",)), named_model())
    assert "skipped:excluded" not in check.stats  # the scope lists only q here
    model = named_model()
    next(iter(model.graph)).metadata_props["qgraph.module_scopes"] = "a.q_proj,a.k_proj"
    check = check_pass(QuantizeMatMulNBits(exclude=("*.k_proj",)), model)
    assert check.stats["skipped:excluded"] == 1


def test_does_not_fire_without_selected_constant_weights():
    check = check_pass(
        QuantizeMatMulNBits(roles=("encoder",)), named_model(), expect_modified=False
    )
    assert check.stats == {
        "skipped:role q not selected": 1,
        "skipped:role o not selected": 1,
        "skipped:role lm_head not selected": 1,
        "skipped:weight is not a constant": 1,
    }


def test_bad_options_are_refused():
    with pytest.raises(PipelineError, match="bits=3 is not allowed"):
        QuantizeMatMulNBits.from_options({"bits": "3"})
    with pytest.raises(PipelineError, match="block_size=48"):
        QuantizeMatMulNBits.from_options({"block_size": "48"})
    registry = default_registry().copy()
    registry.register(QuantizeMatMulNBits)
    with pytest.raises(PipelineError, match="'fuse-rms-norm' must run before 'quantize-int4'"):
        expand("quantize-int4,fuse-rms-norm", registry)


@pytest.mark.parametrize("sym", [False, True])
def test_tied_embedding_reads_the_packed_lm_head(sym):
    bundle = decoder_bundle()
    InlineLmHead()(bundle)
    model = bundle.components["decoder_init"]
    table = model.graph.initializers["lm_head.weight"].const_value.numpy().copy()
    w = model.graph.initializers["W"].const_value.numpy().copy()
    feeds = {"input_ids": np.array([[3, 17, 99, 0]], np.int64)}
    p = QuantizeMatMulNBits(
        block_size=16, symmetric=sym, accuracy_level=0, roles=("other", "lm_head")
    )
    check = check_pass(p, model, feeds=feeds)
    assert check.stats == {"quantized": 2, "embedding gather quantized": 1}
    assert "lm_head.weight" not in model.graph.initializers  # no FP32 table left
    assert "GatherBlockQuantized" in op_types(model)
    # the same computation with plain ops on the dequantized weights
    deq_table, deq_w = fake_quantize(table, 4, 16, sym), fake_quantize(w, 4, 16, sym)
    expected = np.tanh(deq_table.T[feeds["input_ids"]] @ deq_w) @ deq_table
    np.testing.assert_allclose(check.outputs_after["logits"], expected, rtol=1e-4, atol=1e-4)


def test_tied_embedding_can_keep_fp32():
    bundle = decoder_bundle()
    InlineLmHead()(bundle)
    p = QuantizeMatMulNBits(block_size=16, roles=("other", "lm_head"), tied_gather="fp32")
    check = check_pass(p, bundle.components["decoder_init"])
    assert check.stats == {"quantized": 2, "skipped:FP32 weight kept for other users": 1}
    assert "lm_head.weight" in check.after.graph.initializers


def test_tiny_decoders_quantized_alike_still_share_one_file(tiny_raw, tmp_path):
    bundle = Bundle.load(tiny_raw)
    layout = "hygiene,fusions,extract-embed-fp16,inline-lm-head,slice-init-logits"
    run_pipeline(bundle, expand(layout, default_registry()))
    p = QuantizeMatMulNBits()
    for name in ("decoder_init", "decoder_step"):  # the budget --verify-each checks
        check = check_pass(p, bundle.components[name])
        assert check.stats["quantized"] == 9  # 2 layers x (qkv, o, gate+up, down) + lm_head
    p.reset_stats()
    assert not p(bundle.components["encoder"]).modified
    assert p.stats == {"skipped:role encoder not selected": 11}  # its packed q/k/v included
    run_pipeline(bundle, expand("share-weights,remove-unused", default_registry()))
    out = bundle.save(tmp_path / "int4")
    names = {p.name for p in out.iterdir()}
    assert "decoder_weights.data" in names and "decoder_step.onnx.data" not in names
    fp32_bytes = Bundle.load(tiny_raw).manifest["files"]["decoder_step.onnx.data"]["bytes"]
    assert (out / "decoder_weights.data").stat().st_size < 0.2 * fp32_bytes
    assert "GatherBlockQuantized" in op_types(bundle.components["decoder_init"])
    transcript = AsrSession(out).transcribe(example_audio(), max_tokens=8)
    assert len(transcript.token_ids) == 8


PROJECTIONS = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,5,64] x, float[64,64] wq, float[64,64] wk, float[64,64] wv, float[64,64] wo)
    => (float[2,5,64] y) {
    tq = Transpose <perm = [1, 0]> (wq)
    tk = Transpose <perm = [1, 0]> (wk)
    tv = Transpose <perm = [1, 0]> (wv)
    to = Transpose <perm = [1, 0]> (wo)
    q = MatMul (x, tq)
    k = MatMul (x, tk)
    v = MatMul (x, tv)
    qk = Add (q, k)
    s = Add (qk, v)
    y = MatMul (s, to)
}
"""


def test_names_survive_folding_packing_and_exclusion():
    """Folded, packed and quantized weights keep module names, which ``exclude`` matches."""
    from qgraph.passes.fold_constants import FoldConstants
    from qgraph.passes.fuse_sibling_matmuls import FuseSiblingMatMuls

    rng = np.random.default_rng(0)
    names = {w: f"model.layers.0.self_attn.{w[1]}_proj.weight" for w in ("wq", "wk", "wv", "wo")}
    arrays = {w: rng.standard_normal((64, 64)).astype(np.float32) for w in names}
    model = as_initializers(model_from_text(PROJECTIONS), arrays)
    for old, new in names.items():
        model.graph.initializers[old].name = new
    FoldConstants()(model)
    assert sorted(model.graph.initializers) == sorted(names.values())
    FuseSiblingMatMuls()(model)
    packed = "model.layers.0.self_attn.qkv_proj.weight"
    assert sorted(model.graph.initializers) == sorted([packed, names["wo"]])
    p = QuantizeMatMulNBits(exclude=("*.self_attn.qkv_proj.weight",))
    p(model)
    assert p.stats["skipped:excluded"] == 1 and p.stats["quantized"] == 1
    o_proj = names["wo"]
    assert sorted(model.graph.initializers) == sorted(
        [packed, f"{o_proj}_Q4", f"{o_proj}_scales", f"{o_proj}_zero_points"]
    )
