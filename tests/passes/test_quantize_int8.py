import numpy as np
import onnx_ir as ir
import pytest
from onnxruntime.quantization import QuantType, quantize_dynamic

from qgraph.bundle import Bundle
from qgraph.instruments import verify
from qgraph.manager import run_pipeline
from qgraph.passes.inline_lm_head import InlineLmHead
from qgraph.passes.quantize_int8 import QuantizeInt8, quantize_per_channel
from qgraph.pipeline import expand
from qgraph.registry import default_registry
from qgraph.testing import check_pass, model_from_text, op_types
from tests.passes.bundles import as_initializers, decoder_bundle

LM_HEAD = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[1,16,64] h, float[64,512] W) => (float[1,16,512] logits) {
    logits = MatMul (h, W)
}
"""
SPECIAL = 7  # the "<asr_text>" column


def special_token_head(seed: int = 0) -> tuple[ir.Model, dict[str, np.ndarray]]:
    """An lm_head whose hidden states pick a special token by a small margin, beside two
    outlier columns (never chosen) that dominate a per-tensor weight scale."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.05, (64, 512)).astype(np.float32)
    u = rng.standard_normal(64).astype(np.float32)
    u /= np.linalg.norm(u)
    w[:, SPECIAL] = 0.25 * u
    w[:, 300:302] = -20.0 * np.sign(u)[:, None]
    model = as_initializers(model_from_text(LM_HEAD), {"W": w})
    model.graph.initializers["W"].name = "lm_head.weight"
    h = (3.0 * u + 0.3 * rng.standard_normal((1, 16, 64))).astype(np.float32)
    return model, {"h": h}


def test_special_token_survives_per_channel_not_per_tensor(tmp_path):
    model, feeds = special_token_head()
    assert (verify.run_model(model, feeds)["logits"].argmax(-1) == SPECIAL).all()
    # the public tool: quantize_dynamic with its per-tensor default loses the special token
    ir.save(model, tmp_path / "m.onnx")
    quantize_dynamic(tmp_path / "m.onnx", tmp_path / "q.onnx", weight_type=QuantType.QInt8)
    public = verify.run_model(ir.load(tmp_path / "q.onnx"), feeds)["logits"]
    assert (public.argmax(-1) != SPECIAL).all()
    trap, _ = special_token_head()
    QuantizeInt8(per_channel=False)(trap)
    assert (verify.run_model(trap, feeds)["logits"].argmax(-1) != SPECIAL).all()
    check = check_pass(QuantizeInt8(), model, feeds=feeds)
    assert (check.outputs_after["logits"].argmax(-1) == SPECIAL).all()
    assert check.stats == {"quantized": 1}


TWO_PROJECTIONS = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,5,32] x, float[32,16] Wq, float[32,16] Wk) => (float[2,5,16] y) {
    q = MatMul (x, Wq)
    k = MatMul (x, Wk)
    y = Add (q, k)
}
"""


def test_projections_share_activation_quantization_and_ort_fuses_them(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {n: rng.standard_normal((32, 16)).astype(np.float32) for n in ("Wq", "Wk")}
    model = as_initializers(model_from_text(TWO_PROJECTIONS), arrays)
    check = check_pass(QuantizeInt8(), model)
    assert check.stats == {"quantized": 2}
    one = ["MatMulInteger", "Cast", "Mul", "Mul"]
    assert op_types(model) == ["DynamicQuantizeLinear", *one, *one, "Add"]
    import onnxruntime as ort

    ir.save(model, tmp_path / "m.onnx")
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(tmp_path / "m.onnx"), opts)
    fused = op_types(ir.load(tmp_path / "opt.onnx"))
    assert fused.count("MatMulIntegerToFloat") == 2 and "MatMulInteger" not in fused


def test_embedding_gather_is_never_quantized():
    bundle = decoder_bundle()
    InlineLmHead()(bundle)
    check = check_pass(QuantizeInt8(), bundle.components["decoder_init"])
    assert check.stats == {"quantized": 2, "skipped:FP32 weight kept for other users": 1}
    table = check.after.graph.initializers["lm_head.weight"].const_value
    assert table.dtype == ir.DataType.FLOAT
    assert [
        n.op_type for n in check.after.graph if n.inputs and n.inputs[0].name == "lm_head.weight"
    ] == ["Gather"]


def test_does_not_fire_on_excluded_or_activation_matmuls():
    model, feeds = special_token_head()
    check = check_pass(
        QuantizeInt8(exclude=("lm_head*",)), model, feeds=feeds, expect_modified=False
    )
    assert check.stats == {"skipped:excluded": 1}
    check = check_pass(QuantizeInt8(roles=("q",)), model, feeds=feeds, expect_modified=False)
    assert check.stats == {"skipped:role lm_head not selected": 1}
    text = LM_HEAD.replace("float[64,512] W) =>", "float[64,512] W_input) =>").replace(
        "(h, W)", "(h, W_input)"
    )
    check = check_pass(QuantizeInt8(), model_from_text(text), expect_modified=False)
    assert check.stats == {"skipped:weight is not a constant": 1}


@pytest.mark.parametrize("reduce_range", [False, True])
def test_weight_codes_are_symmetric_per_column(reduce_range):
    w = np.array([[1.0, -0.5, 0.0], [-2.0, 0.25, 0.0]], np.float32)
    q, scale = quantize_per_channel(w, per_channel=True, reduce_range=reduce_range)
    qmax = 63 if reduce_range else 127
    np.testing.assert_allclose(scale, [2.0 / qmax, 0.5 / qmax, 1.0])
    assert q[1, 0] == -qmax and q[0, 1] == -qmax and (q[:, 2] == 0).all()


def test_tiny_decoders_within_budget(tiny_raw):
    bundle = Bundle.load(tiny_raw)
    layout = "hygiene,fusions,extract-embed-fp16,inline-lm-head,slice-init-logits"
    run_pipeline(bundle, expand(layout, default_registry()))
    p = QuantizeInt8()
    check = check_pass(p, bundle.components["decoder_step"])
    assert check.stats["quantized"] == 9  # 2 layers x (qkv, o, gate+up, down) + lm_head
    check = check_pass(p, bundle.components["decoder_init"], dims={"seq": 12, "audio_tokens": 4})
    assert check.stats["skipped:FP32 weight kept for other users"] == 1  # the embedding


TWICE = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,64] x, float[64,64] W) => (float[2,64] y) {
    a = MatMul (x, W)
    y = MatMul (a, W)
}
"""


def test_weight_read_by_two_unnamed_matmuls_is_stored_once():
    w = np.random.default_rng(3).standard_normal((64, 64)).astype(np.float32)
    model = as_initializers(model_from_text(TWICE), {"W": w})
    check = check_pass(QuantizeInt8(), model)
    assert check.stats == {"quantized": 2}
    assert sorted(model.graph.initializers) == ["W_quantized", "W_scale"]
