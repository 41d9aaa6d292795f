import pytest

from qgraph.passes.fuse_bias_gelu import FuseBiasGelu
from qgraph.passes.fuse_gelu import FuseGelu
from qgraph.testing import check_pass, op_types

FFN_ERF = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,5,16] x, float[16,32] w, float[32] bias) => (float[2,5,32] y) {
    m = MatMul (x, w)
    a = Add (m, bias)
    root2 = Constant <value = float {1.4142135}> ()
    d = Div (a, root2)
    e = Erf (d)
    one = Constant <value = float {1.0}> ()
    e1 = Add (e, one)
    half = Constant <value = float {0.5}> ()
    h = Mul (half, e1)
    y = Mul (a, h)
}
"""

ONNX_GELU = """
<ir_version: 10, opset_import: ["" : 20]>
g (float[2,5,16] x, float[16,32] w, float[32] bias) => (float[2,5,32] y) {
    m = MatMul (x, w)
    a = Add (bias, m)
    y = Gelu (a)
}
"""

TANH_GELU = ONNX_GELU.replace("Gelu (a)", 'Gelu <approximate = "tanh"> (a)')
FULL_ADD = ONNX_GELU.replace("float[32] bias", "float[2,5,32] bias")


def test_erf_chain_after_fuse_gelu(typed):
    model = FuseGelu()(typed(FFN_ERF)).model
    check = check_pass(FuseBiasGelu(), model)
    assert op_types(check.after) == ["MatMul", "BiasGelu"]
    assert check.stats == {"fused": 1}


def test_onnx_gelu_bias_first(typed):
    check = check_pass(FuseBiasGelu(), typed(ONNX_GELU))
    assert op_types(check.after) == ["MatMul", "BiasGelu"]
    assert check.after.graph.node(1).domain == "com.microsoft"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (TANH_GELU, "skipped:tanh-approximate Gelu"),
        (FULL_ADD, "skipped:bias is not 1-D over the last axis"),
    ],
    ids=["tanh", "full-add"],
)
def test_does_not_fire(typed, text, reason):
    check = check_pass(FuseBiasGelu(), typed(text), expect_modified=False)
    assert check.stats == {reason: 1}


def test_tiny_encoder(tiny_component):
    """2 FFNs and the projector; the 3 conv GELUs (bias inside the Conv) stay plain Gelu."""
    check = check_pass(FuseBiasGelu(), tiny_component("encoder", FuseGelu()))
    assert check.stats == {"fused": 3}
    assert op_types(check.after).count("Gelu") == 3
