import pytest

from qgraph.passes.fuse_sibling_matmuls import FuseSiblingMatMuls
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
    import onnx_ir as ir

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
