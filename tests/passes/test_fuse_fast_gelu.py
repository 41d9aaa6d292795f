import numpy as np
import pytest

from qgraph.passes.fuse_bias_gelu import FuseBiasGelu
from qgraph.passes.fuse_fast_gelu import FuseFastGelu
from qgraph.passes.fuse_gelu import FuseGelu
from qgraph.testing import check_pass, op_types
from tests.passes.norm_exports import exported, feeds

HEAD = '<ir_version: 10, opset_import: ["" : 18]>\ng (float[2,5,16] x) => (float[2,5,16] y) {\n'

# transformers' gelu_new as every exporter writes it: (0.5 * x) * (1 + tanh(k * (x + c * x^3)))
GELU_NEW = (
    HEAD
    + """
    half = Constant <value = float {0.5}> ()
    hx = Mul (x, half)
    three = Constant <value = float {3.0}> ()
    c = Pow (x, three)
    k = Constant <value = float {0.044715}> ()
    kc = Mul (c, k)
    s = Add (x, kc)
    a = Constant <value = float {0.7978845608}> ()
    u = Mul (s, a)
    t = Tanh (u)
    one = Constant <value = float {1.0}> ()
    t1 = Add (t, one)
    y = Mul (hx, t1)
}
"""
)

# dynamo's F.gelu(approximate="tanh"): x * (0.5 * (1 + t)), constants first
DYNAMO = (
    HEAD
    + """
    three = Constant <value = float {3.0}> ()
    c = Pow (x, three)
    k = Constant <value = float {0.044715}> ()
    kc = Mul (k, c)
    s = Add (x, kc)
    a = Constant <value = float {0.7978845608}> ()
    u = Mul (a, s)
    t = Tanh (u)
    one = Constant <value = float {1.0}> ()
    t1 = Add (t, one)
    half = Constant <value = float {0.5}> ()
    h = Mul (half, t1)
    y = Mul (x, h)
}
"""
)

# TorchScript's F.gelu(approximate="tanh"): x^3 as x * (x * x), 0.5 * (x * (1 + t)), [1] consts
TORCHSCRIPT = (
    HEAD
    + """
    xx = Mul (x, x)
    c = Mul (x, xx)
    k = Constant <value = float[1] {0.044715}> ()
    kc = Mul (k, c)
    s = Add (x, kc)
    a = Constant <value = float[1] {0.7978845608}> ()
    u = Mul (a, s)
    t = Tanh (u)
    one = Constant <value = float[1] {1.0}> ()
    t1 = Add (one, t)
    m = Mul (x, t1)
    half = Constant <value = float[1] {0.5}> ()
    y = Mul (half, m)
}
"""
)

# hand-written: x * (1 + 0.044715 * x * x) inside, x * 0.5 * (1 + t) outside
FACTORED = (
    HEAD
    + """
    xx = Mul (x, x)
    k = Constant <value = float {0.044715}> ()
    kxx = Mul (xx, k)
    one = Constant <value = float {1.0}> ()
    p = Add (one, kxx)
    s = Mul (x, p)
    a = Constant <value = float {0.7978845608}> ()
    u = Mul (a, s)
    t = Tanh (u)
    t1 = Add (t, one)
    half = Constant <value = float {0.5}> ()
    hx = Mul (x, half)
    y = Mul (hx, t1)
}
"""
)

# transformers' gelu_fast: tanh(x * k * (1 + 0.044715 * x * x)), (x * k) grouped first
GELU_FAST = (
    HEAD
    + """
    a = Constant <value = float {0.7978845608}> ()
    xa = Mul (x, a)
    xx = Mul (x, x)
    k = Constant <value = float {0.044715}> ()
    kxx = Mul (k, xx)
    one = Constant <value = float {1.0}> ()
    p = Add (one, kxx)
    u = Mul (xa, p)
    t = Tanh (u)
    t1 = Add (one, t)
    half = Constant <value = float {0.5}> ()
    hx = Mul (half, x)
    y = Mul (hx, t1)
}
"""
)

ONNX_TANH = """
<ir_version: 10, opset_import: ["" : 20]>
g (float[2,5,16] x) => (float[2,5,16] y) {
    y = Gelu <approximate = "tanh"> (x)
}
"""

FFN = """
<ir_version: 10, opset_import: ["" : 20]>
g (float[2,5,16] h, float[16,32] w, float[32] bias) => (float[2,5,32] y) {
    m = MatMul (h, w)
    x = Add (bias, m)
BODY}
"""
FFN_CHAIN = FFN.replace("BODY", GELU_NEW.split("{\n", 1)[1].rsplit("}", 1)[0])
FFN_ONNX = FFN.replace("BODY", '    y = Gelu <approximate = "tanh"> (x)\n')
# the biased value is also a graph output: the Add stays, FastGelu takes its sum
FFN_SHARED = FFN_CHAIN.replace("=> (float[2,5,32] y)", "=> (float[2,5,32] y, float[2,5,32] x)")
FFN_FULL_ADD = FFN_ONNX.replace("float[32] bias", "float[2,5,32] bias")

OTHER_CUBIC = GELU_NEW.replace("float {0.044715}", "float {0.05}")
OTHER_HALF = DYNAMO.replace("float {0.5}", "float {0.6}")
# tanh of the polynomial of another tensor than the one multiplied outside
OTHER_TENSOR = GELU_NEW.replace("(float[2,5,16] x)", "(float[2,5,16] x, float[2,5,16] z)").replace(
    "c = Pow (x, three)", "c = Pow (z, three)"
)
DOUBLE = ONNX_TANH.replace("float[", "double[")


@pytest.mark.parametrize(
    "text",
    [GELU_NEW, DYNAMO, TORCHSCRIPT, FACTORED, GELU_FAST, ONNX_TANH],
    ids=["gelu-new", "dynamo", "torchscript", "factored", "gelu-fast", "onnx-tanh"],
)
def test_fuses_spellings(typed, text):
    check = check_pass(FuseFastGelu(), typed(text))
    assert op_types(check.after) == ["FastGelu"]
    node = check.after.graph.node(0)
    assert node.domain == "com.microsoft" and [v.name for v in node.inputs] == ["x"]
    assert check.stats == {"fused": 1}


@pytest.mark.parametrize("text", [FFN_CHAIN, FFN_ONNX], ids=["chain", "onnx"])
def test_bias_add_folds_in(typed, text):
    check = check_pass(FuseFastGelu(), typed(text))
    assert op_types(check.after) == ["MatMul", "FastGelu"]
    assert [v.name for v in check.after.graph.node(1).inputs] == ["m", "bias"]


def test_bias_add_used_elsewhere_stays(typed):
    check = check_pass(FuseFastGelu(), typed(FFN_SHARED))
    assert op_types(check.after) == ["MatMul", "Add", "FastGelu"]
    assert [v.name for v in check.after.graph.node(2).inputs] == ["x"]
    assert [v.name for v in check.after.graph.outputs] == ["y", "x"]


def test_full_tensor_add_is_no_bias(typed):
    check = check_pass(FuseFastGelu(), typed(FFN_FULL_ADD))
    assert op_types(check.after) == ["MatMul", "Add", "FastGelu"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (OTHER_CUBIC, "skipped:tanh argument is not sqrt(2/pi) * (x + 0.044715 * x^3)"),
        (OTHER_TENSOR, "skipped:tanh argument is not sqrt(2/pi) * (x + 0.044715 * x^3)"),
        (OTHER_HALF, "skipped:constants are not those of the tanh GELU"),
        (DOUBLE, "skipped:element type is not float"),
    ],
    ids=["cubic", "other-tensor", "half", "double"],
)
def test_does_not_fire_on_other_math(typed, text, reason):
    check = check_pass(FuseFastGelu(), typed(text), expect_modified=False)
    assert check.stats == {reason: 1}


def test_leaves_the_erf_gelu_alone(typed):
    from tests.passes.test_fuse_gelu import DYNAMO as ERF

    check = check_pass(FuseFastGelu(), typed(ERF), expect_modified=False)
    assert check.stats == {}


def test_numerics_over_a_wide_range(typed):
    """The kernel's x * (B + C x^2) and MLAS tanh against the decomposed chain: measured."""
    x = np.linspace(-12, 12, 160, dtype=np.float32).reshape(2, 5, 16)
    check = check_pass(FuseFastGelu(), typed(TORCHSCRIPT), feeds={"x": x})
    diff = np.abs(check.outputs_after["y"] - check.outputs_before["y"]).max()
    assert diff < 1e-5


@pytest.mark.parametrize(("name", "exporter"), [("bert", "torchscript"), ("whisper", "dynamo")])
def test_hf_exports(name, exporter):
    """BERT's gelu_new and Whisper's gelu_pytorch_tanh FFNs (2 layers): FastGelu with the
    intermediate dense bias; Whisper's conv GELUs are erf (fuse-gelu's)."""
    model = exported(name, exporter)
    check = check_pass(FuseFastGelu(), model, feeds=feeds(model))
    assert check.stats == {"fused": 2}
    ops = op_types(check.after)
    assert ops.count("FastGelu") == 2 and "Tanh" not in ops
    fused = [n for n in check.after.graph if n.op_type == "FastGelu"]
    assert all(len(n.inputs) == 2 for n in fused)


def test_after_the_exact_gelu_passes():
    """In pipeline order the erf conv GELUs become Gelu first; the tanh FFNs are left here."""
    model = exported("whisper", "torchscript")
    model = FuseBiasGelu()(FuseGelu()(model).model).model
    check = check_pass(FuseFastGelu(), model, feeds=feeds(model))
    ops = op_types(check.after)
    assert (ops.count("Gelu"), ops.count("FastGelu")) == (2, 2)
