import numpy as np

from qgraph.passes.strip_reshape_allowzero import StripReshapeAllowzero
from qgraph.testing import check_pass, model_from_text

CONST_SHAPE = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,3,4] x) => (float[6,4] y) {
    s = Constant <value = int64[2] {6, 4}> ()
    y = Reshape <allowzero = 1> (x, s)
}
"""

DYNAMIC_SHAPE = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[N,4] x, int64[2] s) => (float[M,K] y) {
    y = Reshape <allowzero = 1> (x, s)
}
"""

ZERO_SHAPE = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[0,4] x) => (float[0,4] y) {
    s = Constant <value = int64[2] {0, 4}> ()
    y = Reshape <allowzero = 1> (x, s)
}
"""


def test_strips_constant_shape():
    p = StripReshapeAllowzero()
    check = check_pass(p, model_from_text(CONST_SHAPE))
    (node,) = [n for n in check.after.graph if n.op_type == "Reshape"]
    assert "allowzero" not in node.attributes
    assert check.stats == {"stripped": 1}
    np.testing.assert_array_equal(check.outputs_before["y"], check.outputs_after["y"])


def test_does_not_fire_on_runtime_shape():
    p = StripReshapeAllowzero()
    feeds = {"x": np.ones((3, 4), np.float32), "s": np.array([4, 3], np.int64)}
    check = check_pass(p, model_from_text(DYNAMIC_SHAPE), expect_modified=False, feeds=feeds)
    assert check.stats["skipped:shape not constant"] == 1


def test_does_not_fire_when_shape_has_zero():
    p = StripReshapeAllowzero()
    check = check_pass(p, model_from_text(ZERO_SHAPE), expect_modified=False)
    assert check.stats["skipped:shape has a zero"] == 1
