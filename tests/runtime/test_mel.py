"""Log-mel parity with transformers' Qwen3-ASR feature extractor, and frame-count rules."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from qgraph.examples import example_audio, example_long_audio
from qgraph.runtime.mel import log_mel, mel_filter_bank, num_frames


def _reference(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """transformers' features (padding=True, as the processor calls it) and the valid-frame mask."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    extractor = transformers.Qwen3ASRFeatureExtractor()
    out = extractor(
        audio,
        sampling_rate=16000,
        padding=True,
        return_tensors="np",
        return_attention_mask=True,
    )
    return out["input_features"][0], out["attention_mask"][0]


@pytest.mark.parametrize("n_samples", [100, 4000, 8000, 8159, 16000, 17601, 160 * 537 + 3])
def test_matches_transformers_on_noise(n_samples: int) -> None:
    audio = (0.1 * np.random.default_rng(n_samples).standard_normal(n_samples)).astype(np.float32)
    ref, mask = _reference(audio)
    ours = log_mel(audio)
    assert ours.dtype == np.float32
    assert ours.shape == (128, int(mask.sum()))
    np.testing.assert_allclose(ours, ref[:, : ours.shape[1]], atol=1e-4, rtol=0)
    # everything transformers adds beyond the valid frames is zero padding for the encoder
    assert not np.any(ref[:, ours.shape[1] :])


@pytest.mark.parametrize("path", [example_audio(), example_long_audio()], ids=["short", "long"])
@pytest.mark.parametrize("gain", [1.0, 0.01])
def test_matches_transformers_on_speech(path, gain: float) -> None:
    audio, rate = sf.read(path, dtype="float32")
    assert rate == 16000
    audio = audio * np.float32(gain)
    ref, mask = _reference(audio)
    ours = log_mel(audio)
    assert ours.shape == (128, int(mask.sum())) == (128, len(audio) // 160)
    np.testing.assert_allclose(ours, ref[:, : ours.shape[1]], atol=1e-4, rtol=0)


def test_frame_count_and_short_clip_padding() -> None:
    assert num_frames(16000) == 100
    assert num_frames(16159) == 100
    assert num_frames(100) == 50  # clips under 0.5 s are zero-padded to 8000 samples
    assert log_mel(np.zeros(16159, dtype=np.float32)).shape == (128, 100)
    assert log_mel(np.zeros(10, dtype=np.float32)).shape == (128, 50)
    short = np.random.default_rng(1).standard_normal(3000).astype(np.float32)
    padded = np.concatenate([short, np.zeros(5000, dtype=np.float32)])
    np.testing.assert_array_equal(log_mel(short), log_mel(padded))


def test_value_range_and_dynamic_range_clamp() -> None:
    t = np.arange(32000) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    mel = log_mel(tone)
    assert np.all(np.isfinite(mel))
    # max(x, max - 8) in log10 units, then /4: the spread is at most 2
    assert mel.max() - mel.min() <= 2.0 + 1e-6
    # the 440 Hz band is the loudest
    loudest = int(np.argmax(mel.mean(axis=1)))
    centres = mel_filter_bank().argmax(axis=0) * 8000 / 200
    assert abs(centres[loudest] - 440) < 60


def test_float64_input_is_cast_like_the_reference() -> None:
    audio = np.random.default_rng(2).standard_normal(12345) * 0.2
    np.testing.assert_array_equal(log_mel(audio), log_mel(audio.astype(np.float32)))


def test_filter_bank_shape_and_slaney_norm() -> None:
    fb = mel_filter_bank(128, 400, 16000, 0.0, 8000.0)
    assert fb.shape == (201, 128)
    assert np.all(fb >= 0) and np.all(fb.max(axis=0) > 0)
    assert not fb.flags.writeable


def test_rejects_multichannel() -> None:
    with pytest.raises(ValueError, match="1-D"):
        log_mel(np.zeros((2, 16000), dtype=np.float32))
