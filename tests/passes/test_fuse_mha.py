import pytest

from qgraph.passes.fuse_mha import FuseMultiHeadAttention
from qgraph.testing import check_pass, op_types


def project(x: str) -> str:
    """MatMul + bias, split into 4 heads of 8, transposed to [B,H,S,D]."""
    return f"""
    {x}m = MatMul (h, w{x})
    {x}l = Add ({x}m, b{x})
    {x}4 = Reshape ({x}l, split)
    {x} = Transpose <perm = [0, 2, 1, 3]> ({x}4)
"""


HEAD = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,6,32] h, float[32,32] wq, float[32] bq, float[32,32] wk, float[32] bk, float[32,32] wv,
   float[32] bv, float[2,1,{rows},6] mask) => ({out} o) {{
    split = Constant <value = int64[4] {{2, 6, 4, 8}}> ()
"""

ENCODER = (
    HEAD.format(rows=1, out="float[2,6,32]")
    + project("q")
    + project("k")
    + project("v")
    + """
    kT = Transpose <perm = [0, 1, 3, 2]> (k)
    sc = MatMul (q, kT)
    scale = Constant <value = float {0.35355339}> ()
    scs = Mul (sc, scale)
    msk = Add (scs, mask)
    p = Softmax <axis = -1> (msk)
    a = MatMul (p, v)
    at = Transpose <perm = [0, 2, 1, 3]> (a)
    merge = Constant <value = int64[3] {2, 6, 32}> ()
    o = Reshape (at, merge)
}
"""
)

SCALED_QUERY_FULL_MASK = (
    HEAD.format(rows=6, out="float[2,6,4,8]")
    + project("q")
    + project("k")
    + project("v")
    + """
    scale = Constant <value = float {0.35355339}> ()
    qs = Mul (q, scale)
    kT = Transpose <perm = [0, 1, 3, 2]> (k)
    sc = MatMul (qs, kT)
    msk = Add (mask, sc)
    p = Softmax <axis = 3> (msk)
    a = MatMul (p, v)
    o = Transpose <perm = [0, 2, 1, 3]> (a)
}
"""
)

NO_MASK_DIV = ENCODER.replace(
    "scale = Constant <value = float {0.35355339}> ()\n    scs = Mul (sc, scale)\n"
    "    msk = Add (scs, mask)",
    "root = Constant <value = float {2.828427}> ()\n    msk = Div (sc, root)",
)


def grouped(x: str) -> str:
    """Keep heads 0-1 of x and repeat each twice (repeat_kv of 2 KV heads)."""
    return f"""
    {x}2 = Slice ({x}, lo, two, ax1)
    {x}u = Unsqueeze ({x}2, ax2)
    {x}e = Expand ({x}u, rep)
    {x}r = Reshape ({x}e, heads)
"""


GROUPED = (
    ENCODER.replace(
        "kT = Transpose <perm = [0, 1, 3, 2]> (k)",
        grouped("k") + grouped("v") + "    kT = Transpose <perm = [0, 1, 3, 2]> (kr)",
    )
    .replace("a = MatMul (p, v)", "a = MatMul (p, vr)")
    .replace(
        "    split =",
        """    lo = Constant <value = int64[1] {0}> ()
    two = Constant <value = int64[1] {2}> ()
    ax1 = Constant <value = int64[1] {1}> ()
    ax2 = Constant <value = int64[1] {2}> ()
    rep = Constant <value = int64[5] {1, 1, 2, 1, 1}> ()
    heads = Constant <value = int64[4] {2, 4, 6, 8}> ()
    split =""",
    )
)


def test_encoder_self_attention_with_key_padding_bias(typed):
    check = check_pass(FuseMultiHeadAttention(), typed(ENCODER))
    ops = op_types(check.after)
    assert ops.count("MultiHeadAttention") == 1 and ops.count("Expand") == 1
    assert not {"Softmax", "Transpose"} & set(ops)
    assert check.stats == {"fused": 1}


@pytest.mark.parametrize(
    "text", [SCALED_QUERY_FULL_MASK, NO_MASK_DIV], ids=["scaled-query-full-mask", "no-mask-div"]
)
def test_other_spellings(typed, text):
    check = check_pass(FuseMultiHeadAttention(), typed(text))
    mha = next(n for n in check.after.graph if n.op_type == "MultiHeadAttention")
    assert mha.attributes["scale"].as_float() == pytest.approx(8**-0.5, rel=1e-6)
    assert "Expand" not in op_types(check.after) and "Softmax" not in op_types(check.after)


def test_does_not_fire_on_grouped_heads(typed):
    check = check_pass(FuseMultiHeadAttention(), typed(GROUPED), expect_modified=False)
    assert check.stats == {"skipped:grouped KV heads (fuse-gqa's case)": 1}


def test_tiny_encoder(tiny_component):
    check = check_pass(FuseMultiHeadAttention(), tiny_component("encoder"), dims={"time": 300})
    assert check.stats == {"fused": 2}
    assert "Softmax" not in op_types(check.after)
