import numpy as np

from qgraph.passes.fold_constants import FoldConstants
from qgraph.testing import check_pass, model_from_text, op_types
from tests.passes.bundles import as_initializers

FOLDABLE = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,4] x) => (float[2,3] y) {
    w = Constant <value = float[3,4] {1,2,3,4,5,6,7,8,9,10,11,12}> ()
    wt = Transpose <perm = [1, 0]> (w)
    two = Constant <value = float {2}> ()
    wt2 = Mul (wt, two)
    y = MatMul (x, wt2)
}
"""

NOTHING_CONSTANT = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,4] x, float[4,3] w) => (float[2,3] y) {
    y = MatMul (x, w)
}
"""


def test_folds_weight_preprocessing():
    p = FoldConstants()
    check = check_pass(p, model_from_text(FOLDABLE))
    assert op_types(check.before) == ["Constant", "Transpose", "Constant", "Mul", "MatMul"]
    assert op_types(check.after) == ["MatMul"]
    assert check.stats["nodes folded"] == 4


def test_does_not_fire_without_constants():
    check_pass(FoldConstants(), model_from_text(NOTHING_CONSTANT), expect_modified=False)


def test_respects_output_size_limit():
    p = FoldConstants(output_size_limit=4)
    check = check_pass(p, model_from_text(FOLDABLE))
    assert "MatMul" in op_types(check.after)


NAMED = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,4] x, float[2,3] z, float[3,4] wa, float[3,4] wb, float[4,3] taken)
    => (float[2,3] y, float[2,4] yz) {
    ta = Transpose <perm = [1, 0]> (wa)
    ya = MatMul (x, ta)
    tb = Transpose <perm = [1, 0]> (wb)
    yb = MatMul (x, tb)
    yt = MatMul (x, taken)
    s = Add (ya, yb)
    y = Add (s, yt)
    yz = MatMul (z, wb)
}
"""


def _named_model():
    rng = np.random.default_rng(0)
    arrays = {n: rng.standard_normal(s).astype(np.float32) for n, s in NAMED_SHAPES.items()}
    model = as_initializers(model_from_text(NAMED), arrays)
    for old, new in (("wa", "m.layers.0.q_proj.weight"), ("wb", "m.layers.0.k_proj.weight")):
        model.graph.initializers[old].name = new
    model.graph.initializers["taken"].name = "m.layers.0.k_proj.weight.T"
    return model


NAMED_SHAPES = {"wa": (3, 4), "wb": (3, 4), "taken": (4, 3)}


def test_folded_weights_are_named_after_their_source():
    """The transposed weight takes the source's name when the source is gone, else
    ``<source>.T`` (made unique), the same on every run."""
    names = []
    for _ in range(2):
        check = check_pass(FoldConstants(), _named_model())
        names.append(list(check.after.graph.initializers))
    assert names[0] == names[1]
    assert names[0] == [
        "m.layers.0.k_proj.weight",  # still read by ReduceSum
        "m.layers.0.k_proj.weight.T",  # an unrelated initializer that had the name first
        "m.layers.0.q_proj.weight",  # Transpose(q_proj.weight): the source is gone
        "m.layers.0.k_proj.weight.T_1",
    ]
    after = check.after.graph.initializers
    assert after["m.layers.0.q_proj.weight"].const_value.shape == (4, 3)
