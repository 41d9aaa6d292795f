import numpy as np
import onnx_ir as ir

from qgraph.passes.remove_unused import RemoveUnused
from qgraph.testing import check_pass, model_from_text, op_types
from tests.passes.bundles import branch_feeds, branch_model

DEAD = """
<ir_version: 10, opset_import: ["" : 18, "com.microsoft" : 1]>
g (float[2,4] x) => (float[2,4] y) {
    dead = Relu (x)
    dead2 = Sigmoid (dead)
    y = Neg (x)
}
"""

ALL_USED = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,4] x) => (float[2,4] y) {
    a = Relu (x)
    y = Neg (a)
}
"""


def test_removes_dead_nodes_and_opsets():
    p = RemoveUnused()
    check = check_pass(p, model_from_text(DEAD))
    assert op_types(check.after) == ["Neg"]
    assert "com.microsoft" not in check.after.opset_imports
    assert check.stats["nodes removed"] == 2


def test_does_not_fire_when_everything_is_used():
    check_pass(RemoveUnused(), model_from_text(ALL_USED), expect_modified=False)


def test_keeps_initializers_only_if_branches_read():
    model = branch_model()
    dead = ir.Value(name="D", const_value=ir.tensor(np.ones((4, 4), np.float32), name="D"))
    model.graph.register_initializer(dead)
    check = check_pass(RemoveUnused(), model, feeds=branch_feeds(model, use_cache=False))
    assert sorted(check.after.graph.initializers) == ["U", "V", "W"]
    assert check.stats["initializers removed"] == 1
