import pytest

from qgraph.passes.fuse_rms_norm import FuseRmsNorm
from qgraph.passes.fuse_skip_rms_norm import FuseSkipRmsNorm
from qgraph.testing import check_pass, op_types
from tests.passes.norm_exports import exported, feeds

RMS = """
    two = Constant <value = float {2.0}> ()
    sq = Pow (s, two)
    axes = Constant <value = int64[1] {-1}> ()
    ms = ReduceMean <keepdims = 1> (sq, axes)
    eps = Constant <value = float {1e-6}> ()
    v = Add (ms, eps)
    r = Sqrt (v)
    inv = Reciprocal (r)
    n = Mul (s, inv)
    y = Mul (g, n)
"""

RESIDUAL_OUT = (
    '<ir_version: 10, opset_import: ["" : 18]>\n'
    "g (float[2,5,16] a, float[2,5,16] b, float[16] g) => (float[2,5,16] y, float[2,5,16] s) {\n"
    "    s = Add (a, b)\n" + RMS + "}"
)

PRE_BIAS = (
    '<ir_version: 10, opset_import: ["" : 18]>\n'
    "g (float[2,5,16] a, float[2,5,16] b, float[16] g, float[16] c) => (float[2,5,16] z) {\n"
    "    ab = Add (c, a)\n    s = Add (b, ab)\n" + RMS + "    z = Add (y, s)\n}"
)

OPSET23 = """
<ir_version: 10, opset_import: ["" : 23]>
g (float[10,16] a, float[10,16] b, float[16] g) => (float[10,16] y, float[10,16] t) {
    s = Add (a, b)
    y = RMSNormalization <axis = -1, epsilon = 1e-5> (s, g)
    t = Mul (s, s)
}
"""

BROADCAST_SKIP = RESIDUAL_OUT.replace("float[2,5,16] b", "float[5,16] b")
# the broadcast operand first, with a batch axis of 1: it becomes the op's skip
BROADCAST_FIRST = RESIDUAL_OUT.replace("float[2,5,16] a", "float[1,5,16] a")
OVER_SEQUENCE = RESIDUAL_OUT.replace("float[2,5,16] b", "float[2,1,16] b")
SYMBOLIC = RESIDUAL_OUT.replace("float[2,5,16]", "float[batch,seq,16]")
OTHER_SYMBOL = SYMBOLIC.replace("float[batch,seq,16] b", "float[batch,other,16] b")
FP16_BROADCAST = (
    OPSET23.replace("float[10,16] b", "float[5,16] b")
    .replace("[10,16]", "[2,5,16]")
    .replace("float[", "float16[")
)


def test_residual_sum_stays_a_graph_output(typed):
    model = FuseRmsNorm()(typed(RESIDUAL_OUT)).model
    check = check_pass(FuseSkipRmsNorm(), model)
    assert op_types(check.after) == ["SkipSimplifiedLayerNormalization"]
    assert [v.name for v in check.after.graph.outputs] == ["y", "s"]
    assert check.stats == {"fused": 1}


def test_projection_bias_folds_in(typed):
    model = FuseRmsNorm()(typed(PRE_BIAS)).model
    check = check_pass(FuseSkipRmsNorm(), model)
    node = next(n for n in check.after.graph if n.op_type == "SkipSimplifiedLayerNormalization")
    assert node.domain == "com.microsoft" and len(node.inputs) == 4
    assert op_types(check.after) == ["SkipSimplifiedLayerNormalization", "Add"]


def test_opset23_rms_normalization(typed):
    check = check_pass(FuseSkipRmsNorm(), typed(OPSET23))
    assert op_types(check.after) == ["SkipSimplifiedLayerNormalization", "Mul"]
    assert check.after.graph.node(0).attributes["epsilon"].as_float() == pytest.approx(1e-5)


@pytest.mark.parametrize(
    ("text", "skip"),
    [(BROADCAST_SKIP, "b"), (BROADCAST_FIRST, "a"), (SYMBOLIC, "b")],
    ids=["skip-over-batch", "broadcast-first", "symbolic"],
)
def test_residual_shapes(typed, text, skip):
    """One provable shape (symbols included), or a [S,H] / [1,S,H] skip, which ORT broadcasts
    over the batch; the full-shape operand becomes the op's input."""
    model = FuseRmsNorm()(typed(text)).model
    check = check_pass(FuseSkipRmsNorm(), model)
    node = check.after.graph.node(0)
    assert node.op_type == "SkipSimplifiedLayerNormalization"
    assert node.inputs[1].name == skip and node.inputs[0].name == ("a" if skip == "b" else "b")
    assert [v.name for v in check.after.graph.outputs] == ["y", "s"]


REFUSED_SHAPES = "skipped:residual operands are neither one rank-2/3 shape nor [B,S,H] + [1,S,H]"


@pytest.mark.parametrize(
    "text", [OVER_SEQUENCE, OTHER_SYMBOL, FP16_BROADCAST], ids=["over-seq", "other-symbol", "fp16"]
)
def test_does_not_fire_on_other_broadcasts(typed, text):
    """A broadcast the kernel does not do, shapes not provably equal, a broadcast in float16."""
    check = check_pass(FuseSkipRmsNorm(), FuseRmsNorm()(typed(text)).model, expect_modified=False)
    assert check.stats == {REFUSED_SHAPES: 1}


@pytest.mark.parametrize("component", ["decoder_init", "decoder_step"])
def test_tiny_decoders(tiny_component, component):
    """2 layers x (post-attention, next input norm); the first input norm has no residual."""
    check = check_pass(FuseSkipRmsNorm(), tiny_component(component, FuseRmsNorm()))
    assert check.stats == {"fused": 4}
    assert op_types(check.after).count("SimplifiedLayerNormalization") == 5


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_hf_qwen3_exports(exporter):
    """Post-attention and next input norm of 2 layers, the final norm after the last residual;
    the residual sums also feed the next residual Add (the op's fourth output)."""
    model = FuseRmsNorm()(exported("qwen3", exporter)).model
    check = check_pass(FuseSkipRmsNorm(), model, feeds=feeds(model))
    assert check.stats == {"fused": 4}
    ops = op_types(check.after)
    assert ops.count("SkipSimplifiedLayerNormalization") == 4
    assert ops.count("SimplifiedLayerNormalization") == 5  # first input norm, 4 q/k norms
