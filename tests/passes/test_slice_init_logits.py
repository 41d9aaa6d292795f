import numpy as np

from qgraph.passes.slice_init_logits import SliceInitLogits
from qgraph.testing import check_pass, model_from_text, op_types
from tests.passes.bundles import decoder

NOT_A_MATMUL = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[batch,seq,8] h) => (float[batch,seq,8] logits) {
    logits = Tanh (h)
}
"""


def test_slices_to_last_position():
    check = check_pass(SliceInitLogits(), decoder("seq"), dims={"seq": 5})
    assert op_types(check.after) == ["Gather", "MatMul", "Tanh", "Transpose", "Slice", "MatMul"]
    assert list(check.after.graph.outputs[0].shape) == ["batch", 1, 128]
    assert check.outputs_after["logits"].shape == (1, 1, 128)
    np.testing.assert_allclose(
        check.outputs_after["logits"], check.outputs_before["logits"][:, -1:], atol=1e-5
    )
    assert check.stats == {"sliced": 1}


def test_does_not_fire_without_matmul_head_or_when_already_sliced():
    check = check_pass(SliceInitLogits(), model_from_text(NOT_A_MATMUL), expect_modified=False)
    assert check.stats == {"skipped:logits not from a MatMul": 1}
    check = check_pass(SliceInitLogits(), decoder("1"), expect_modified=False)
    assert check.stats == {"skipped:already last position": 1}
