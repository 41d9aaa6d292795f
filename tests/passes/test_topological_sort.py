import onnx_ir as ir

from qgraph.passes.topological_sort import TopologicalSort
from qgraph.testing import check_pass, model_from_text, op_types

SORTED = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,4] x) => (float[2,4] y) {
    a = Relu (x)
    y = Neg (a)
}
"""


def unsorted_model() -> ir.Model:
    model = model_from_text(SORTED)
    relu = model.graph[0]
    model.graph.remove(relu)
    model.graph.append(relu)  # Neg now comes before the Relu that feeds it
    return model


def test_sorts():
    model = unsorted_model()
    assert op_types(model) == ["Neg", "Relu"]
    check = check_pass(TopologicalSort(), model)
    assert op_types(check.after) == ["Relu", "Neg"]


def test_does_not_fire_when_sorted():
    check_pass(TopologicalSort(), model_from_text(SORTED), expect_modified=False)
