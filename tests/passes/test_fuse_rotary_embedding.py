import pytest

from qgraph.passes.fuse_rotary_embedding import FuseRotaryEmbedding
from qgraph.testing import check_pass, op_types

CONSTANTS = """
    lo = Constant <value = int64[1] {0}> ()
    mid = Constant <value = int64[1] {4}> ()
    hi = Constant <value = int64[1] {9223372036854775807}> ()
    a3 = Constant <value = int64[1] {-1}> ()
    st = Constant <value = int64[1] {1}> ()
    ax1 = Constant <value = int64[1] {1}> ()
    inv = Constant <value = float[4] {1.0, 0.3, 0.1, 0.03}> ()
"""


def rotate(x: str) -> str:
    """x * cos + rotate_half(x) * sin with Slices, as the dynamo exporter writes it."""
    return f"""
    {x}c = Mul ({x}, cos)
    {x}2 = Slice ({x}, mid, hi, a3, st)
    {x}n = Neg ({x}2)
    {x}1 = Slice ({x}, lo, mid, a3, st)
    {x}rot = Concat <axis = -1> ({x}n, {x}1)
    {x}s = Mul ({x}rot, sin)
    {x}r = Add ({x}c, {x}s)
"""


ANGLES = """
    neg1 = Constant <value = int64[1] {-1}> ()
    p3 = Unsqueeze (position_ids, neg1)
    pf = Cast <to = 1> (p3)
    f = Mul (pf, inv)
    emb = Concat <axis = -1> (f, f)
    one = Constant <value = float {1.0}> ()
    c = Cos (emb)
    cs = Mul (c, one)
    cos = Unsqueeze (cs, ax1)
    s = Sin (emb)
    ss = Mul (s, one)
    sin = Unsqueeze (ss, ax1)
"""

DYNAMO = (
    '<ir_version: 10, opset_import: ["" : 18]>\n'
    "g (float[1,4,5,8] q, float[1,2,5,8] k, int64[1,5] position_ids)"
    " => (float[1,4,5,8] qr, float[1,2,5,8] kr) {"
    + CONSTANTS
    + ANGLES
    + rotate("q")
    + rotate("k")
    + "}"
)

TORCHSCRIPT_SPLIT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,4,5,8] q, int64[2,5] position_ids) => (float[2,4,5,8] y) {
    inv = Constant <value = float[1,4,1] {1.0, 0.3, 0.1, 0.03}> ()
    ax1 = Constant <value = int64[1] {1}> ()
    p1 = Unsqueeze (position_ids, ax1)
    pf = Cast <to = 1> (p1)
    fm = MatMul (inv, pf)
    f = Transpose <perm = [0, 2, 1]> (fm)
    emb = Concat <axis = 2> (f, f)
    c = Cos (emb)
    cc = Cast <to = 1> (c)
    cos = Unsqueeze (cc, ax1)
    s = Sin (emb)
    sc = Cast <to = 1> (s)
    sin = Unsqueeze (sc, ax1)
    halves = Constant <value = int64[2] {4, 4}> ()
    x1, x2 = Split <axis = 3> (q, halves)
    n = Neg (x2)
    rot = Concat <axis = -1> (n, x1)
    rs = Mul (rot, sin)
    qc = Mul (cos, q)
    y = Add (rs, qc)
}
"""

BSNH = (
    '<ir_version: 10, opset_import: ["" : 18]>\n'
    "g (float[1,5,4,8] q, int64[1,5] position_ids) => (float[1,5,4,8] qr) {"
    + CONSTANTS
    + """
    neg1 = Constant <value = int64[1] {-1}> ()
    p3 = Unsqueeze (position_ids, neg1)
    pf = Cast <to = 1> (p3)
    f = Mul (pf, inv)
    emb = Concat <axis = -1> (f, f)
    ax2 = Constant <value = int64[1] {2}> ()
    c = Cos (emb)
    cos = Unsqueeze (c, ax2)
    s = Sin (emb)
    sin = Unsqueeze (s, ax2)
"""
    + rotate("q")
    + "}"
)

INTERLEAVED = (
    '<ir_version: 10, opset_import: ["" : 18]>\n'
    "g (float[1,4,5,8] q, int64[1,5] position_ids) => (float[1,4,5,8] qr) {"
    + CONSTANTS
    + "    two = Constant <value = int64[1] {2}> ()\n"
    + ANGLES
    + rotate("q")
    .replace("Slice (q, mid, hi, a3, st)", "Slice (q, st, hi, a3, two)")
    .replace("Slice (q, lo, mid, a3, st)", "Slice (q, lo, hi, a3, two)")
    + "}"
)

TABLE_INPUTS = (
    '<ir_version: 10, opset_import: ["" : 18]>\n'
    "g (float[1,4,5,8] q, float[1,1,5,8] cos, float[1,1,5,8] sin) => (float[1,4,5,8] qr) {"
    + CONSTANTS
    + rotate("q")
    + "}"
)


def test_dynamo_q_and_k_share_one_table(typed):
    check = check_pass(FuseRotaryEmbedding(), typed(DYNAMO))
    ops = op_types(check.after)
    assert check.stats == {"fused": 2}
    assert ops.count("RotaryEmbedding") == 2 and ops.count("Cos") == 1
    assert not {"Neg", "Slice", "Concat"} & set(ops)


@pytest.mark.parametrize("text", [TORCHSCRIPT_SPLIT, BSNH], ids=["torchscript-split", "bsnh"])
def test_other_spellings(typed, text):
    check = check_pass(FuseRotaryEmbedding(), typed(text))
    assert check.stats == {"fused": 1}
    rope = next(n for n in check.after.graph if n.op_type == "RotaryEmbedding")
    assert rope.domain == "com.microsoft"
    assert "Neg" not in op_types(check.after)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (INTERLEAVED, "skipped:rotate_half does not split the last axis in halves"),
        (TABLE_INPUTS, "skipped:cos/sin are not Cos/Sin of one duplicated angle tensor"),
    ],
    ids=["interleaved", "table-inputs"],
)
def test_does_not_fire(typed, text, reason):
    check = check_pass(FuseRotaryEmbedding(), typed(text), expect_modified=False)
    assert check.stats == {reason: 1}


@pytest.mark.parametrize("component", ["decoder_init", "decoder_step"])
def test_tiny_decoders(tiny_component, component):
    """q and k of 2 layers, one cos/sin table for all of them."""
    check = check_pass(FuseRotaryEmbedding(), tiny_component(component), dims={"past": 5})
    assert check.stats == {"fused": 4}
    assert op_types(check.after).count("Cos") == 1
