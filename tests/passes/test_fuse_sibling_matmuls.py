import numpy as np
import onnx_ir as ir
import pytest

from qgraph.instruments import verify
from qgraph.passes._roles import SCOPES_KEY, role_of
from qgraph.passes.fuse_sibling_matmuls import FuseSiblingMatMuls
from qgraph.passes.quantize_int4 import QuantizeMatMulNBits
from qgraph.testing import check_pass, model_from_text, op_types
from tests.passes.bundles import as_initializers, branch_feeds


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


# -- inside If branches (Whisper's decoder_model_merged) ------------------------------------------
QKV_BRANCHES = """
<ir_version: 10, opset_import: ["" : 18]>
g (bool[1] use_cache_branch, float[2,5,16] x) => (float[2,5,8] y) {
    y = If (use_cache_branch) <
        then_branch = with_past () => (float[2,5,8] t_y) {
            t_q = MatMul (x, Wq)
            t_k = MatMul (x, Wk)
            t_v = MatMul (x, Wv)
            t_kv = Concat <axis = -1> (t_k, t_v)
            t_y = Mul (t_q, t_kv)
        },
        else_branch = no_past () => (float[2,5,8] e_y) <float[2,5,16] e_h> {
            e_h = Tanh (x)
            e_q = MatMul (e_h, Wq)
            e_k = MatMul (e_h, Wk)
            e_v = MatMul (e_h, Wv)
            e_kv = Concat <axis = -1> (e_k, e_v)
            e_y = Add (e_q, e_kv)
        }
    >
}
"""
"""q/k/v on the top-level weights ``Wq``, ``Wk``, ``Wv`` in both branches (same order); the
else-branch's ``e_h`` has a value_info, as an exporter's shape inference gives (a sibling input
of unknown rank is left alone)."""

QKV_BIAS_BRANCHES = (
    QKV_BRANCHES.replace("t_q = MatMul (x, Wq)", "t_mq = MatMul (x, Wq)\n t_q = Add (t_mq, bq)")
    .replace("t_v = MatMul (x, Wv)", "t_mv = MatMul (x, Wv)\n t_v = Add (bv, t_mv)")
    .replace("t_k = MatMul (x, Wk)", "t_mk = MatMul (x, Wk)\n t_k = Add (t_mk, bk)")
    .replace("e_q = MatMul (e_h, Wq)", "e_mq = MatMul (e_h, Wq)\n e_q = Add (e_mq, bq)")
    .replace("e_k = MatMul (e_h, Wk)", "e_mk = MatMul (e_h, Wk)\n e_k = Add (e_mk, bk)")
    .replace("e_v = MatMul (e_h, Wv)", "e_mv = MatMul (e_h, Wv)\n e_v = Add (e_mv, bv)")
)

EXPOSED_BRANCHES = """
<ir_version: 10, opset_import: ["" : 18]>
g (bool[1] use_cache_branch, float[2,5,16] x) => (float[2,5,8] q, float[2,5,4] k) {
    q, k = If (use_cache_branch) <
        then_branch = with_past () => (float[2,5,8] t_q, float[2,5,4] t_k) {
            t_q = MatMul (x, Wq)
            t_k = MatMul (x, Wk)
        },
        else_branch = no_past () => (float[2,5,8] e_q, float[2,5,4] e_k) <float[2,5,16] e_h> {
            e_h = Tanh (x)
            e_q = MatMul (e_h, Wq)
            e_m = MatMul (e_h, Wk)
            e_k = Neg (e_m)
        }
    >
}
"""
"""Sibling results that are branch outputs (then: both; else: ``e_q``)."""

SHAPES = {"Wq": (16, 8), "Wk": (16, 4), "Wv": (16, 4), "bq": (8,), "bk": (4,), "bv": (4,)}


def outer_weights(text: str) -> ir.Model:
    """``text`` with top-level initializers for the names of ``SHAPES`` it reads."""
    rng = np.random.default_rng(0)
    used = [n for n in SHAPES if f" {n})" in text or f"({n}," in text]
    signature = ", ".join(f"float[{','.join(map(str, SHAPES[n]))}] {n}" for n in used)
    text = text.replace("float[2,5,16] x)", f"float[2,5,16] x, {signature})", 1)
    arrays = {n: (rng.standard_normal(SHAPES[n]) / 4).astype(np.float32) for n in used}
    return as_initializers(model_from_text(text), arrays)


def branches(model: ir.Model) -> list[ir.Graph]:
    (node,) = [n for n in model.graph if n.op_type == "If"]
    return [node.attributes[b].as_graph() for b in ("then_branch", "else_branch")]


def check_both_branches(model: ir.Model, expect_modified: bool = True):
    """``check_pass`` with ``use_cache_branch`` true, then the else-branch outputs compared."""
    p = FuseSiblingMatMuls()
    check = check_pass(
        p, model, feeds=branch_feeds(model, use_cache=True), expect_modified=expect_modified
    )
    feeds = branch_feeds(model, use_cache=False)
    before, after = verify.run_model(check.before, feeds), verify.run_model(model, feeds)
    assert not verify.compare(before, after, p.tolerance)
    return check


@pytest.mark.parametrize("text", [QKV_BRANCHES, QKV_BIAS_BRANCHES], ids=["qkv", "qkv-bias"])
def test_branches_share_one_packed_weight(text):
    model = outer_weights(text)
    check = check_both_branches(model)
    assert check.stats == {"fused": 2}
    then_g, else_g = branches(model)
    for graph in (then_g, else_g):
        ops = [n.op_type for n in graph]
        assert ops.count("MatMul") == 1 and ops.count("Split") == 1, ops
        assert not graph.initializers
    (t_mm,) = [n for n in then_g if n.op_type == "MatMul"]
    (e_mm,) = [n for n in else_g if n.op_type == "MatMul"]
    packed = model.graph.initializers["Wq.packed3"]
    assert t_mm.inputs[1] is e_mm.inputs[1] is packed  # packed once, read by both branches
    assert isinstance(packed.const_value, ir.LazyTensor)
    expected = ["Wq.packed3"]
    if text is QKV_BIAS_BRANCHES:
        (t_add,) = [n for n in then_g if n.op_type == "Add"]
        (e_add,) = [n for n in else_g if n.op_type == "Add" and n.inputs[0] is e_mm.outputs[0]]
        assert t_add.inputs[1] is e_add.inputs[1] is model.graph.initializers["Wq.packed3.bias"]
        expected.append("Wq.packed3.bias")
    assert sorted(model.graph.initializers) == expected  # the old weights are gone


def test_branches_packing_other_orders_get_their_own_names():
    """q/v/k in the else-branch is another pack (another column order): its own free name."""
    model = outer_weights(
        QKV_BRANCHES.replace("e_k = MatMul (e_h, Wk)\n", "").replace(
            "e_v = MatMul (e_h, Wv)", "e_v = MatMul (e_h, Wv)\n            e_k = MatMul (e_h, Wk)"
        )
    )
    check_both_branches(model)
    then_g, else_g = branches(model)
    (t_mm,) = [n for n in then_g if n.op_type == "MatMul"]
    (e_mm,) = [n for n in else_g if n.op_type == "MatMul"]
    assert (t_mm.inputs[1].name, e_mm.inputs[1].name) == ("Wq.packed3", "Wq.packed3_1")
    assert sorted(model.graph.initializers) == ["Wq.packed3", "Wq.packed3_1"]


def test_does_not_fire_when_a_result_is_a_branch_output():
    model = outer_weights(EXPOSED_BRANCHES)
    check = check_both_branches(model, expect_modified=False)
    assert check.stats == {"skipped:a sibling result is a graph output": 2}


def test_weights_the_other_branch_reads_alone_are_kept():
    """Packed in the then-branch, read by single MatMuls in the else-branch: kept for them."""
    text = QKV_BRANCHES.replace("e_k = MatMul (e_h, Wk)\n", "").replace(
        "e_v = MatMul (e_h, Wv)", "e_v = MatMul (x, Wv)\n            e_k = Neg (e_v)"
    )
    model = outer_weights(text)
    check = check_both_branches(model)
    assert check.stats == {"fused": 1}
    then_g, else_g = branches(model)
    assert [n.op_type for n in then_g].count("MatMul") == 1
    assert [n.inputs[1].name for n in else_g if n.op_type == "MatMul"] == ["Wq", "Wv"]
    assert sorted(model.graph.initializers) == ["Wq", "Wq.packed3", "Wv"]  # Wk is gone


@pytest.fixture(scope="module")
def whisper_raw(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tests.export.whisper_bundles import tiny_whisper

    return tiny_whisper(tmp_path_factory)


ATTN = {"self_attn": "qkv", "encoder_attn": "kv"}
"""The Whisper projections packed in the merged decoder (per layer; cross-attention q stays)."""


def test_whisper_merged_decoder_branches_share_packed_qkv(whisper_raw):
    from qgraph.bundle import Bundle

    model = Bundle.load(whisper_raw).components["decoder_model_merged"]
    ir.external_data.load_to_model(model)
    feeds = verify.sample_inputs(model)
    for use_cache in (True, False):
        feeds["use_cache_branch"] = np.array([use_cache])
        if use_cache:
            check = check_pass(FuseSiblingMatMuls(), model, feeds=feeds)
        else:
            before, after = verify.run_model(check.before, feeds), verify.run_model(model, feeds)
            assert not verify.compare(before, after, FuseSiblingMatMuls.tolerance)
    # self-attention q/k/v of 2 layers in both branches, cross-attention k/v in the no-past one
    assert check.stats == {"fused": 5}
    packed = {}
    for graph in branches(model):
        for node in graph:
            scopes = node.metadata_props.get(SCOPES_KEY, "")
            if node.op_type == "MatMul" and "self_attn" in scopes:
                packed.setdefault(node.inputs[1], []).append(sorted(scopes.split(",")))
    assert len(packed) == 2  # one packed q/k/v per layer, read by both branches
    for value, (then_scopes, else_scopes) in packed.items():
        assert model.graph.initializers[value.name] is value
        assert then_scopes == else_scopes
        assert [s.rsplit(".", 1)[1] for s in then_scopes] == ["k_proj", "q_proj", "v_proj"]
    gone = [f".{i}.{a}.{p}_proj.weight.T" for i in "01" for a, ps in ATTN.items() for p in ps]
    assert not [n for n in model.graph.initializers if n.endswith(tuple(gone))]


def test_whisper_int4_after_packing_decodes(whisper_raw, tmp_path):
    from qgraph.bundle import Bundle
    from qgraph.cli import main
    from qgraph.examples import example_audio
    from qgraph.runtime.audio import load_audio
    from qgraph.runtime.whisper import WhisperSession

    out = tmp_path / "int4"
    # accuracy_level=0: fp32 activations, so that a one-token step and a whole-prefix call go
    # through kernels that agree to float rounding on any CPU (level 4 quantizes activations
    # to int8, and on AVX2 the M=1 and M>1 paths differ by ~5e-2 on these random weights)
    spec = "fp32,quantize-int4{block_size=32,accuracy_level=0}"
    assert main(["compile", str(whisper_raw), "-o", str(out), "--passes", spec]) == 0
    model = Bundle.load(out).components["decoder_model_merged"]
    reads: dict[str, int] = {}
    for graph in branches(model):
        assert not [
            n for n in graph if n.op_type == "MatMul" and n.inputs[1].const_value is not None
        ]
        for node in graph:
            if node.op_type == "MatMulNBits" and "self_attn.q_proj" in node.metadata_props.get(
                SCOPES_KEY, ""
            ):
                reads[node.inputs[1].name] = reads.get(node.inputs[1].name, 0) + 1
    assert len(reads) == 2 and set(reads.values()) == {2}, reads  # int4 packed q/k/v, shared
    assert all(model.graph.initializers[name] for name in reads)
    session = WhisperSession(out)
    hidden = session.encode(session.features(load_audio(example_audio())))
    prompt = session.prompt()
    tokens, _ = session.generate(hidden, prompt, 8, stop_on_eos=False)
    assert len(tokens) == 8  # random tiny weights: the tokens mean nothing
    _, past = session.decode(prompt, hidden, None)
    cached, _ = session.decode(tokens[:1], hidden, past)
    full, _ = session.decode([*prompt, tokens[0]], hidden, None)
    np.testing.assert_allclose(cached, full, atol=1e-3)  # both branches agree


def test_weights_of_the_branch_itself_are_packed_there():
    """Initializers of a branch: the packed weight is the branch's, the sources are dropped."""
    model = outer_weights(QKV_BRANCHES)
    then_g, else_g = branches(model)
    for node in [n for n in then_g if n.op_type == "MatMul"]:
        w = node.inputs[1]
        name = f"t_{w.name}"
        own = ir.Value(
            name=name,
            type=w.type,
            shape=w.shape,
            const_value=ir.tensor(w.const_value.numpy(), name=name),
        )
        then_g.register_initializer(own)
        node.replace_input_with(1, own)
    check = check_both_branches(model)
    assert check.stats == {"fused": 2}
    assert sorted(then_g.initializers) == ["t_Wq.packed3"]
    assert sorted(model.graph.initializers) == ["Wq.packed3"]  # the else-branch's pack
    assert not else_g.initializers


def test_packed_weight_is_named_after_the_modules(typed):
    model = as_weights(typed(GATE_UP), ["wg", "wu"])
    model.graph.initializers["wg"].name = "m.layers.0.mlp.gate_proj.weight"
    model.graph.initializers["wu"].name = "m.layers.0.mlp.up_proj.weight"
    check = check_pass(FuseSiblingMatMuls(), model)
    assert list(check.after.graph.initializers) == ["m.layers.0.mlp.gate_up_proj.weight"]


@pytest.mark.parametrize(
    ("names", "merged"),
    [
        (["a.q_proj.weight", "a.k_proj.weight", "a.v_proj.weight"], "a.qkv_proj.weight"),
        (["a.q_proj.bias", "a.k_proj.bias", "a.v_proj.bias"], "a.qkv_proj.bias"),
        (["d.k_proj.weight.T", "d.v_proj.weight.T"], "d.kv_proj.weight.T"),
        (["Wq", "Wk", "Wv"], None),  # packed as Wq.packed3
        (["a.fc1.weight", "a.fc2.weight"], None),
        (["a.q_proj.weight", "b.k_proj.weight"], None),
    ],
)
def test_merged_names(names, merged):
    from qgraph.passes._rewrite import merged_name

    assert merged_name(names) == merged
