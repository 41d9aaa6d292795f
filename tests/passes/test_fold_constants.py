from qgraph.passes.fold_constants import FoldConstants
from qgraph.testing import check_pass, model_from_text, op_types

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
