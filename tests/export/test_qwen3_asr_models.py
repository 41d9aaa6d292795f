"""Built-in model configs: deterministic tiny, real shapes for random-0.6b / random-1.7b."""

from __future__ import annotations

import hashlib

import pytest

torch = pytest.importorskip("torch")

from qgraph.export.qwen3_asr import build_model  # noqa: E402, TID251
from qgraph.export.qwen3_asr.configs import builtin_config  # noqa: E402, TID251
from qgraph.export.qwen3_asr.wrappers import audio_token_count  # noqa: E402, TID251


def _digest(model) -> str:
    sha = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        sha.update(key.encode())
        sha.update(value.detach().contiguous().numpy().tobytes())
    return sha.hexdigest()


def test_tiny_is_deterministic(tiny_model) -> None:
    rng_before = torch.random.get_rng_state()
    again, description = build_model("tiny")
    assert description.startswith("built-in tiny")
    assert _digest(again) == _digest(tiny_model)
    assert torch.equal(torch.random.get_rng_state(), rng_before), "global RNG left untouched"


def test_tiny_shape_and_tied_embedding(tiny_model) -> None:
    cfg = tiny_model.config
    audio, text = cfg.audio_config, cfg.text_config
    assert (audio.encoder_layers, audio.d_model, audio.encoder_attention_heads) == (2, 64, 4)
    assert (audio.encoder_ffn_dim, audio.downsample_hidden_size, audio.output_dim) == (128, 32, 128)
    assert (text.num_hidden_layers, text.hidden_size, text.intermediate_size) == (2, 128, 256)
    assert (text.num_attention_heads, text.num_key_value_heads, text.head_dim) == (4, 2, 32)
    assert text.vocab_size == 151936
    assert tiny_model.lm_head.weight is tiny_model.get_input_embeddings().weight
    assert not tiny_model.training
    assert tiny_model.get_input_embeddings().weight.std().item() == pytest.approx(0.01, rel=0.05)


@pytest.mark.parametrize(
    ("name", "params_m", "enc", "text"),
    [
        ("random-0.6b", 782.4, (18, 896, 14, 3584, 1024), (28, 1024, 16, 8, 128, 3072)),
        ("random-1.7b", 2038.1, (24, 1024, 16, 4096, 2048), (28, 2048, 16, 8, 128, 6144)),
    ],
)
def test_real_shapes(name: str, params_m: float, enc: tuple, text: tuple) -> None:
    from transformers import Qwen3ASRForConditionalGeneration

    cfg = builtin_config(name)
    a, t = cfg.audio_config, cfg.text_config
    got_enc = (a.encoder_layers, a.d_model, a.encoder_attention_heads, a.encoder_ffn_dim)
    assert (*got_enc, a.output_dim) == enc
    got_text = (t.num_hidden_layers, t.hidden_size, t.num_attention_heads)
    got_text += (t.num_key_value_heads, t.head_dim, t.intermediate_size)
    assert got_text == text
    assert (a.downsample_hidden_size, a.n_window, a.n_window_infer) == (480, 50, 800)
    assert t.rope_parameters["rope_theta"] == 1e6 and cfg.tie_word_embeddings
    with torch.device("meta"):
        model = Qwen3ASRForConditionalGeneration(cfg)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert params == pytest.approx(params_m, abs=0.1)


@pytest.mark.parametrize(
    ("frames", "tokens"), [(0, 0), (1, 1), (8, 1), (9, 2), (99, 13), (100, 13), (997, 130)]
)
def test_audio_token_count(frames: int, tokens: int) -> None:
    assert audio_token_count(frames) == tokens
    assert audio_token_count(1100) == 143
