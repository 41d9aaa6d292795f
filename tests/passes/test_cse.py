from qgraph.passes.cse import CommonSubexpressionElimination
from qgraph.testing import check_pass, model_from_text, op_types

DUPLICATES = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,4] x) => (float[2,4] y) {
    a = Relu (x)
    b = Relu (x)
    y = Add (a, b)
}
"""

DISTINCT = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,4] x) => (float[2,4] y) {
    a = Relu (x)
    b = Sigmoid (x)
    y = Add (a, b)
}
"""


def test_merges_duplicates():
    p = CommonSubexpressionElimination()
    check = check_pass(p, model_from_text(DUPLICATES))
    assert op_types(check.after) == ["Relu", "Add"]
    assert check.stats["nodes merged"] == 1


def test_does_not_fire_on_distinct_nodes():
    check_pass(CommonSubexpressionElimination(), model_from_text(DISTINCT), expect_modified=False)
