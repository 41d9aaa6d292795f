import pytest

from qgraph.passes.fuse_rms_norm import FuseRmsNorm
from qgraph.passes.fuse_skip_rms_norm import FuseSkipRmsNorm
from qgraph.testing import check_pass, op_types

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

BROADCAST = RESIDUAL_OUT.replace("float[2,5,16] b", "float[5,16] b")


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


def test_does_not_fire_on_broadcast_residual(typed):
    model = FuseRmsNorm()(typed(BROADCAST)).model
    check = check_pass(FuseSkipRmsNorm(), model, expect_modified=False)
    assert check.stats == {"skipped:residual operands are not rank-2/3 tensors of one shape": 1}


@pytest.mark.parametrize("component", ["decoder_init", "decoder_step"])
def test_tiny_decoders(tiny_component, component):
    """2 layers x (post-attention, next input norm); the first input norm has no residual."""
    check = check_pass(FuseSkipRmsNorm(), tiny_component(component, FuseRmsNorm()))
    assert check.stats == {"fused": 4}
    assert op_types(check.after).count("SimplifiedLayerNormalization") == 5
