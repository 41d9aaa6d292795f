"""Whisper/Qwen3-ASR log-mel features in numpy.

Contract: ``log_mel(audio)`` equals transformers' ``Qwen3ASRFeatureExtractor`` output for one
utterance with ``padding=True`` (no 30 s padding) on its valid frames, to ~1e-5:

- clips shorter than ``min_samples`` (8000 = 0.5 s) are zero-padded to it;
- centred STFT (reflect padding of ``n_fft // 2``), periodic Hann window, ``n_fft`` 400, hop 160;
- power spectrum, the last STFT frame dropped, so ``T = len(audio) // hop_length`` frames;
- Slaney-scale, Slaney-normalised mel filter bank (``n_mels`` 128, 0-8 kHz);
- ``log10(max(mel, 1e-10))``, then ``max(x, x.max() - 8)``, then ``(x + 4) / 4``.

The extractor also right-pads the time axis with zeros to a multiple of 100 frames; the encoder
does that itself, so this function returns only the ``T`` valid frames.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["log_mel", "mel_filter_bank", "num_frames"]

_CHUNK_FRAMES = 4096  # bounds the float64 frame buffer to ~13 MB whatever the audio length


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    mels = 3.0 * freq / 200.0
    log_region = freq >= 1000.0
    logstep = 27.0 / np.log(6.4)
    mels[log_region] = 15.0 + np.log(freq[log_region] / 1000.0) * logstep
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    freq = 200.0 * mels / 3.0
    log_region = mels >= 15.0
    logstep = np.log(6.4) / 27.0
    freq[log_region] = 1000.0 * np.exp(logstep * (mels[log_region] - 15.0))
    return freq


@functools.lru_cache(maxsize=8)
def mel_filter_bank(
    n_mels: int = 128,
    n_fft: int = 400,
    sample_rate: int = 16000,
    fmin: float = 0.0,
    fmax: float = 8000.0,
) -> np.ndarray:
    """Slaney-normalised triangular filters, float64 ``[n_fft // 2 + 1, n_mels]`` (read-only)."""
    n_freqs = n_fft // 2 + 1
    mel_lo, mel_hi = _hz_to_mel(np.array([fmin, fmax]))
    mel_points = np.linspace(mel_lo, mel_hi, n_mels + 2)
    filter_hz = _mel_to_hz(mel_points)
    fft_hz = np.linspace(0, sample_rate // 2, n_freqs)
    diff = np.diff(filter_hz)
    slopes = filter_hz[None, :] - fft_hz[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    filters *= (2.0 / (filter_hz[2 : n_mels + 2] - filter_hz[:n_mels]))[None, :]
    filters.setflags(write=False)
    return filters


@functools.lru_cache(maxsize=4)
def _hann(n_fft: int) -> np.ndarray:
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)  # periodic
    window.setflags(write=False)
    return window


def num_frames(n_samples: int, hop_length: int = 160, min_samples: int = 8000) -> int:
    """Number of mel frames ``log_mel`` returns for ``n_samples`` input samples."""
    return max(n_samples, min_samples) // hop_length


def log_mel(
    audio: np.ndarray,
    n_mels: int = 128,
    *,
    n_fft: int = 400,
    hop_length: int = 160,
    sample_rate: int = 16000,
    fmin: float = 0.0,
    fmax: float = 8000.0,
    min_samples: int = 8000,
) -> np.ndarray:
    """Log-mel spectrogram ``[n_mels, len(audio) // hop_length]`` float32 of mono audio.

    ``audio`` is a 1-D float array at ``sample_rate`` (values in [-1, 1]); it is cast to float32
    first, as the reference extractor does.
    """
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"log_mel expects 1-D mono audio, got shape {x.shape}")
    if x.size < min_samples:
        x = np.pad(x, (0, min_samples - x.size))
    pad = n_fft // 2
    if x.size <= pad:
        raise ValueError(f"audio too short for a centred STFT: {x.size} samples <= {pad}")
    padded = np.pad(x, pad, mode="reflect").astype(np.float64)
    n_out = x.size // hop_length  # STFT gives x.size // hop + 1 frames; the last one is dropped
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length][:n_out]
    filters = mel_filter_bank(n_mels, n_fft, sample_rate, fmin, fmax)
    window = _hann(n_fft)

    out = np.empty((n_out, n_mels), dtype=np.float64)
    for start in range(0, n_out, _CHUNK_FRAMES):
        spec = np.fft.rfft(frames[start : start + _CHUNK_FRAMES] * window, axis=-1)
        power = spec.real**2 + spec.imag**2
        out[start : start + _CHUNK_FRAMES] = power @ filters
    np.maximum(out, 1e-10, out=out)
    np.log10(out, out=out)
    np.maximum(out, out.max() - 8.0, out=out)
    out += 4.0
    out /= 4.0
    return np.ascontiguousarray(out.T, dtype=np.float32)
