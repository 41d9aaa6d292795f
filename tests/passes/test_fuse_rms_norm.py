import pytest

from qgraph.pass_api import Tolerance
from qgraph.passes.fuse_rms_norm import FuseRmsNorm
from qgraph.testing import check_pass, op_types

DYNAMO = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,5,16] x, float[16] w) => (float[2,5,16] y) {
    two = Constant <value = float {2.0}> ()
    sq = Pow (x, two)
    axes = Constant <value = int64[1] {-1}> ()
    ms = ReduceMean <keepdims = 1> (sq, axes)
    eps = Constant <value = float {1e-6}> ()
    v = Add (ms, eps)
    r = Sqrt (v)
    inv = Reciprocal (r)
    n = Mul (x, inv)
    y = Mul (w, n)
}
"""

TORCHSCRIPT_CASTS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,5,16] x, float[16] w) => (float[2,5,16] y) {
    xf = Cast <to = 1> (x)
    sq = Mul (xf, xf)
    ms = ReduceMean <axes = [2], keepdims = 1> (sq)
    eps = Constant <value = float[1] {1e-5}> ()
    v = Add (eps, ms)
    r = Sqrt (v)
    one = Constant <value = float {1.0}> ()
    inv = Div (one, r)
    n = Mul (inv, xf)
    nd = Cast <to = 1> (n)
    y = Mul (nd, w)
}
"""

FP16_UPCAST = """
<ir_version: 8, opset_import: ["" : 17]>
g (float16[2,5,16] x, float16[16] w) => (float16[2,5,16] y) {
    xf = Cast <to = 1> (x)
    two = Constant <value = float {2.0}> ()
    sq = Pow (xf, two)
    ms = ReduceMean <axes = [-1]> (sq)
    eps = Constant <value = float {1e-6}> ()
    v = Add (ms, eps)
    r = Sqrt (v)
    inv = Reciprocal (r)
    n = Mul (xf, inv)
    nh = Cast <to = 10> (n)
    y = Mul (w, nh)
}
"""

DIV_SQRT_4D = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,5,4,8] x, float[8] w) => (float[2,5,4,8] y) {
    sq = Mul (x, x)
    axes = Constant <value = int64[1] {3}> ()
    ms = ReduceMean <keepdims = 1> (sq, axes)
    eps = Constant <value = float {1e-6}> ()
    v = Add (ms, eps)
    r = Sqrt (v)
    n = Div (x, r)
    y = Mul (n, w)
}
"""

MEAN_OVER_SEQUENCE = DYNAMO.replace("int64[1] {-1}", "int64[1] {1}")
BROADCAST_SCALE = DYNAMO.replace("float[16] w", "float[1,1,16] w")
QUARTIC = DYNAMO.replace("float {2.0}", "float {4.0}")


@pytest.mark.parametrize(
    "text", [DYNAMO, TORCHSCRIPT_CASTS, DIV_SQRT_4D], ids=["dynamo", "casts-div", "div-sqrt-4d"]
)
def test_fuses_spellings(typed, text):
    check = check_pass(FuseRmsNorm(), typed(text))
    assert op_types(check.after) == ["SimplifiedLayerNormalization"]
    assert check.stats == {"fused": 1}
    node = next(iter(check.after.graph))
    assert node.domain == "" and node.attributes["stash_type"].as_int() == 1


def test_fp16_input_normalizes_in_float(typed):
    check = check_pass(FuseRmsNorm(), typed(FP16_UPCAST), tolerance=Tolerance(atol=4e-3, rtol=2e-3))
    assert op_types(check.after) == ["SimplifiedLayerNormalization"]
    assert check.after.graph.inputs[0].dtype.name == "FLOAT16"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (MEAN_OVER_SEQUENCE, "skipped:mean is not over the last axis"),
        (BROADCAST_SCALE, "skipped:scale is not 1-D over the normalized axis"),
        (QUARTIC, "skipped:exponent is not 2"),
    ],
    ids=["axis", "scale", "exponent"],
)
def test_does_not_fire_on_other_math(typed, text, reason):
    check = check_pass(FuseRmsNorm(), typed(text), expect_modified=False)
    assert check.stats == {reason: 1}


@pytest.mark.parametrize(("component", "fused"), [("decoder_init", 9), ("decoder_step", 9)])
def test_tiny_decoders(tiny_component, component, fused):
    """2 layers x (input, post-attention, q_norm, k_norm) + the final norm."""
    check = check_pass(FuseRmsNorm(), tiny_component(component))
    assert check.stats == {"fused": fused}
    assert "ReduceMean" not in op_types(check.after)


def test_tiny_encoder_has_no_rms_norm(tiny_component):
    check_pass(FuseRmsNorm(), tiny_component("encoder"), expect_modified=False)
