import pytest

from qgraph.passes.fuse_gqa import FuseGroupQueryAttention
from qgraph.passes.fuse_rms_norm import FuseRmsNorm
from qgraph.passes.fuse_rotary_embedding import FuseRotaryEmbedding
from qgraph.passes.fuse_skip_rms_norm import FuseSkipRmsNorm
from qgraph.testing import check_pass, op_types


def repeat_kv(x: str) -> str:
    """HF repeat_kv as the dynamo exporter writes it: identity Slices around the Expand."""
    return f"""
    {x}s = Slice ({x}t, zero, big, ax0, one)
    {x}u = Unsqueeze ({x}s, ax2)
    {x}e = Expand ({x}u, rep)
    {x}r = Reshape ({x}e, heads)
"""


DECODE = (
    """
<ir_version: 10, opset_import: ["" : 18]>
g (float[1,1,32] q3, float[1,1,16] k3, float[1,1,16] v3, float[1,2,past,8] past_k,
   float[1,2,past,8] past_v) => (float[1,1,32] o, float[1,2,total,8] kt, float[1,2,total,8] vt) {
    qs = Constant <value = int64[4] {1, 1, 4, 8}> ()
    kvs = Constant <value = int64[4] {1, 1, 2, 8}> ()
    q4 = Reshape (q3, qs)
    q = Transpose <perm = [0, 2, 1, 3]> (q4)
    k4 = Reshape (k3, kvs)
    k = Transpose <perm = [0, 2, 1, 3]> (k4)
    v4 = Reshape (v3, kvs)
    v = Transpose <perm = [0, 2, 1, 3]> (v4)
    kt = Concat <axis = 2> (past_k, k)
    vt = Concat <axis = -2> (past_v, v)
    zero = Constant <value = int64[1] {0}> ()
    big = Constant <value = int64[1] {9223372036854775807}> ()
    ax0 = Constant <value = int64[1] {0}> ()
    ax2 = Constant <value = int64[1] {2}> ()
    one = Constant <value = int64[1] {1}> ()
    rep = Constant <value = int64[5] {1, 1, 2, 1, 1}> ()
    heads = Constant <value = int64[4] {1, 4, -1, 8}> ()
"""
    + repeat_kv("k")
    + repeat_kv("v")
    + """
    kT = Transpose <perm = [0, 1, 3, 2]> (kr)
    sc = MatMul (q, kT)
    scale = Constant <value = float {0.35355339}> ()
    scs = Mul (sc, scale)
    p = Softmax <axis = -1> (scs)
    a = MatMul (p, vr)
    at = Transpose <perm = [0, 2, 1, 3]> (a)
    os = Constant <value = int64[3] {1, 1, 32}> ()
    o = Reshape (at, os)
}
"""
)

PREFILL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,seq,32] q3, float[2,seq,16] k3, float[2,seq,16] v3)
    => (float[2,seq,32] o, float[2,2,seq,8] k, float[2,2,seq,8] v) {
    qs = Constant <value = int64[4] {0, 0, 4, 8}> ()
    kvs = Constant <value = int64[4] {0, 0, 2, 8}> ()
    q4 = Reshape (q3, qs)
    q = Transpose <perm = [0, 2, 1, 3]> (q4)
    k4 = Reshape (k3, kvs)
    k = Transpose <perm = [0, 2, 1, 3]> (k4)
    v4 = Reshape (v3, kvs)
    v = Transpose <perm = [0, 2, 1, 3]> (v4)
    ax2 = Constant <value = int64[1] {2}> ()
    rep = Constant <value = int64[5] {1, 1, 2, 1, 1}> ()
    heads = Constant <value = int64[4] {0, 4, -1, 8}> ()
    ku = Unsqueeze (k, ax2)
    ke = Expand (ku, rep)
    kr = Reshape (ke, heads)
    vu = Unsqueeze (v, ax2)
    ve = Expand (vu, rep)
    vr = Reshape (ve, heads)
    root = Constant <value = float {0.59460356}> ()
    qq = Mul (q, root)
    kT = Transpose <perm = [0, 1, 3, 2]> (kr)
    kTs = Mul (kT, root)
    sc = MatMul (qq, kTs)
    n = Shape <start = 1, end = 2> (q3)
    nn = Concat <axis = 0> (n, n)
    low = Constant <value = float {-3.4028234e38}> ()
    full = Expand (low, nn)
    diag = Constant <value = int64 {1}> ()
    mask = Trilu <upper = 1> (full, diag)
    msk = Add (sc, mask)
    p = Softmax <axis = -1> (msk)
    a = MatMul (p, vr)
    at = Transpose <perm = [0, 2, 1, 3]> (a)
    os = Constant <value = int64[3] {0, 0, 32}> ()
    o = Reshape (at, os)
}
"""

PADDING_MASK = PREFILL.replace(
    "float[2,seq,16] v3)", "float[2,seq,16] v3, float[2,1,1,seq] pad)"
).replace("msk = Add (sc, mask)", "msk = Add (sc, pad)")
NO_MASK = PREFILL.replace("msk = Add (sc, mask)", "msk = Mul (sc, diag_f)").replace(
    "    n = Shape", "    diag_f = Constant <value = float {1.0}> ()\n    n = Shape"
)


def test_decode_step_with_past_and_repeat_kv(typed):
    check = check_pass(FuseGroupQueryAttention(), typed(DECODE))
    assert op_types(check.after).count("GroupQueryAttention") == 1
    assert not {"Softmax", "Slice", "Transpose", "Concat"} & set(op_types(check.after))
    assert [v.name for v in check.after.graph.outputs] == ["o", "kt", "vt"]
    assert check.stats == {"fused": 1}


def test_prefill_with_causal_mask_and_sqrt_scale(typed):
    check = check_pass(FuseGroupQueryAttention(), typed(PREFILL), dims={"seq": 6})
    gqa = next(n for n in check.after.graph if n.op_type == "GroupQueryAttention")
    assert gqa.attributes["scale"].as_float() == pytest.approx(8**-0.5, rel=1e-6)
    assert "Trilu" not in op_types(check.after)
    assert [v.name for v in check.after.graph.outputs] == ["o", "k", "v"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (PADDING_MASK, "skipped:mask depends on input values"),
        (NO_MASK, "skipped:no mask and several queries"),
    ],
    ids=["padding-mask", "bidirectional"],
)
def test_does_not_fire_without_causal_mask(typed, text, reason):
    check = check_pass(FuseGroupQueryAttention(), typed(text), expect_modified=False)
    assert check.stats == {reason: 1}


@pytest.mark.parametrize("component", ["decoder_init", "decoder_step"])
def test_tiny_decoders(tiny_component, component):
    model = tiny_component(component, FuseRmsNorm(), FuseSkipRmsNorm(), FuseRotaryEmbedding())
    check = check_pass(FuseGroupQueryAttention(), model, dims={"past": 5})
    assert check.stats == {"fused": 2}
    assert not {"Softmax", "Slice", "Neg"} & set(op_types(check.after))


def test_tiny_encoder_attention_is_not_causal(tiny_component):
    check = check_pass(FuseGroupQueryAttention(), tiny_component("encoder"), expect_modified=False)
    assert check.stats == {"skipped:mask is not causal": 2}
