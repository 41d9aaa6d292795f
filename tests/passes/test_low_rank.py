"""low-rank (LiteASR): the PCA factors, the four pass checks on small encoders, pipeline order,
and Whisper tiny.en's real encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from qgraph.examples import example_audio, example_long_audio
from qgraph.passes.low_rank import LowRank, _principal, calibration_mels, low_rank_factors
from qgraph.testing import check_pass, model_from_text, op_types

MELS, FRAMES, WIDTH = 16, 100, 64

ENCODER = f"""
<ir_version: 10, opset_import: ["" : 18]>
g (float[1,{MELS},{FRAMES}] input_features, float[{MELS},{WIDTH}] w_in, float[{WIDTH}] b_in,
   float[{WIDTH},{WIDTH}] w_q, float[{WIDTH}] b_q, float[{WIDTH},{WIDTH}] w_other)
  => (float[1,{FRAMES},{WIDTH}] y, float[1,{FRAMES},{WIDTH}] z) {{
    x = Transpose <perm = [0, 2, 1]> (input_features)
    h0 = MatMul (x, w_in)
    h = Add (h0, b_in)
    q0 = MatMul (h, w_q)
    y = Add (q0, b_q)
    r = Relu (y)
    z = MatMul (r, w_other)
}}
"""
"""``y`` (a q_proj) is affine in a 16-dim input: rank 16 of 64, factorized exactly. ``h``
(fc1, K=16) would not save parameters; ``w_other`` has no attention/MLP role."""

NAMES = {
    "w_in": "enc.layers.0.fc1.weight",
    "w_q": "enc.layers.0.self_attn.q_proj.weight",
    "w_other": "enc.proj.weight",
}


def _with_weights(model: ir.Model, names: dict[str, str]) -> ir.Model:
    """Every graph input but the first becomes a random initializer (renamed by ``names``)."""
    rng = np.random.default_rng(0)
    for value in list(model.graph.inputs)[1:]:
        model.graph.inputs.remove(value)
        value.name = names.get(value.name, value.name)
        shape = tuple(value.shape)
        array = (0.3 * rng.standard_normal(shape)).astype(np.float32)
        value.const_value = ir.tensor(array, name=value.name)
        model.graph.register_initializer(value)
    return model


def _encoder(names: dict[str, str] = NAMES) -> ir.Model:
    return _with_weights(model_from_text(ENCODER), names)


@pytest.fixture(scope="module")
def speech_feeds() -> dict[str, np.ndarray]:
    return {"input_features": calibration_mels("", MELS, FRAMES, 1)[0]}


def test_factors_reproduce_a_low_rank_affine_map() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 8)) @ rng.standard_normal((8, 48))  # rank-8 inputs, K = 48
    w, b = rng.standard_normal((48, 64)), rng.standard_normal(64)
    mean, cov = x.mean(0), np.cov(x.T, bias=True)
    a, bb, bias = low_rank_factors(w, b, mean, cov, 0.999)
    assert a.shape == (48, 16) and bb.shape == (16, 64)  # rank 8 rounded up to 16
    np.testing.assert_allclose((x @ a) @ bb + bias, x @ w + b, atol=1e-3)
    assert low_rank_factors(w, b, mean, cov + np.eye(48), 0.999) is None  # full rank: keep dense


def test_principal_svd_branch_equals_the_eigendecomposition() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 24))
    w = rng.standard_normal((24, 40))  # K < N: the SVD branch
    cov = np.cov(x.T, bias=True)
    values, vectors = _principal(w, cov)
    full, full_vectors = np.linalg.eigh(w.T @ cov @ w)
    np.testing.assert_allclose(values, full[::-1][:24], rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(
        np.abs(vectors[:, :5]), np.abs(full_vectors[:, ::-1][:, :5]), atol=1e-6
    )


def test_fires_exactly_on_a_low_rank_layer(speech_feeds) -> None:
    model = _encoder()
    check = check_pass(LowRank(), model, feeds=speech_feeds)
    assert check.stats["factorized"] == 1
    assert check.stats["parameters saved"] == WIDTH * WIDTH - 2 * 16 * WIDTH
    assert check.stats["skipped:rank would not save parameters"] == 1
    assert check.stats["skipped:neither attention nor MLP"] == 1
    np.testing.assert_allclose(check.outputs_after["y"], check.outputs_before["y"], atol=1e-4)
    assert op_types(model).count("MatMul") == 4
    inits = model.graph.initializers
    assert "enc.layers.0.self_attn.q_proj.weight" not in inits  # the dense weight is gone
    assert inits["enc.layers.0.self_attn.q_proj.weight.low_rank.A"].shape == (WIDTH, 16)
    assert "b_q" not in inits  # replaced by the corrected bias


def test_random_inputs_stay_exact_on_an_exactly_low_rank_layer() -> None:
    check_pass(LowRank(), _encoder(), dims={})


def test_must_not_fire(speech_feeds) -> None:
    check = check_pass(
        LowRank(exclude=("*q_proj*",)), _encoder(), expect_modified=False, feeds=speech_feeds
    )
    assert check.stats["skipped:excluded"] == 1 and "factorized" not in check.stats
    unnamed = _encoder({})  # no attention / MLP names anywhere
    check = check_pass(LowRank(), unnamed, expect_modified=False, feeds=speech_feeds)
    assert check.stats["skipped:neither attention nor MLP"] == 3


def test_no_mel_input_is_left_alone() -> None:
    text = """
        <ir_version: 10, opset_import: ["" : 18]>
        g (float[4,64] x, float[64,64] w) => (float[4,64] y) { y = MatMul (x, w) }
    """
    model = _with_weights(model_from_text(text), {"w": "layers.0.fc2.weight"})
    check = check_pass(LowRank(), model, expect_modified=False)
    assert check.stats == {"skipped:no log-mel input": 1}


def test_bad_calibration_folder(tmp_path: Path) -> None:
    from qgraph.errors import RuntimeInputError

    with pytest.raises(RuntimeInputError, match="no calibration audio"):
        LowRank(audio=str(tmp_path))(_encoder())


def test_fusions_and_quantization_must_follow_it() -> None:
    from qgraph.errors import PipelineError
    from qgraph.passes import BUILTIN_PASSES
    from qgraph.pipeline import check_order

    later = [p for p in BUILTIN_PASSES if p.category in ("fusion", "quantization")]
    assert later, "no fusion or quantization pass registered"
    for cls in later:
        assert {"compression", "low-rank"} & set(cls.ordering()), cls.name
        with pytest.raises(PipelineError, match="'low-rank' must run before"):
            check_order([cls(), LowRank()])


def test_ordering_error_quotes_the_violated_constraint() -> None:
    """fuse-bias-gelu follows fuse-gelu and compression, each for its own reason."""
    from qgraph.errors import PipelineError
    from qgraph.pipeline import expand
    from qgraph.registry import default_registry

    reg = default_registry()
    with pytest.raises(PipelineError) as err:
        expand("fuse-bias-gelu,low-rank", reg)
    assert "'low-rank' must run before 'fuse-bias-gelu'" in str(err.value)
    assert "low-rank factorises" in str(err.value)
    assert "fuse-gelu produces" not in str(err.value)
    with pytest.raises(PipelineError, match=r"\(it fuses the Gelu that fuse-gelu produces"):
        expand("fuse-bias-gelu,fuse-gelu", reg)


def test_real_whisper_encoder(tmp_path: Path, tmp_path_factory) -> None:
    """fc1 factorized (calibrated on espeak-ng speech) keeps tiny.en's transcript."""
    pytest.importorskip("torch")
    from qgraph.bundle import Bundle
    from qgraph.runtime.whisper import WhisperSession
    from tests.export.whisper_bundles import CALIBRATION, espeak, real_whisper

    raw = real_whisper(tmp_path_factory)
    for i, text in enumerate(CALIBRATION):
        if espeak(text, tmp_path / f"c{i}.wav") is None:
            pytest.skip("calibration speech needs espeak-ng")
    bundle = Bundle.load(raw)
    p = LowRank(exclude=("*self_attn*", "*fc2"), audio=str(tmp_path))
    p(bundle.components["encoder_model"])
    assert p.stats["factorized"] >= 2 and p.stats["skipped:excluded"] == 20
    out = bundle.save(tmp_path / "low-rank")
    size = (out / "onnx/encoder_model.onnx_data").stat().st_size
    assert size < (raw / "onnx/encoder_model.onnx_data").stat().st_size
    for clip in (example_audio(), example_long_audio()):
        before = WhisperSession(raw).transcribe(clip).text
        assert WhisperSession(out).transcribe(clip).text == before
