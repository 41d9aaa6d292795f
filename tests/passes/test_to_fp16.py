import numpy as np
import onnx_ir as ir

from qgraph.instruments import verify
from qgraph.passes.to_fp16 import ToFp16
from qgraph.testing import check_pass, model_from_text
from tests.passes.bundles import as_initializers, branch_feeds, branch_model

# An encoder-style additive key mask built the way the seed's exporter built it:
# mask = (key is padding) * finfo(float32).min, scores + mask -> Softmax.
MASKED_ATTENTION = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[1,4,8] q, bool[1,1,8] pad, float[8,8] K, float[1] big_negative) => (float[1,4,8] p) {
    scores = MatMul (q, K)
    padf = Cast <to = 1> (pad)
    mask = Mul (padf, big_negative)
    masked = Add (scores, mask)
    p = Softmax <axis = -1> (masked)
}
"""


def masked_model() -> ir.Model:
    rng = np.random.default_rng(0)
    arrays = {
        "K": rng.standard_normal((8, 8)).astype(np.float32),
        "big_negative": np.array([np.finfo(np.float32).min], np.float32),
    }
    return as_initializers(model_from_text(MASKED_ATTENTION), arrays)


def feeds():
    pad = np.zeros((1, 1, 8), bool)
    pad[..., 6:] = True
    q = np.random.default_rng(1).standard_normal((1, 4, 8)).astype(np.float32)
    return {"q": q, "pad": pad}


def naive_fp16(model: ir.Model) -> ir.Model:
    """What a plain cast of every weight does: finfo.min -> -inf."""
    for value in model.graph.initializers.values():
        half = value.const_value.numpy().astype(np.float16).astype(np.float32)
        value.const_value = ir.tensor(half, name=value.name)
    return model


def test_naive_cast_reproduces_the_nan_trap():
    out = verify.run_model(naive_fp16(masked_model()), feeds())["p"]
    assert np.isnan(out).all()  # 0 * -inf = NaN on every valid position


def test_converts_and_clamps_masks():
    check = check_pass(ToFp16(min_elements=1), masked_model(), feeds=feeds())
    assert check.stats == {"clamped": 1, "converted": 2, "bytes saved": 130}
    out = check.outputs_after["p"]
    assert np.isfinite(out).all() and np.allclose(out[..., 6:], 0)
    types = {v.name: v.const_value.dtype for v in check.after.graph.initializers.values()}
    assert types == {"K_fp16": ir.DataType.FLOAT16, "big_negative_fp16": ir.DataType.FLOAT16}
    assert [v.dtype for v in check.after.graph.outputs] == [ir.DataType.FLOAT]


def test_does_not_fire_on_small_or_non_float_weights():
    check = check_pass(ToFp16(), masked_model(), feeds=feeds(), expect_modified=False)
    assert check.stats == {"skipped:nothing to convert": 1}


def test_converts_weights_read_in_if_branches_and_subgraph_initializers():
    """Top-level weights only the branches read get one top-level Cast; a branch's own
    initializer gets its Cast inside the branch. Both branches stay within tolerance."""
    model = branch_model()
    u = model.graph.initializers.pop("U")
    (if_node,) = model.graph
    else_branch = if_node.attributes["else_branch"].as_graph()
    else_branch.register_initializer(u)
    p = ToFp16(min_elements=1)
    check = check_pass(p, model, feeds=branch_feeds(model, use_cache=False))
    assert check.stats == {"converted": 3, "bytes saved": 2 * (80 * 64 + 64 * 48 + 80 * 48)}
    assert sorted(model.graph.initializers) == ["V_fp16", "W_fp16"]
    assert list(else_branch.initializers) == ["U_fp16"]
    assert [n.op_type for n in model.graph] == ["Cast", "Cast", "If"]
    assert [n.op_type for n in else_branch][0] == "Cast"
    feeds = branch_feeds(model, use_cache=True)
    before, after = verify.run_model(check.before, feeds), verify.run_model(model, feeds)
    assert not verify.compare(before, after, p.tolerance)
