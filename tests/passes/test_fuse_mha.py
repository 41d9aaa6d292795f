import numpy as np
import onnx_ir as ir
import pytest

from qgraph.instruments import verify
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


def test_grouped_heads_with_padding_mask_read_repeated_keys_as_bnsh(typed):
    """fuse-gqa leaves grouped attention with a key-padding mask: MHA takes the repeated
    keys/values as [B,H,L,D] and the mask as attention_bias (exact for any mask values)."""
    check = check_pass(FuseMultiHeadAttention(), typed(GROUPED))
    mha = next(n for n in check.after.graph if n.op_type == "MultiHeadAttention")
    assert [i.shape.rank() for i in mha.inputs[1:3]] == [4, 4]
    assert check.stats == {"fused": 1}


def test_does_not_fire_when_only_keys_are_repeated(typed):
    text = GROUPED.replace("a = MatMul (p, vr)", "a = MatMul (p, v)")
    check = check_pass(FuseMultiHeadAttention(), typed(text), expect_modified=False)
    assert check.stats == {"skipped:keys and values are not cached and repeated alike": 1}


# -- other exporters' spellings -------------------------------------------------------------------
BERT_TS_KEYS = ENCODER.replace(
    "kT = Transpose <perm = [0, 1, 3, 2]> (k)", "kT = Transpose <perm = [0, 2, 3, 1]> (k4)"
)
"""TorchScript BERT / Whisper encoder: k.view(B,S,H,D).permute(0,2,3,1)."""

DYNAMO_SDPA = (
    HEAD.format(rows=1, out="float[2,6,32]").replace("float[2,1,1,6] mask", "bool[2,1,1,6] keep")
    + project("q")
    + project("k")
    + project("v")
    + """
    root = Constant <value = float {0.59460356}> ()
    qs = Mul (q, root)
    flat = Constant <value = int64[3] {8, 6, 8}> ()
    kf = Reshape (k, flat)
    kft = Transpose <perm = [0, 2, 1]> (kf)
    back = Constant <value = int64[4] {2, 4, 8, 6}> ()
    kT = Reshape (kft, back)
    kTs = Mul (kT, root)
    sc = MatMul (qs, kTs)
    zero = Constant <value = float {0.0}> ()
    low = Constant <value = float {-inf}> ()
    mask = Where (keep, zero, low)
    msk = Add (sc, mask)
    p = Softmax <axis = -1> (msk)
    nan = IsNaN (p)
    pz = Where (nan, zero, p)
    a = MatMul (pz, v)
    at = Transpose <perm = [0, 2, 1, 3]> (a)
    merge = Constant <value = int64[3] {2, 6, 32}> ()
    o = Reshape (at, merge)
}
"""
)
"""dynamo's SDPA lowering: sqrt(scale) on q and k, keys transposed through 3-D reshapes, a
boolean mask as Where(keep, 0, -inf) and the Where(IsNaN(p), 0, p) guard."""


def test_keys_transposed_from_bshd(typed):
    check = check_pass(FuseMultiHeadAttention(), typed(BERT_TS_KEYS))
    ops = op_types(check.after)
    assert ops.count("MultiHeadAttention") == 1 and "Transpose" not in ops
    assert check.stats == {"fused": 1}


def test_dynamo_sdpa_lowering(typed):
    keep = np.ones((2, 1, 1, 6), bool)
    keep[1, ..., 4:] = False
    keep_all_masked = keep.copy()
    keep_all_masked[0] = False  # a fully masked row: the guard keeps the output 0, not NaN
    model = typed(DYNAMO_SDPA)
    for mask in (keep, keep_all_masked):
        feeds = {**verify.sample_inputs(model), "keep": mask}
        check = check_pass(FuseMultiHeadAttention(), typed(DYNAMO_SDPA), feeds=feeds)
        assert check.stats == {"fused": 1}
    mha = next(n for n in check.after.graph if n.op_type == "MultiHeadAttention")
    assert mha.attributes["scale"].as_float() == pytest.approx(8**-0.5, rel=1e-6)
    assert not {"Softmax", "Transpose"} & set(op_types(check.after))
    assert np.all(check.outputs_after["o"][0] == 0)


def test_does_not_fire_when_key_reshapes_are_not_a_transpose(typed):
    """Reshape -> Transpose([0,2,1]) -> Reshape is k^T only when the flattening keeps [L,D]
    whole; here it is [B*H, D, L]-shaped, mixing positions and channels."""
    text = DYNAMO_SDPA.replace("{8, 6, 8}", "{8, 8, 6}")
    check = check_pass(FuseMultiHeadAttention(), typed(text), expect_modified=False)
    assert check.stats == {"skipped:keys are not provably transposed through reshapes": 1}


# -- decoders with a KV cache and a padding mask (Hugging Face, past_key_values) -------------------
def cached(x: str) -> str:
    """Keep heads 0-1 of x, append them to the past cache, repeat each head twice."""
    return f"""
    {x}2 = Slice ({x}, lo, two, ax1)
    {x}c = Concat <axis = 2> (past_{x}, {x}2)
    {x}u = Unsqueeze ({x}c, ax2)
    {x}e = Expand ({x}u, rep)
    {x}r = Reshape ({x}e, heads)
"""


CACHED = (
    GROUPED.replace(grouped("k") + grouped("v"), cached("k") + cached("v"))
    .replace(
        "float[2,1,1,6] mask", "float[2,1,6,9] mask, float[2,2,3,8] past_k, float[2,2,3,8] past_v"
    )
    .replace("=> (float[2,6,32] o)", "=> (float[2,6,32] o, float[2,2,9,8] kc, float[2,2,9,8] vc)")
    .replace("{2, 4, 6, 8}", "{2, 4, 9, 8}")
)
"""Hugging Face decoder step with past_key_values and a 4-D causal + padding mask (value
dependent, so fuse-gqa leaves it): repeat_kv after the cache concat."""


def test_cached_decoder_reads_concatenated_repeated_keys_as_bnsh(typed):
    """MHA takes the concatenated, repeated keys/values as [B,H,L,D] (no past inputs); the
    graph's own Concat still feeds the present outputs; the mask is the attention_bias."""
    model = typed(CACHED)
    mask = np.zeros((2, 1, 6, 9), np.float32)
    mask[1, ..., :2] = -1e9  # left padding of batch row 1
    mask[..., 3:] += np.triu(np.full((6, 6), -1e9, np.float32), 1)
    feeds = {**verify.sample_inputs(model), "mask": mask}
    check = check_pass(FuseMultiHeadAttention(), model, feeds=feeds)
    mha = next(n for n in check.after.graph if n.op_type == "MultiHeadAttention")
    assert [i.shape.rank() for i in mha.inputs[1:3]] == [4, 4] and len(mha.inputs) == 6
    ops = op_types(check.after)
    assert ops.count("Concat") == 2 and "Softmax" not in ops
    assert check.stats == {"fused": 1}


def test_does_not_fire_when_only_keys_are_cached(typed):
    """The value cache is appended in two pieces: not a (past, new) pair like the keys'."""
    text = CACHED.replace(
        "vc = Concat <axis = 2> (past_v, v2)", "vc = Concat <axis = 2> (past_v, pv1, v2)"
    )
    text = text.replace("float[2,2,3,8] past_v", "float[2,2,2,8] past_v, float[2,2,1,8] pv1")
    check = check_pass(FuseMultiHeadAttention(), typed(text), expect_modified=False)
    assert check.stats == {"skipped:keys and values are not cached and repeated alike": 1}


def test_mask_with_unknown_head_axis(typed):
    """TorchScript's Hugging Face mask is Expand(..., computed shape): its head axis is not
    static, but broadcasting it against [B,4,S,L] scores proves it is 1 or 4."""
    text = CACHED.replace("float[2,1,6,9] mask", "float[2,mh,6,9] mask")
    model = typed(text)
    feeds = {**verify.sample_inputs(model), "mask": np.zeros((2, 4, 6, 9), np.float32)}
    feeds["mask"][0, 1, :, 4:] = -1e9  # a different mask per head
    check = check_pass(FuseMultiHeadAttention(), model, feeds=feeds)
    assert check.stats == {"fused": 1}


def test_does_not_fire_on_a_rank2_mask(typed):
    text = ENCODER.replace("float[2,1,1,6] mask", "float[1,6] mask")
    check = check_pass(FuseMultiHeadAttention(), typed(text), expect_modified=False)
    assert check.stats == {"skipped:mask is not [B|1, H|1, S|1, L]": 1}


def test_sdpa_lowering_with_keys_reshaped_back_to_minus_one(typed):
    """The hand-written / TorchScript SDPA lowering reshapes k^T back to
    ``Concat(Shape(k)[:2], [D], [-1])``: B, H, D are proven, so the -1 is L."""
    text = (
        DYNAMO_SDPA.replace(
            "back = Constant <value = int64[4] {2, 4, 8, 6}> ()",
            """lead = Shape <start = 0, end = 2> (k)
    hd = Constant <value = int64[1] {8}> ()
    rest = Constant <value = int64[1] {-1}> ()
    back = Concat <axis = 0> (lead, hd, rest)""",
        )
        .replace("float[2,6,32] h", "float[N,6,32] h")
        .replace("bool[2,1,1,6] keep", "bool[N,1,1,6] keep")
        .replace("{2, 6, 4, 8}", "{0, 6, 4, 8}")
        .replace("{8, 6, 8}", "{-1, 6, 8}")
        .replace("{2, 6, 32}", "{0, 6, 32}")
        .replace("(float[2,6,32] o)", "(float[N,6,32] o)")
    )
    model = typed(text)
    check = check_pass(FuseMultiHeadAttention(), model)
    assert check.stats == {"fused": 1}
    assert not {"Softmax", "Transpose"} & set(op_types(check.after))


def ts_project(x: str) -> str:
    """TorchScript's head split: Reshape to [B, S, -1, 8] read through Shape nodes."""
    return f"""
    {x}m = MatMul (h, w{x})
    {x}l = Add ({x}m, b{x})
    {x}4 = Reshape ({x}l, split)
    {x} = Transpose <perm = [0, 2, 1, 3]> ({x}4)
"""


TS_ENCODER = (
    """
<ir_version: 10, opset_import: ["" : 17]>
g (float[N,S,32] h, float[32,32] wq, float[32] bq, float[32,32] wk, float[32] bk, float[32,32] wv,
   float[32] bv, float[32,32] wo, float[N,1,1,S] mask) => (float[N,S,32] y) {
    hs = Shape (h)
    i0 = Constant <value = int64 {0}> ()
    i1 = Constant <value = int64 {1}> ()
    ax = Constant <value = int64[1] {0}> ()
    b0 = Gather <axis = 0> (hs, i0)
    s0 = Gather <axis = 0> (hs, i1)
    b1 = Unsqueeze (b0, ax)
    s1 = Unsqueeze (s0, ax)
    m1 = Constant <value = int64[1] {-1}> ()
    d8 = Constant <value = int64[1] {8}> ()
    split = Concat <axis = 0> (b1, s1, m1, d8)
"""
    + ts_project("q")
    + ts_project("k")
    + ts_project("v")
    + """
    kT = Transpose <perm = [0, 1, 3, 2]> (k)
    sc = MatMul (q, kT)
    scale = Constant <value = float {0.35355339}> ()
    scs = Mul (sc, scale)
    msk = Add (scs, mask)
    p = Softmax <axis = -1> (msk)
    a = MatMul (p, v)
    at = Transpose <perm = [0, 2, 1, 3]> (a)
    merge = Concat <axis = 0> (b1, s1, m1)
    o = Reshape (at, merge)
    y = MatMul (o, wo)
}
"""
)
"""TorchScript BERT / Whisper: head split and merge with -1 sizes computed from Shape nodes."""


def test_torchscript_head_split_and_merge_with_run_time_sizes(typed):
    """The head count (-1 of the split) is solved from the element count, and the merge's
    width is the output projection's rows: the merge Reshape goes with the site."""
    check = check_pass(FuseMultiHeadAttention(), typed(TS_ENCODER))
    assert check.stats == {"fused": 1}
    ops = op_types(check.after)
    assert ops.count("MultiHeadAttention") == 1 and "Reshape" not in ops
    assert not {"Softmax", "Transpose"} & set(ops)


def test_merge_width_from_the_element_count(typed):
    """Without a projection after the merge, its -1 is still solved (``qgraph.shapes``: the
    [B,S,H,D] attention output has H*D per position), so the merge goes with the site."""
    text = TS_ENCODER.replace("float[32,32] wo,", "").replace("y = MatMul (o, wo)", "y = Relu (o)")
    check = check_pass(FuseMultiHeadAttention(), typed(text))
    assert check.stats == {"fused": 1}
    assert "Reshape" not in op_types(check.after)


def test_does_not_fire_when_the_head_split_is_not_provable(typed):
    """The split's batch comes from another tensor: the -1 (heads) cannot be solved."""
    text = TS_ENCODER.replace("float[N,1,1,S] mask)", "float[N,1,1,S] mask, float[M] other)")
    text = text.replace(
        "b0 = Gather <axis = 0> (hs, i0)", "os = Shape (other)\n    b0 = Gather <axis = 0> (os, i0)"
    )
    check = check_pass(FuseMultiHeadAttention(), typed(text), expect_modified=False)
    assert check.stats == {"skipped:heads or head size not static": 1}


def _in_if_branch(text: str) -> ir.Model:
    """The attention graph's body as the then-branch of an If (outer-scope inputs), the else
    branch a plain Identity: the spelling of our exporter's merged Whisper decoder."""
    import onnx
    from onnx import helper

    from qgraph.testing import IR_VERSION

    g = onnx.parser.parse_model(text).graph
    out = g.output[0]
    dims = [d.dim_value for d in out.type.tensor_type.shape.dim]
    then = helper.make_graph(list(g.node), "then", [], [out], list(g.initializer))
    other = helper.make_graph(
        [helper.make_node("Identity", ["h"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", out.type.tensor_type.elem_type, dims)],
    )
    cond = helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])
    main = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
        "main",
        [cond, *g.input],
        [helper.make_tensor_value_info("y", out.type.tensor_type.elem_type, dims)],
    )
    proto = helper.make_model(main, opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def test_attention_inside_an_if_branch():
    """Sites in subgraphs fuse in their own graph (the merged decoder's If branches)."""
    model = _in_if_branch(ENCODER)
    feeds = {**verify.sample_inputs(model), "c": np.array(True)}
    check = check_pass(FuseMultiHeadAttention(), model, feeds=feeds)
    assert check.stats == {"fused": 1}
    assert [n.op_type for n in check.after.graph] == ["If"]
    ops = op_types(check.after)  # every graph's nodes
    assert "MultiHeadAttention" in ops and "Softmax" not in ops


CACHED_FULL_HEADS = (
    ENCODER.replace(
        "kT = Transpose <perm = [0, 1, 3, 2]> (k)",
        """kc = Concat <axis = 2> (past_k, k)
    vc = Concat <axis = 2> (past_v, v)
    kT = Transpose <perm = [0, 1, 3, 2]> (kc)""",
    )
    .replace("a = MatMul (p, v)", "a = MatMul (p, vc)")
    .replace(
        "float[2,1,1,6] mask", "float[2,1,6,9] mask, float[2,4,3,8] past_k, float[2,4,3,8] past_v"
    )
    .replace("=> (float[2,6,32] o)", "=> (float[2,6,32] o, float[2,4,9,8] kc, float[2,4,9,8] vc)")
)


def test_cached_keys_with_unnamed_concat_dims(typed):
    """TorchScript leaves the caches' Concat outputs with fresh names: their batch and total
    length are proven from the Concat inputs (Concat keeps the other axes equal)."""
    model = typed(CACHED_FULL_HEADS)
    for node in model.graph:
        if node.op_type == "Concat" and node.outputs[0].name in ("kc", "vc"):
            n = node.outputs[0].name
            node.outputs[0].shape = ir.Shape([f"unk__{n}0", 4, f"unk__{n}2", 8])
    check = check_pass(FuseMultiHeadAttention(), model)
    assert check.stats == {"fused": 1}
    mha = next(n for n in check.after.graph if n.op_type == "MultiHeadAttention")
    assert [v.name for v in mha.inputs[1:3]] == ["kc", "vc"]
