import shutil

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from qgraph.bundle import Bundle
from qgraph.errors import RuntimeInputError
from qgraph.examples import example_audio
from qgraph.instruments import verify
from qgraph.manager import run_pipeline
from qgraph.passes.awq_smooth import AwqSmooth
from qgraph.passes.quantize_int4 import QuantizeMatMulNBits
from qgraph.pipeline import expand
from qgraph.registry import default_registry
from qgraph.testing import check_bundle_pass
from tests.passes.bundles import as_initializers

# Every norm spelling awq-smooth folds into: fused RMSNorm -> q,k,v; SkipSimplified -> gate,up;
# LayerNormalization with bias -> q of layer 1; an unfused Mul(weight, normalized) -> up of
# layer 1; and a final norm -> lm_head, which is not selected.
BLOCK = """
<ir_version: 10, opset_import: ["" : 18, "com.microsoft" : 1]>
g (float[1,{s},32] x, float[1,{s},32] res, float[32] norm1, float[32] norm2, float[32] ln_w,
   float[32] ln_b, float[32] norm4, float[32] final_norm, float[32,32] l0_q_proj,
   float[32,32] l0_k_proj, float[32,32] l0_v_proj, float[32,48] l0_gate_proj,
   float[32,48] l0_up_proj, float[32,32] l1_q_proj, float[32,32] l1_up_proj, float[32,64] lm_head)
    => (float[1,{s},48] mlp, float[1,{s},64] logits) {{
    n1 = SimplifiedLayerNormalization <axis = -1, epsilon = 1e-6> (x, norm1)
    q = MatMul (n1, l0_q_proj)
    k = MatMul (n1, l0_k_proj)
    v = MatMul (n1, l0_v_proj)
    qk = Mul (q, k)
    att = Add (qk, v)
    n2, m2, i2, sum2 = com.microsoft.SkipSimplifiedLayerNormalization <epsilon = 1e-6> (
        att, res, norm2)
    gate = MatMul (n2, l0_gate_proj)
    up = MatMul (n2, l0_up_proj)
    sg = Sigmoid (gate)
    mlp = Mul (sg, up)
    n3 = LayerNormalization <axis = -1> (sum2, ln_w, ln_b)
    q1 = MatMul (n3, l1_q_proj)
    t = Tanh (q1)
    n4 = Mul (norm4, t)
    u1 = MatMul (n4, l1_up_proj)
    nf = Mul (final_norm, u1)
    logits = MatMul (nf, lm_head)
}}
"""
OUTLIER = 5


def arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name in ("norm1", "norm2", "ln_w", "norm4", "final_norm"):
        g = rng.uniform(0.5, 1.5, 32).astype(np.float32)
        g[OUTLIER] = 12.0  # one channel with large activations
        out[name] = g
    out["ln_b"] = rng.normal(0, 0.1, 32).astype(np.float32)
    shapes = {"l0_gate_proj": 48, "l0_up_proj": 48, "lm_head": 64}
    for name in ("l0_q_proj", "l0_k_proj", "l0_v_proj", "l1_q_proj", "l1_up_proj", *shapes):
        out[name] = rng.normal(0, 0.2, (32, shapes.get(name, 32))).astype(np.float32)
    return out


def parse(text: str):
    """ONNX text -> ir.Model without the checker (it has no schema for ORT's
    SimplifiedLayerNormalization in the default domain)."""
    proto = onnx.parser.parse_model(text)
    proto.ir_version = 10
    return ir.from_proto(proto)


def block_bundle(step_text: str | None = None) -> Bundle:
    """decoder_init (6 positions) and decoder_step (1 position) with equal weights."""
    bundle = Bundle(family="test")
    weights = arrays()
    for comp, seq in (("decoder_init", "6"), ("decoder_step", "1")):
        text = BLOCK.format(s=seq) if step_text is None or comp == "decoder_init" else step_text
        bundle.add_component(comp, as_initializers(parse(text), dict(weights)))
    return bundle


def test_folds_scales_into_every_norm_spelling_without_changing_outputs():
    bundle = block_bundle()
    norm1 = bundle.components["decoder_init"].graph.initializers["norm1"].const_value.numpy()
    q_proj = bundle.components["decoder_init"].graph.initializers["l0_q_proj"].const_value.numpy()
    check = check_bundle_pass(AwqSmooth(samples=2), bundle)
    assert check.stats == {"groups smoothed": 4, "skipped:role lm_head not selected": 1}
    graphs = {c: m.graph for c, m in bundle.components.items()}
    s = norm1 / graphs["decoder_init"].initializers["norm1"].const_value.numpy()
    assert s.argmax() == OUTLIER  # the large-activation channel gets the largest scale
    smoothed = graphs["decoder_init"].initializers["l0_q_proj"].const_value.numpy()
    np.testing.assert_allclose(smoothed, q_proj * s[:, None], rtol=1e-5)
    for name in ("norm1", "norm2", "ln_w", "ln_b", "norm4", "l0_gate_proj", "l1_up_proj"):
        init = graphs["decoder_init"].initializers[name].const_value.numpy()
        step = graphs["decoder_step"].initializers[name].const_value.numpy()
        np.testing.assert_array_equal(init, step)  # one set of scales for both decoders
    for name in ("final_norm", "lm_head"):  # the lm_head group is not selected
        untouched = graphs["decoder_step"].initializers[name].const_value.numpy()
        np.testing.assert_array_equal(untouched, arrays()[name])


def test_group_refused_in_one_component_is_smoothed_in_none():
    # decoder_step's post-attention norm output also feeds an Add: smoothing would change it
    step = BLOCK.format(s="1").replace(
        "float[1,1,64] logits)", "float[1,1,64] logits, float[1,1,32] extra)"
    )
    step = step.replace("    up = MatMul", "    extra = Add (n2, res)\n    up = MatMul")
    bundle = block_bundle(step_text=step)
    check = check_bundle_pass(AwqSmooth(samples=2), bundle)
    assert check.stats == {
        "groups smoothed": 3,
        "skipped:not smoothable in every component": 1,
        "skipped:role lm_head not selected": 1,
    }
    for model in bundle.components.values():
        norm2 = model.graph.initializers["norm2"].const_value.numpy()
        np.testing.assert_array_equal(norm2, arrays()["norm2"])


def test_does_not_fire_when_nothing_is_selected():
    bundle = block_bundle()
    check = check_bundle_pass(AwqSmooth(roles=("o",)), bundle, expect_modified=False)
    assert check.stats == {
        "skipped:role q not selected": 2,
        "skipped:role gate not selected": 1,
        "skipped:role up not selected": 1,
        "skipped:role lm_head not selected": 1,
    }
    check = check_bundle_pass(AwqSmooth(alpha=0.0), bundle, expect_modified=False)
    assert check.stats["skipped:alpha 0"] == 4


def quantized_error(bundle: Bundle, feeds: dict) -> float:
    model = bundle.components["decoder_init"]
    reference = verify.run_model(model, feeds)["mlp"]
    QuantizeMatMulNBits(block_size=16, roles=("q", "k", "v", "gate", "up"))(model)
    return float(np.square(verify.run_model(model, feeds)["mlp"] - reference).mean())


def test_search_lowers_int4_error_on_held_out_inputs():
    feeds = verify.sample_inputs(block_bundle().components["decoder_init"], seed=99)
    plain = quantized_error(block_bundle(), feeds)
    bundle = block_bundle()
    AwqSmooth(search=True, block_size=16, samples=4)(bundle)
    assert quantized_error(bundle, feeds) < 0.7 * plain


def test_calibrates_on_audio_through_the_runtime(tiny_raw, tmp_path):
    bundle = Bundle.load(tiny_raw)
    layout = "hygiene,fusions,extract-embed-fp16,inline-lm-head,slice-init-logits"
    run_pipeline(bundle, expand(layout, default_registry()))
    audio = tmp_path / "calibration"
    audio.mkdir()
    shutil.copy(example_audio(), audio / "clip.wav")
    p = AwqSmooth(audio=str(audio), max_files=1, max_tokens=3)
    check = check_bundle_pass(p, bundle, dims={"seq": 12, "audio_tokens": 4})
    assert check.stats == {"groups smoothed": 4, "skipped:role lm_head not selected": 1}
    with pytest.raises(RuntimeInputError, match="no calibration audio"):
        AwqSmooth(audio=str(tmp_path / "empty"))(block_bundle())


def test_simulates_the_quantize_int4_that_follows():
    """Options left at their defaults are taken from quantize-int4; a set one must agree."""
    from qgraph.errors import PipelineError

    reg = default_registry()
    awq, quant = expand("awq-smooth,quantize-int4{block_size=32,symmetric=true}", reg)
    assert (awq.bits, awq.block_size, awq.symmetric) == (4, 32, True)
    assert str(awq) == "awq-smooth{block_size=32,symmetric=true}"
    awq, _ = expand("awq-smooth{bits=8},quantize-int4{bits=8}", reg)
    assert awq.bits == 8
    (awq,) = expand("awq-smooth{block_size=128}", reg)  # nothing to simulate: kept
    assert awq.block_size == 128
    with pytest.raises(PipelineError, match=r"block_size=128 .* quantize-int4 .* block_size=32"):
        expand("awq-smooth{block_size=128},quantize-int4{block_size=32}", reg)
