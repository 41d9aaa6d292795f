import pytest

from qgraph.pass_api import Tolerance
from qgraph.passes.fuse_rms_norm import FuseRmsNorm
from qgraph.testing import check_pass, op_types
from tests.passes.norm_exports import exported, feeds

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


# -- other spellings: rsqrt as Pow(-0.5), root as Pow(0.5), the scale applied to the input ------
POW_RSQRT = DYNAMO.replace(
    "r = Sqrt (v)\n    inv = Reciprocal (r)",
    "nh = Constant <value = float {-0.5}> ()\n    inv = Pow (v, nh)",
)
POW_ROOT_DIV = DYNAMO.replace(
    "r = Sqrt (v)\n    inv = Reciprocal (r)\n    n = Mul (x, inv)",
    "h = Constant <value = float[1] {0.5}> ()\n    r = Pow (v, h)\n    n = Div (x, r)",
)
WEIGHTED_DIV = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,5,16] x, float[16] w) => (float[2,5,16] y) {
    xw = Mul (x, w)
    sq = Mul (x, x)
    ms = ReduceMean <axes = [-1], keepdims = 1> (sq)
    eps = Constant <value = float {1e-6}> ()
    v = Add (eps, ms)
    r = Sqrt (v)
    y = Div (xw, r)
}
"""
WEIGHTED_POW_RSQRT = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,5,16] x, float[16] w) => (float[2,5,16] y) {
    wx = Mul (w, x)
    two = Constant <value = float {2.0}> ()
    sq = Pow (x, two)
    axes = Constant <value = int64[1] {2}> ()
    ms = ReduceMean <keepdims = 1> (sq, axes)
    eps = Constant <value = float {1e-5}> ()
    v = Add (ms, eps)
    nh = Constant <value = float {-0.5}> ()
    inv = Pow (v, nh)
    y = Mul (inv, wx)
}
"""
# the up-cast's output is also the residual (TorchScript traces a no-op ``.to(float32)`` so)
SHARED_UP_CAST = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,5,16] x, float[16] w, float[2,5,16] h) => (float[2,5,16] y, float[2,5,16] z) {
    xf = Cast <to = 1> (x)
    two = Constant <value = float {2.0}> ()
    sq = Pow (xf, two)
    ms = ReduceMean <axes = [-1]> (sq)
    eps = Constant <value = float {1e-6}> ()
    v = Add (ms, eps)
    r = Sqrt (v)
    one = Constant <value = float {1.0}> ()
    inv = Div (one, r)
    n = Mul (xf, inv)
    y = Mul (w, n)
    z = Add (xf, h)
}
"""
WEIGHTED_SHARED_UP_CAST = SHARED_UP_CAST.replace(
    "n = Mul (xf, inv)\n    y = Mul (w, n)", "n = Mul (xf, w)\n    y = Mul (n, inv)"
)
POW_QUARTER = POW_RSQRT.replace("float {-0.5}", "float {-0.25}")
WEIGHTED_BROADCAST_SCALE = WEIGHTED_DIV.replace("float[16] w", "float[1,1,16] w")
# the scale multiplies another tensor than the one normalized: not an RMSNorm
WEIGHTED_OTHER_INPUT = WEIGHTED_DIV.replace(
    "float[16] w) =>", "float[16] w, float[2,5,16] o) =>"
).replace("xw = Mul (x, w)", "xw = Mul (o, w)")


@pytest.mark.parametrize(
    ("text", "residue"),
    [
        (POW_RSQRT, []),
        (POW_ROOT_DIV, []),
        (WEIGHTED_DIV, []),
        (WEIGHTED_POW_RSQRT, []),
        (SHARED_UP_CAST, ["Cast", "Add"]),
        (WEIGHTED_SHARED_UP_CAST, ["Cast", "Add"]),
    ],
    ids=["pow-rsqrt", "pow-root-div", "weighted-div", "weighted-pow", "shared-cast", "w-shared"],
)
def test_fuses_other_spellings(typed, text, residue):
    check = check_pass(FuseRmsNorm(), typed(text))
    ops = op_types(check.after)
    assert sorted(ops) == sorted(["SimplifiedLayerNormalization", *residue])
    assert check.stats == {"fused": 1}
    node = next(n for n in check.after.graph if n.op_type == "SimplifiedLayerNormalization")
    assert node.inputs[1].name == "w"
    assert node.attributes["epsilon"].as_float() == pytest.approx(scalar_eps(text))


def scalar_eps(text: str) -> float:
    return 1e-5 if "{1e-5}" in text else 1e-6


def test_shared_up_cast_keeps_the_cast_in_front(typed):
    check = check_pass(FuseRmsNorm(), typed(SHARED_UP_CAST))
    node = next(n for n in check.after.graph if n.op_type == "SimplifiedLayerNormalization")
    cast = node.inputs[0].producer()
    assert cast is not None and cast.op_type == "Cast"
    assert [n.op_type for n, _ in cast.outputs[0].uses()] != ["SimplifiedLayerNormalization"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (POW_QUARTER, "skipped:inverse-root exponent is not -0.5"),
        (WEIGHTED_BROADCAST_SCALE, "skipped:scale is not 1-D over the normalized axis"),
    ],
    ids=["pow-quarter", "weighted-broadcast-scale"],
)
def test_other_spellings_do_not_fire_on_other_math(typed, text, reason):
    check = check_pass(FuseRmsNorm(), typed(text), expect_modified=False)
    assert check.stats == {reason: 1}


def test_scale_on_another_tensor_is_not_an_rms_norm(typed):
    check = check_pass(FuseRmsNorm(), typed(WEIGHTED_OTHER_INPUT), expect_modified=False)
    assert check.stats == {}


# -- Hugging Face Qwen3 (LlamaRMSNorm: float32 up-cast, rsqrt, variance_epsilon; q/k norms) -----
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_hf_qwen3_exports(exporter):
    """2 layers x (input, post-attention, q_norm, k_norm over head_dim on [B,S,H,D]) + final."""
    model = exported("qwen3", exporter)
    check = check_pass(FuseRmsNorm(), model, feeds=feeds(model))
    assert check.stats == {"fused": 9}
    ops = op_types(check.after)
    assert ops.count("SimplifiedLayerNormalization") == 9
    assert not {"ReduceMean", "Sqrt", "Reciprocal"} & set(ops)
    head_norms = [
        n
        for n in check.after.graph
        if n.op_type == "SimplifiedLayerNormalization" and n.inputs[0].shape.rank() == 4
    ]
    assert len(head_norms) == 4
