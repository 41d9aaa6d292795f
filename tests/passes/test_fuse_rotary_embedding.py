import numpy as np
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


# -- spellings of other exporters ------------------------------------------------------------------
def floats(arr) -> str:
    return ", ".join(f"{v:.9g}" for v in np.asarray(arr, np.float32).reshape(-1))


def cached_tables(max_pos: int = 16, half: int = 4, skew: float = 0.0) -> tuple[str, str]:
    """Hugging Face's cos_cached/sin_cached [max_pos, 2*half] (``skew`` breaks the duplication)."""
    inv = 1.0 / (10000 ** (np.arange(half) / half))
    f = np.outer(np.arange(max_pos), inv)
    emb = np.concatenate([f, f + skew], axis=-1)
    return floats(np.cos(emb)), floats(np.sin(emb))


def cached(skew: float = 0.0, sin_positions: str = "position_ids") -> str:
    """Rows of constant cos/sin tables gathered by position_ids (transformers 4.3x Llama)."""
    cos, sin = cached_tables(skew=skew)
    return (
        '<ir_version: 10, opset_import: ["" : 17]>\n'
        "g (float[2,4,5,8] q, float[2,2,5,8] k, int64[2,5] position_ids, int64[2,5] other)"
        " => (float[2,4,5,8] qr, float[2,2,5,8] kr)"
        f" <float[16,8] cos_cached = {{{cos}}}, float[16,8] sin_cached = {{{sin}}}> {{"
        + CONSTANTS
        + f"""
    rows = Constant <value = int64[1] {{12}}> ()
    cs = Slice (cos_cached, lo, rows, lo)
    ss = Slice (sin_cached, lo, rows, lo)
    cg = Gather <axis = 0> (cs, position_ids)
    sg = Gather <axis = 0> (ss, {sin_positions})
    cos = Unsqueeze (cg, ax1)
    sin = Unsqueeze (sg, ax1)
"""
        + rotate("q")
        + rotate("k")
        + "}"
    )


def offset_feeds(model) -> dict:
    """Positions 3..7 for the first row, 0..4 for the second (the Gather's real indices)."""
    rng = np.random.default_rng(1)
    feeds = {
        v.name: rng.standard_normal(list(v.shape)).astype(np.float32)
        for v in model.graph.inputs[:2]
    }
    pos = np.stack([np.arange(3, 8), np.arange(5)]).astype(np.int64)
    feeds.update(position_ids=pos, other=pos[::-1].copy())
    return feeds


def test_cached_tables_gathered_by_position(typed):
    model = typed(cached())
    check = check_pass(FuseRotaryEmbedding(), model, feeds=offset_feeds(model))
    assert check.stats == {"fused": 2}
    ropes = [n for n in check.after.graph if n.op_type == "RotaryEmbedding"]
    assert len(ropes) == 2 and all(n.inputs[1].name == "position_ids" for n in ropes)
    cos_half = ropes[0].inputs[2]
    assert cos_half is ropes[1].inputs[2] and cos_half.const_value.shape == (16, 4)
    assert not {"Gather", "Neg", "Slice", "cos_cached"} & {
        *op_types(check.after),
        *check.after.graph.initializers,
    }


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (cached(skew=0.5), "skipped:cos/sin table halves differ"),
        (
            cached(sin_positions="other"),
            "skipped:cos and sin rows are gathered at different positions",
        ),
    ],
    ids=["halves-differ", "other-positions"],
)
def test_cached_tables_do_not_fire(typed, text, reason):
    model = typed(text)
    check = check_pass(
        FuseRotaryEmbedding(), model, expect_modified=False, feeds=offset_feeds(model)
    )
    assert check.stats == {reason: 2}


COMPUTED_TABLE = (
    '<ir_version: 10, opset_import: ["" : 18]>\n'
    "g (float[3,4,5,8] q, int32[1,5] position_ids) => (float[3,4,5,8] qr) {"
    + CONSTANTS
    + """
    start = Constant <value = int64 {0}> ()
    limit = Constant <value = int64 {32}> ()
    step = Constant <value = int64 {1}> ()
    t = Range (start, limit, step)
    neg1 = Constant <value = int64[1] {-1}> ()
    t2 = Unsqueeze (t, neg1)
    tf = Cast <to = 1> (t2)
    f = Mul (tf, inv)
    emb = Concat <axis = -1> (f, f)
    half = Constant <value = float {0.5}> ()
    c = Cos (emb)
    cc = Cast <to = 1> (c)
    cm = Mul (half, cc)
    s = Sin (emb)
    sc = Cast <to = 1> (s)
    sm = Mul (sc, half)
    cg = Gather (cm, position_ids)
    sg = Gather (sm, position_ids)
    cos = Unsqueeze (cg, ax1)
    sin = Unsqueeze (sg, ax1)
"""
    + rotate("q")
    + "}"
)


def test_computed_table_rows(typed):
    """A table computed in the graph (Cos of a duplicated [32, D/2] angle grid), scaled after a
    Cast, int32 positions of batch 1 for a batch-3 input: the half table, int64 positions
    broadcast to the batch."""
    check = check_pass(FuseRotaryEmbedding(), typed(COMPUTED_TABLE))
    assert check.stats == {"fused": 1}
    ops = op_types(check.after)
    assert ops.count("Cos") == 1 and "Gather" not in ops and "Concat" in ops  # batch of the Expand
    rope = next(n for n in check.after.graph if n.op_type == "RotaryEmbedding")
    table = rope.inputs[
        2
    ].producer()  # Mul(Cos(f)): the half table scaled (float->float Cast dropped)
    assert [table.op_type, table.inputs[0].producer().op_type] == ["Mul", "Cos"]
    assert table.inputs[0].producer().inputs[0].name == "f"
    assert rope.inputs[1].producer().op_type == "Expand"


RUNTIME_HALF = (
    '<ir_version: 8, opset_import: ["" : 17]>\n'
    "g (float[batch,heads,seq,8] q, int64[batch,seq] position_ids)"
    " => (float[batch,heads,seq,8] qr) {"
    + CONSTANTS
    + ANGLES
    + """
    shape = Shape (q)
    three = Constant <value = int64 {3}> ()
    d = Gather <axis = 0> (shape, three)
    two = Constant <value = int64 {2}> ()
    h = Div (d, two)
    hc = Cast <to = 7> (h)
    zero = Constant <value = int64[1] {0}> ()
    h1 = Unsqueeze (hc, zero)
    h2 = Unsqueeze (hc, zero)
"""
    + rotate("q")
    .replace("Slice (q, mid, hi, a3, st)", "Slice (q, h2, hi, a3, st)")
    .replace("Slice (q, lo, mid, a3, st)", "Slice (q, lo, h1, a3, st)")
    + "}"
)


def test_half_size_computed_from_the_shape(typed):
    """TorchScript's rotate_half: x[..., : x.shape[-1] // 2] with a static head size."""
    check = check_pass(FuseRotaryEmbedding(), typed(RUNTIME_HALF), dims={"batch": 2, "seq": 5})
    assert check.stats == {"fused": 1}
    assert not {"Neg", "Slice", "Div"} & set(op_types(check.after))


def test_half_size_of_an_unknown_head_does_not_fire(typed):
    text = RUNTIME_HALF.replace("seq,8]", "seq,head]")
    check = check_pass(
        FuseRotaryEmbedding(),
        typed(text),
        expect_modified=False,
        dims={"batch": 2, "seq": 5, "head": 8},
    )
    assert check.stats == {"skipped:input is not 4-D with an even static head size": 1}


def split_graph(opset: int, split: str) -> str:
    return (
        f'<ir_version: 8, opset_import: ["" : {opset}]>\n'
        "g (float[2,4,5,8] q, int64[2,5] position_ids) => (float[2,4,5,8] y) {"
        + CONSTANTS
        + ANGLES
        + f"""
    x1, x2 = Split {split}
    n = Neg (x2)
    rot = Concat <axis = -1> (n, x1)
    rs = Mul (rot, sin)
    qc = Mul (q, cos)
    y = Add (qc, rs)
}}"""
    )


SPLIT_SIZES = """
    shape = Shape <start = 3> (q)
    two = Constant <value = int64[1] {2}> ()
    h = Div (shape, two)
    sizes = Concat <axis = 0> (h, h)
"""


@pytest.mark.parametrize(
    ("opset", "split"),
    [
        (18, "<axis = -1, num_outputs = 2> (q)"),
        (12, "<axis = 3, split = [4, 4]> (q)"),
        (12, "<axis = -1> (q)"),
        (17, "<axis = -1> (q, sizes)"),
    ],
    ids=["num-outputs", "split-attribute", "equal-parts", "sizes-from-shape"],
)
def test_split_spellings(typed, opset, split):
    text = split_graph(opset, split)
    if "sizes" in split:
        text = text.replace("    x1, x2", SPLIT_SIZES + "    x1, x2")
    if opset < 13:  # Unsqueeze takes its axes as an attribute before opset 13
        text = text.replace(
            "Unsqueeze (position_ids, neg1)", "Unsqueeze <axes = [-1]> (position_ids)"
        )
        text = text.replace("Unsqueeze (cs, ax1)", "Unsqueeze <axes = [1]> (cs)")
        text = text.replace("Unsqueeze (ss, ax1)", "Unsqueeze <axes = [1]> (ss)")
    check = check_pass(FuseRotaryEmbedding(), typed(text))
    assert check.stats == {"fused": 1}
    assert not {"Split", "Neg"} & set(op_types(check.after))


def test_unequal_split_does_not_fire(typed):
    text = split_graph(17, "<axis = -1> (q, sizes)").replace(
        "    x1, x2", "    sizes = Constant <value = int64[2] {3, 5}> ()\n    x1, x2"
    )
    check = check_pass(FuseRotaryEmbedding(), typed(text), expect_modified=False)
    assert check.stats == {"skipped:rotate_half does not split the last axis in halves": 1}


def partial(layout: str) -> str:
    """Rotary on the first 4 of 8 channels (GPT-NeoX, Phi): x[..., :4] rotated, x[..., 4:] kept."""
    shape, axis = ("[1,4,5,8]", "ax1") if layout == "bnsh" else ("[1,5,4,8]", "ax2")
    return (
        '<ir_version: 10, opset_import: ["" : 18]>\n'
        f"g (float{shape} q, int64[1,5] position_ids) => (float{shape} y) {{"
        + """
    lo = Constant <value = int64[1] {0}> ()
    rd = Constant <value = int64[1] {4}> ()
    mid = Constant <value = int64[1] {2}> ()
    hi = Constant <value = int64[1] {9223372036854775807}> ()
    a3 = Constant <value = int64[1] {-1}> ()
    st = Constant <value = int64[1] {1}> ()
    ax1 = Constant <value = int64[1] {1}> ()
    ax2 = Constant <value = int64[1] {2}> ()
    inv = Constant <value = float[2] {1.0, 0.1}> ()
"""
        + ANGLES.replace("Unsqueeze (cs, ax1)", f"Unsqueeze (cs, {axis})")
        .replace("Unsqueeze (ss, ax1)", f"Unsqueeze (ss, {axis})")
        .replace("ax1 = Constant", "unused = Constant")
        + """
    x = Slice (q, lo, rd, a3, st)
    xp = Slice (q, rd, hi, a3, st)
"""
        + rotate("x")
        + """
    y = Concat <axis = -1> (xr, xp)
}"""
    )


def test_partial_rotation(typed):
    check = check_pass(FuseRotaryEmbedding(), typed(partial("bnsh")))
    assert check.stats == {"fused": 1}
    rope = next(n for n in check.after.graph if n.op_type == "RotaryEmbedding")
    attrs = {k: a.value for k, a in rope.attributes.items()}
    assert attrs == {"interleaved": 0, "num_heads": 4, "rotary_embedding_dim": 4}
    assert rope.inputs[0].name == "q"
    assert not {"Slice", "Neg"} & set(op_types(check.after))


def test_partial_rotation_bsnh_keeps_the_slices(typed):
    """[B,S,H,D] runs on a 3-D view: the rotary fuses on the sliced channels, Slice/Concat stay."""
    check = check_pass(FuseRotaryEmbedding(), typed(partial("bsnh")))
    assert check.stats == {"fused": 1}
    ops = op_types(check.after)
    assert ops.count("Slice") == 2 and "Neg" not in ops and "RotaryEmbedding" in ops
