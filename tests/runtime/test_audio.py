"""Audio loading (formats, downmix, resampling) and its error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from qgraph.errors import RuntimeInputError
from qgraph.examples import example_audio
from qgraph.runtime.audio import load_audio, resample


def _sine(freq: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)


@pytest.mark.parametrize(
    ("src", "dst", "freq"),
    [
        (44100, 16000, 1000.0),
        (48000, 16000, 3000.0),
        (22050, 16000, 440.0),
        (8000, 16000, 1000.0),
        (16000, 44100, 5000.0),
        (32000, 16000, 6500.0),
    ],
)
def test_resample_sine_matches_analytic(src: int, dst: int, freq: float) -> None:
    y = resample(_sine(freq, src, 2.0), src, dst)
    assert y.dtype == np.float32
    assert y.size == int(np.ceil(2.0 * src * dst / src))
    expected = _sine(freq, dst, 2.0)[: y.size]
    inner = slice(dst // 10, y.size - dst // 10)  # the signal stops at the edges
    assert np.abs(y[inner] - expected[inner]).max() < 1e-3


@pytest.mark.parametrize("freq", [8400.0, 10000.0, 15000.0])
def test_resample_suppresses_aliases(freq: float) -> None:
    y = resample(_sine(freq, 44100, 2.0), 44100, 16000)
    rms = np.sqrt(np.mean(y[2000:-2000].astype(np.float64) ** 2))
    assert 20 * np.log10(rms / np.sqrt(0.5)) < -60


def test_resample_identity_and_dc_gain() -> None:
    x = np.random.default_rng(0).standard_normal(1000)
    np.testing.assert_array_equal(resample(x, 16000, 16000), x.astype(np.float32))
    y = resample(np.ones(48000), 48000, 16000)
    assert np.abs(y[1000:-1000] - 1).max() < 1e-3


def test_load_wav_at_16k_is_exact(tmp_path: Path) -> None:
    samples = (0.3 * _sine(300, 16000)).astype(np.float32)
    sf.write(tmp_path / "a.wav", samples, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "a.wav"), samples)


def test_load_stereo_flac_downmixes_and_resamples(tmp_path: Path) -> None:
    left = 0.4 * _sine(500, 48000)
    right = 0.2 * _sine(500, 48000)
    sf.write(tmp_path / "s.flac", np.stack([left, right], axis=1), 48000, subtype="PCM_24")
    audio = load_audio(tmp_path / "s.flac")
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.size == 16000
    expected = 0.3 * _sine(500, 16000)
    assert np.abs(audio[1600:-1600] - expected[1600:-1600]).max() < 1e-3


def test_example_audio_loads() -> None:
    audio = load_audio(example_audio())
    assert 2.5 < audio.size / 16000 < 6
    assert 0.05 < np.abs(audio).max() <= 1.0


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RuntimeInputError, match="not found"):
        load_audio(tmp_path / "nope.wav")


@pytest.mark.parametrize("content", [b"", b"this is not audio at all" * 10], ids=["empty", "junk"])
def test_unreadable_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(RuntimeInputError, match="cannot read audio file") as info:
        load_audio(path)
    assert "\n" not in str(info.value)


def test_file_without_samples(tmp_path: Path) -> None:
    sf.write(tmp_path / "empty.wav", np.zeros((0,), dtype=np.float32), 16000)
    with pytest.raises(RuntimeInputError, match="no samples"):
        load_audio(tmp_path / "empty.wav")
