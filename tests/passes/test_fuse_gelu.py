import pytest

from qgraph.passes.fuse_gelu import FuseGelu
from qgraph.testing import check_pass, op_types

HEAD = '<ir_version: 10, opset_import: ["" : 18]>\ng (float[2,5,16] x) => (float[2,5,16] y) {\n'

DYNAMO = (
    HEAD
    + """
    root2 = Constant <value = float {1.4142135}> ()
    d = Div (x, root2)
    e = Erf (d)
    one = Constant <value = float {1.0}> ()
    e1 = Add (e, one)
    half = Constant <value = float {0.5}> ()
    h = Mul (half, e1)
    y = Mul (x, h)
}
"""
)

TORCHSCRIPT = (
    HEAD
    + """
    root2 = Constant <value = float[1] {1.4142135}> ()
    d = Div (x, root2)
    e = Erf (d)
    one = Constant <value = float[1] {1.0}> ()
    e1 = Add (e, one)
    m = Mul (x, e1)
    half = Constant <value = float[1] {0.5}> ()
    y = Mul (m, half)
}
"""
)

MANUAL_INV_SQRT2 = (
    HEAD
    + """
    half = Constant <value = float {0.5}> ()
    hx = Mul (half, x)
    inv = Constant <value = float {0.70710678}> ()
    d = Mul (x, inv)
    e = Erf (d)
    one = Constant <value = float {1.0}> ()
    e1 = Add (one, e)
    y = Mul (hx, e1)
}
"""
)

TANH = (
    HEAD
    + """
    three = Constant <value = float {3.0}> ()
    c = Pow (x, three)
    k = Constant <value = float {0.044715}> ()
    kc = Mul (k, c)
    s = Add (x, kc)
    a = Constant <value = float {0.7978845608}> ()
    as_ = Mul (a, s)
    t = Tanh (as_)
    one = Constant <value = float {1.0}> ()
    t1 = Add (t, one)
    half = Constant <value = float {0.5}> ()
    h = Mul (half, t1)
    y = Mul (x, h)
}
"""
)

SCALED = DYNAMO.replace("float {0.5}", "float {0.6}")


@pytest.mark.parametrize(
    "text", [DYNAMO, TORCHSCRIPT, MANUAL_INV_SQRT2], ids=["dynamo", "torchscript", "manual"]
)
def test_fuses_spellings(typed, text):
    check = check_pass(FuseGelu(), typed(text))
    assert op_types(check.after) == ["Gelu"]
    assert check.after.graph.node(0).domain == "com.microsoft"
    assert check.stats == {"fused": 1}


def test_does_not_fire_on_tanh_approximation(typed):
    check = check_pass(FuseGelu(), typed(TANH), expect_modified=False)
    assert check.stats == {}


def test_does_not_fire_on_other_constants(typed):
    check = check_pass(FuseGelu(), typed(SCALED), expect_modified=False)
    assert check.stats == {"skipped:constants are not those of the erf GELU": 1}


def test_tiny_encoder(tiny_component):
    """3 conv GELUs, 2 FFN GELUs and the projector's."""
    check = check_pass(FuseGelu(), tiny_component("encoder"))
    assert check.stats == {"fused": 6}
    assert "Erf" not in op_types(check.after)
