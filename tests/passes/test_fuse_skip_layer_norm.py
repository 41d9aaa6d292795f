import numpy as np
import onnx_ir as ir
import pytest

from qgraph.passes.fuse_skip_layer_norm import FuseSkipLayerNorm
from qgraph.testing import check_pass, op_types
from tests.passes.norm_exports import exported, feeds

PRE_LN = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,5,16] x, float[2,5,16] h, float[16,16] w, float[16] bias, float[16] g, float[16] b)
    => (float[2,5,16] y, float[2,5,16] r) {
    m = MatMul (h, w)
    proj = Add (m, bias)
    r = Add (x, proj)
    y = LayerNormalization <axis = -1, epsilon = 1e-5> (r, g, b)
}
"""

NO_BETA_REVERSED = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,5,16] x, float[2,5,16] p, float[16] g) => (float[2,5,16] z) {
    r = Add (p, x)
    y = LayerNormalization <epsilon = 1e-6> (r, g)
    z = Add (y, r)
}
"""

OPSET17_SUM_BIAS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[10,16] x, float[10,16] p, float[16] bias, float[16] g, float[16] b) => (float[10,16] y) {
    s = Add (x, p)
    r = Add (s, bias)
    y = LayerNormalization <axis = 1> (r, g, b)
}
"""

# BERT-style post-LN with the dense bias, the residual first, a symbolic sequence axis
POST_LN_SYMBOLIC = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[batch,seq,16] x, float[batch,seq,32] h, float[32,16] w, float[16] bias, float[16] g,
   float[16] b) => (float[batch,seq,16] y) {
    m = MatMul (h, w)
    proj = Add (bias, m)
    r = Add (x, proj)
    y = LayerNormalization <axis = -1, epsilon = 1e-12> (r, g, b)
}
"""

# Whisper's first pre-LN: positions [S,H] added to the conv output [B,S,H]; the sum is the residual
POSITIONS = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[batch,16,8] c, float[16,8] pos, float[8] g, float[8] b) => (float[batch,16,8] z) {
    r = Add (c, pos)
    y = LayerNormalization <axis = -1, epsilon = 1e-5> (r, g, b)
    z = Add (r, y)
}
"""

OVER_TWO_AXES = PRE_LN.replace("axis = -1", "axis = 1").replace(
    "float[16] g, float[16] b", "float[5,16] g, float[5,16] b"
)


def test_pre_ln_with_projection_bias(typed):
    check = check_pass(FuseSkipLayerNorm(), typed(PRE_LN))
    assert op_types(check.after) == ["MatMul", "SkipLayerNormalization"]
    node = check.after.graph.node(1)
    assert node.domain == "com.microsoft" and len(node.inputs) == 5
    assert node.attributes["epsilon"].as_float() == pytest.approx(1e-5)
    assert [v.name for v in check.after.graph.outputs] == ["y", "r"]
    assert check.stats == {"fused": 1}


@pytest.mark.parametrize("text", [NO_BETA_REVERSED, OPSET17_SUM_BIAS], ids=["no-beta", "opset17"])
def test_other_spellings(typed, text):
    check = check_pass(FuseSkipLayerNorm(), typed(text))
    assert "LayerNormalization" not in op_types(check.after)
    assert op_types(check.after).count("SkipLayerNormalization") == 1


def test_post_ln_with_symbolic_shapes(typed):
    check = check_pass(FuseSkipLayerNorm(), typed(POST_LN_SYMBOLIC))
    assert op_types(check.after) == ["MatMul", "SkipLayerNormalization"]
    node = check.after.graph.node(1)
    assert {v.name for v in node.inputs[:2]} == {"x", "m"}
    assert [v.name for v in node.inputs[2:]] == ["g", "b", "bias"]


def test_positions_broadcast_over_the_batch(typed):
    check = check_pass(FuseSkipLayerNorm(), typed(POSITIONS), dims={"batch": 3})
    node = check.after.graph.node(0)
    assert node.op_type == "SkipLayerNormalization"
    assert [v.name for v in node.inputs] == ["c", "pos", "g", "b"]
    assert op_types(check.after) == ["SkipLayerNormalization", "Add"]


def _embeddings(table: int) -> ir.Model:
    """TorchScript's BERT embeddings, no shape information: positions sliced from a [1, T]
    table by the run-time sequence length, [1, Min(T, seq), H] added to [B, seq, H]."""
    ids = ", ".join(str(i) for i in range(table))
    return ir.from_onnx_text(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (int64[batch,seq] ids, float[32,16] wemb, float[8,16] pemb, float[16] g, float[16] b)
        => (float[batch,seq,16] y) {{
        table = Constant <value = int64[1,{table}] {{{ids}}}> ()
        shape = Shape (ids)
        one = Constant <value = int64 {{1}}> ()
        seq = Gather <axis = 0> (shape, one)
        zero = Constant <value = int64[1] {{0}}> ()
        end = Unsqueeze (seq, zero)
        axes = Constant <value = int64[1] {{1}}> ()
        step = Constant <value = int64[1] {{1}}> ()
        positions = Slice (table, zero, end, axes, step)
        w = Gather (wemb, ids)
        p = Gather (pemb, positions)
        r = Add (w, p)
        y = LayerNormalization <axis = -1, epsilon = 1e-12> (r, g, b)
    }}""")


def _embedding_feeds(seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "ids": rng.integers(0, 32, (2, seq)),
        **{
            k: rng.standard_normal(s).astype(np.float32)
            for k, s in [("wemb", (32, 16)), ("pemb", (8, 16)), ("g", 16), ("b", 16)]
        },
    }


def test_embedding_positions_sliced_by_the_sequence_length():
    check = check_pass(FuseSkipLayerNorm(), _embeddings(8), feeds=_embedding_feeds(5))
    node = next(n for n in check.after.graph if n.op_type == "SkipLayerNormalization")
    assert [v.name for v in node.inputs] == ["w", "p", "g", "b"]
    assert "LayerNormalization" not in op_types(check.after)


def test_does_not_fire_on_a_positions_table_of_one_row():
    """Min(1, seq) is 1 for any sequence: a true broadcast along the sequence, not a skip."""
    model = _embeddings(1)
    check = check_pass(FuseSkipLayerNorm(), model, feeds=_embedding_feeds(5), expect_modified=False)
    assert set(check.stats) == {
        "skipped:residual operands are neither one rank-2/3 shape nor [B,S,H] + [1,S,H]"
    }


def test_does_not_fire_on_multi_axis_norm(typed):
    check = check_pass(FuseSkipLayerNorm(), typed(OVER_TWO_AXES), expect_modified=False)
    assert check.stats == {"skipped:gamma or bias is not 1-D over the hidden axis": 1}


def test_tiny_encoder(tiny_component):
    """2 layers x (post-attention, next layer's pre-LN) - 1: the stack's first and ln_post stay."""
    check = check_pass(FuseSkipLayerNorm(), tiny_component("encoder"))
    assert check.stats == {"fused": 3}
    assert op_types(check.after).count("LayerNormalization") == 2


def test_tiny_decoder_has_no_layer_norm(tiny_component):
    check_pass(FuseSkipLayerNorm(), tiny_component("decoder_step"), expect_modified=False)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_hf_bert_post_ln(exporter):
    """2 layers x (attention output, FFN output) post-LNs, dense bias folded in, and the
    embedding sum's LayerNorm (positions [1, Min(64, seq), H], equal to the sequence length
    wherever the graph runs: ``qgraph.shapes``)."""
    model = exported("bert", exporter)
    check = check_pass(FuseSkipLayerNorm(), model, feeds=feeds(model))
    assert check.stats["fused"] == 5
    assert "LayerNormalization" not in op_types(check.after)
    fused = [n for n in check.after.graph if n.op_type == "SkipLayerNormalization"]
    assert sorted(len(n.inputs) for n in fused) == [4, 5, 5, 5, 5]  # embeddings: no dense bias


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_hf_whisper_encoder_pre_ln(exporter):
    """The first pre-LN (conv output + positions, broadcast over the batch), 3 more residual
    pre-LNs and the final layer_norm: every LayerNorm of the encoder."""
    model = exported("whisper", exporter)
    check = check_pass(FuseSkipLayerNorm(), model, feeds=feeds(model))
    assert check.stats == {"fused": 5}
    assert "LayerNormalization" not in op_types(check.after)
