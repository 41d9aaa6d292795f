"""quantize-int4 / quantize-int8 on MatMuls inside ``If`` branches that read top-level weights
(Whisper's ``decoder_model_merged`` in small): rewritten in both branches, packed once."""

import numpy as np
import onnx_ir as ir
import pytest

from qgraph.bundle import Bundle
from qgraph.instruments import verify
from qgraph.passes._blockquant import block_quantize
from qgraph.passes._roles import role_of
from qgraph.passes.quantize_int4 import QuantizeMatMulNBits
from qgraph.passes.quantize_int8 import QuantizeInt8
from qgraph.testing import check_pass, model_from_text
from tests.passes.bundles import as_initializers, branch_feeds, branch_model


def branches(model: ir.Model) -> list[ir.Graph]:
    (node,) = [n for n in model.graph if n.op_type == "If"]
    return [node.attributes[b].as_graph() for b in ("then_branch", "else_branch")]


def check_both_branches(p, model: ir.Model):
    """``check_pass`` on the then-branch inputs, plus the else-branch outputs compared alike."""
    check = check_pass(p, model, feeds=branch_feeds(model, use_cache=True))
    feeds = branch_feeds(model, use_cache=False)
    before, after = verify.run_model(check.before, feeds), verify.run_model(model, feeds)
    assert not verify.compare(before, after, p.tolerance)
    return check


def test_int4_rewrites_both_branches_and_packs_each_weight_once(tmp_path):
    model = branch_model()
    sources = {n: v.const_value.numpy().copy() for n, v in model.graph.initializers.items()}
    check = check_both_branches(QuantizeMatMulNBits(), model)
    assert check.stats == {"quantized": 5}
    then_g, else_g = branches(model)
    assert [n.op_type for n in then_g] == ["MatMulNBits", "Relu", "MatMulNBits"]
    assert [n.op_type for n in else_g] == ["MatMulNBits", "Sigmoid", "MatMulNBits"] + [
        "MatMulNBits",
        "Add",
    ]
    assert not then_g.initializers and not else_g.initializers
    # one packed weight, scales and zero points per source, top-level, read by both branches
    assert sorted(model.graph.initializers) == sorted(
        f"{w}_{part}" for w in "WVU" for part in ("Q4", "scales", "zero_points")
    )
    assert then_g[0].inputs[1] is else_g[0].inputs[1] is model.graph.initializers["W_Q4"]
    assert then_g[2].inputs[1] is else_g[2].inputs[1] is model.graph.initializers["V_Q4"]

    bundle = Bundle()
    bundle.add_component("decoder_model_merged", model)
    bundle.save(tmp_path / "out")
    saved = Bundle.load(tmp_path / "out").components["decoder_model_merged"]
    stored = sum(v.const_value.nbytes for g in saved.graphs() for v in g.initializers.values())
    expected = sum(a.nbytes for w in sources.values() for a in block_quantize(w, 4, 64, False))
    assert stored == expected  # each weight once, no FP32 copy left
    assert all(
        v.const_value.dtype != ir.DataType.FLOAT or v.name.endswith("_scales")
        for v in saved.graph.initializers.values()
    )


def test_int4_exclusions_hold_in_branches():
    model = branch_model()
    check = check_both_branches(QuantizeMatMulNBits(exclude=("V",)), model)
    assert check.stats == {"quantized": 3, "skipped:excluded": 2}
    assert [n.op_type for n in branches(model)[0]] == ["MatMulNBits", "Relu", "MatMul"]
    assert "V" in model.graph.initializers and "W" not in model.graph.initializers


NOT_CONSTANT = """
<ir_version: 10, opset_import: ["" : 18]>
g (bool[1] use_cache_branch, float[2,5,80] x, float[80,64] A, float[80,64] W)
    => (float[2,5,64] y) {
    y = If (use_cache_branch) <
        then_branch = with_past () => (float[2,5,64] t_y) {
            t_y = MatMul (x, A)
        },
        else_branch = no_past () => (float[2,5,64] e_y) {
            e_w = Relu (W)
            e_y = MatMul (x, e_w)
        }
    >
}
"""


@pytest.mark.parametrize("p", [QuantizeMatMulNBits(), QuantizeInt8()], ids=str)
def test_does_not_fire_on_weights_computed_in_a_branch_or_fed(p):
    rng = np.random.default_rng(2)
    model = as_initializers(
        model_from_text(NOT_CONSTANT), {"W": rng.standard_normal((80, 64)).astype(np.float32)}
    )
    check = check_pass(p, model, expect_modified=False, feeds=branch_feeds(model, False))
    assert check.stats == {"skipped:weight is not a constant": 2}


def test_int8_rewrites_both_branches_once():
    model = branch_model()
    check = check_both_branches(QuantizeInt8(), model)
    assert check.stats == {"quantized": 5}
    for g in branches(model):
        assert "MatMul" not in [n.op_type for n in g] and not g.initializers
        # one DynamicQuantizeLinear per branch for x (read by W's and U's MatMuls)
    assert [n.op_type for n in branches(model)[1]].count("DynamicQuantizeLinear") == 2
    assert sorted(model.graph.initializers) == sorted(
        f"{w}_{part}" for w in "WVU" for part in ("quantized", "scale")
    )


def test_cross_attention_is_a_decoder_role():
    node = ir.node("MatMul", [ir.Value(name="x"), ir.Value(name="w")])
    for scope, role in [
        ("model.decoder.layers.0.encoder_attn.k_proj", "k"),
        ("model.decoder.layers.0.encoder_attn.out_proj", "o"),
        ("model.encoder.layers.0.self_attn.k_proj", "encoder"),
        ("model.audio_encoder.layers.0.fc1", "encoder"),
    ]:
        node.metadata_props["pkg.torch.onnx.name_scopes"] = repr(["", scope, "linear"])
        assert role_of(node, node.inputs[1]) == role, scope
