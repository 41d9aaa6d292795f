"""Raw ONNX vs the native transformers model: encoder, prefill, KV cache and greedy tokens.

The ONNX side is a minimal numpy loop over the raw graphs (ORT optimizations off), so these
tests check the exported graphs alone, independently of ``qgraph.runtime``.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from qgraph.runtime.files import load_tokenizer
from qgraph.runtime.mel import log_mel
from qgraph.runtime.prompt import build_prompt_ids, n_audio_tokens

EOS = {151643, 151645}
ATOL = 1e-4


def onnx_greedy(
    sessions: dict[str, ort.InferenceSession],
    mel: np.ndarray,
    prompt: list[int],
    offset: int,
    max_new: int,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(audio features, last prefill logits, greedy tokens incl. EOS) from the raw graphs."""
    feats = sessions["encoder"].run(None, {"mel": mel[None]})[0]
    seq = len(prompt)
    logits, keys, values = sessions["decoder_init"].run(
        None,
        {
            "input_ids": np.array([prompt], dtype=np.int64),
            "position_ids": np.arange(seq, dtype=np.int64)[None],
            "audio_features": feats,
            "audio_offset": np.array([offset], dtype=np.int64),
        },
    )
    last = logits[0, -1]
    tokens = [int(last.argmax())]
    while tokens[-1] not in EOS and len(tokens) < max_new:
        step_logits, keys, values = sessions["decoder_step"].run(
            None,
            {
                "input_ids": np.array([[tokens[-1]]], dtype=np.int64),
                "position_ids": np.array([[seq + len(tokens) - 1]], dtype=np.int64),
                "past_keys": keys,
                "past_values": values,
            },
        )
        tokens.append(int(step_logits[0, -1].argmax()))
    return feats, last, tokens


@pytest.mark.parametrize("frames", [50, 99, 100, 137, 800, 801, 1234, 3001])
def test_encoder_matches_hf_for_any_length(sessions, reference, frames: int) -> None:
    rng = np.random.default_rng(frames)
    mel = rng.normal(0.0, 0.5, size=(128, frames)).astype(np.float32)
    onnx_feats = sessions["encoder"].run(None, {"mel": mel[None]})[0]
    ref = reference.audio_features(mel)
    assert onnx_feats.shape == (1, n_audio_tokens(frames), 128)
    assert onnx_feats.shape[1] == ref.shape[0]
    np.testing.assert_allclose(onnx_feats[0], ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("seconds", [1.37, 11.0, 33.3, 5.555])
def test_greedy_tokens_match_hf_generate(
    tiny_bundle, sessions, reference, make_clip, seconds: float
) -> None:
    mel = log_mel(make_clip(seconds))
    frames = mel.shape[1]
    assert frames == int(round(seconds * 16000)) // 160
    tokenizer = load_tokenizer(tiny_bundle)
    prompt, offset = build_prompt_ids(tokenizer, n_audio_tokens(frames))
    feats, last, tokens = onnx_greedy(sessions, mel, prompt, offset, max_new=24)
    ref_logits, ref_tokens = reference.greedy(mel, prompt, max_new=24)

    np.testing.assert_allclose(feats[0], reference.audio_features(mel), atol=ATOL, rtol=0)
    np.testing.assert_allclose(last, ref_logits, atol=ATOL, rtol=0)
    assert tokens == ref_tokens
    assert len(set(tokens)) > 1, "greedy output should vary, not repeat one token"


def test_decoders_take_a_batch_and_grow_the_cache(sessions) -> None:
    """Batch 3, prompt 30 with 12 audio rows at offset 5; then one step per row."""
    rng = np.random.default_rng(0)
    batch, seq, n_audio, offset = 3, 30, 12, 5
    ids = rng.integers(0, 151000, size=(batch, seq))
    ids[:, offset : offset + n_audio] = 151676
    feats = rng.normal(size=(batch, n_audio, 128)).astype(np.float32)
    pos = np.tile(np.arange(seq), (batch, 1))
    logits, keys, values = sessions["decoder_init"].run(
        None,
        {
            "input_ids": ids,
            "position_ids": pos,
            "audio_features": feats,
            "audio_offset": np.array([offset]),
        },
    )
    assert logits.shape == (batch, seq, 151936)
    assert keys.shape == values.shape == (2, batch, 2, seq, 32)
    # Row 1 alone gives the same numbers as row 1 of the batch.
    single = sessions["decoder_init"].run(
        None,
        {
            "input_ids": ids[1:2],
            "position_ids": pos[1:2],
            "audio_features": feats[1:2],
            "audio_offset": np.array([offset]),
        },
    )
    np.testing.assert_allclose(single[0][0], logits[1], atol=ATOL, rtol=0)
    step = sessions["decoder_step"].run(
        None,
        {
            "input_ids": logits[:, -1].argmax(-1)[:, None].astype(np.int64),
            "position_ids": np.full((batch, 1), seq, dtype=np.int64),
            "past_keys": keys,
            "past_values": values,
        },
    )
    assert step[0].shape == (batch, 1, 151936)
    assert step[1].shape == step[2].shape == (2, batch, 2, seq + 1, 32)
    np.testing.assert_array_equal(step[1][:, :, :, :seq], keys)


def test_audio_rows_replace_the_placeholders(sessions, reference) -> None:
    """decoder_init's in-graph scatter equals HF's masked_scatter of the audio features."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    seq, n_audio, offset = 25, 10, 7
    ids = rng.integers(0, 151000, size=(1, seq))
    ids[0, offset : offset + n_audio] = 151676
    feats = rng.normal(size=(1, n_audio, 128)).astype(np.float32)
    logits = sessions["decoder_init"].run(
        None,
        {
            "input_ids": ids,
            "position_ids": np.arange(seq)[None],
            "audio_features": feats,
            "audio_offset": np.array([offset]),
        },
    )[0]
    model = reference.model
    with torch.no_grad():
        embeds = model.get_input_embeddings()(torch.from_numpy(ids))
        mask = torch.from_numpy(ids == 151676)[..., None].expand_as(embeds)
        embeds = embeds.masked_scatter(mask, torch.from_numpy(feats))
        ref = model(inputs_embeds=embeds).logits.numpy()
    np.testing.assert_allclose(logits, ref, atol=ATOL, rtol=0)
