import onnx_ir as ir
import pytest

from qgraph.passes._roles import SCOPES_KEY, role_of
from qgraph.passes.fuse_sibling_matmuls import FuseSiblingMatMuls
from qgraph.passes.quantize_int4 import QuantizeMatMulNBits
from qgraph.testing import check_pass, op_types


def weights(rows: int, cols: int) -> str:
    return ", ".join(str((i * 7 % 11) / 10 - 0.5) for i in range(rows * cols))


QKV_BIAS = f"""
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,5,16] x) => (float[2,5,8] q, float[2,5,4] k, float[2,5,4] v) {{
    wq = Constant <value = float[16,8] {{{weights(16, 8)}}}> ()
    wk = Constant <value = float[16,4] {{{weights(16, 4)}}}> ()
    wv = Constant <value = float[16,4] {{{weights(16, 4)}}}> ()
    bq = Constant <value = float[8] {{1, 2, 3, 4, 5, 6, 7, 8}}> ()
    bk = Constant <value = float[4] {{-1, -2, -3, -4}}> ()
    bv = Constant <value = float[4] {{0.5, 0.25, 0.125, 0}}> ()
    mq = MatMul (x, wq)
    q = Add (mq, bq)
    mk = MatMul (x, wk)
    k = Add (bk, mk)
    mv = MatMul (x, wv)
    v = Add (mv, bv)
}}
"""

GATE_UP = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[10,16] x, float[16,24] wg, float[16,24] wu) => (float[10,24] y) {
    g = MatMul (x, wg)
    s = Sigmoid (g)
    a = Mul (g, s)
    u = MatMul (x, wu)
    y = Mul (a, u)
}
"""

PARTIAL_BIAS = QKV_BIAS.replace("k = Add (bk, mk)", "k = Relu (mk)")
EXPOSED = GATE_UP.replace("=> (float[10,24] y)", "=> (float[10,24] y, float[10,24] u)")


def as_weights(model, names):
    """Graph inputs ``names`` -> random initializers (what an exporter stores)."""
    import numpy as np

    rng = np.random.default_rng(0)
    for name in names:
        value = next(v for v in model.graph.inputs if v.name == name)
        model.graph.inputs.remove(value)
        value.const_value = ir.tensor(rng.standard_normal((16, 24)).astype(np.float32))
        model.graph.register_initializer(value)
    return model


def test_qkv_with_biases(typed):
    check = check_pass(FuseSiblingMatMuls(), typed(QKV_BIAS))
    assert op_types(check.after) == ["MatMul", "Add", "Constant", "Split"]
    assert check.stats == {"fused": 1}
    assert [v.name for v in check.after.graph.outputs] == ["q", "k", "v"]


@pytest.mark.parametrize("text", [GATE_UP, PARTIAL_BIAS], ids=["gate-up-opset17", "partial-bias"])
def test_other_spellings(typed, text):
    model = as_weights(typed(text), ["wg", "wu"]) if text is GATE_UP else typed(text)
    check = check_pass(FuseSiblingMatMuls(), model)
    assert op_types(check.after).count("MatMul") == 1
    assert op_types(check.after).count("Split") == 1


def test_does_not_fire_when_a_result_is_a_graph_output(typed):
    model = as_weights(typed(EXPOSED), ["wg", "wu"])
    check = check_pass(FuseSiblingMatMuls(), model, expect_modified=False)
    assert check.stats == {"skipped:a sibling result is a graph output": 1}


@pytest.mark.parametrize(
    ("component", "fused"), [("encoder", 2), ("decoder_init", 4), ("decoder_step", 4)]
)
def test_tiny(tiny_component, component, fused):
    """q/k/v of every layer, and gate/up of every decoder layer."""
    check = check_pass(FuseSiblingMatMuls(), tiny_component(component), dims={"time": 300})
    assert check.stats == {"fused": fused}


def test_does_not_fire_on_mixed_element_types(typed):
    import numpy as np

    model = as_weights(typed(GATE_UP), ["wg", "wu"])
    wu = model.graph.initializers["wu"]
    wu.const_value = ir.tensor(wu.const_value.numpy().astype(np.float16))
    wu.dtype = ir.DataType.FLOAT16
    result = FuseSiblingMatMuls()(model)
    assert not result.modified


def test_packed_weight_is_computed_when_read_and_keeps_module_scopes(tiny_component):
    """No concatenated copy in memory at fusion time; roles and exclusions still see q/k/v."""
    model = tiny_component("decoder_step")
    FuseSiblingMatMuls()(model)
    packed = [n for n in model.graph if n.metadata_props.get(SCOPES_KEY)]
    assert len(packed) == 4  # q/k/v and gate/up of 2 layers
    for node in packed:
        assert isinstance(node.inputs[1].const_value, ir.LazyTensor)
    roles = sorted(role_of(n, n.inputs[1]) for n in packed)
    assert roles == ["gate+up", "gate+up", "q+k+v", "q+k+v"]
    QuantizeMatMulNBits(exclude=("*.layers.0.*",))(model)
    fp32 = {n.metadata_props.get(SCOPES_KEY, "") for n in model.graph if n.op_type == "MatMul"}
    assert any(".layers.0.self_attn.q_proj" in s for s in fp32)
    assert any(".layers.0.mlp.gate_proj" in s for s in fp32)
    assert not any(".layers.1." in s for s in fp32)
