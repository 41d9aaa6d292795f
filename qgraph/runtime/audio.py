"""Audio input: read WAV/FLAC/OGG with soundfile, downmix to mono, resample to 16 kHz.

``load_audio(path)`` returns float32 mono samples in [-1, 1] at ``sample_rate`` (16 kHz by
default) or raises ``RuntimeInputError`` with a one-line message. ``resample(x, src, dst)`` is a
polyphase windowed-sinc resampler in plain numpy (Kaiser window, 32 zero crossings, cutoff at 0.94
of the lower Nyquist frequency: flat to within 1 % up to 0.87 of it, aliases above 1.02 of it
attenuated by more than 70 dB).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from qgraph.errors import RuntimeInputError

__all__ = ["AUDIO_SUFFIXES", "SAMPLE_RATE", "find_audio", "load_audio", "resample"]

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
"""Rate every Qwen3-ASR component expects."""

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
"""What ``find_audio`` collects (every format soundfile reads without extra codecs)."""

_ZERO_CROSSINGS = 32  # filter half-length, in periods of the lower of the two rates
_ROLLOFF = 0.94  # cutoff as a fraction of the lower Nyquist frequency
_KAISER_BETA = 9.0  # ~90 dB sidelobe attenuation
_OUT_CHUNK = 1 << 16  # output samples computed per block (bounds the gather buffer)


def find_audio(
    folder: str | os.PathLike[str], what: str = "audio files", limit: int | None = None
) -> list[Path]:
    """The audio files under ``folder`` (recursively, sorted by path; the first ``limit``).

    Raises ``RuntimeInputError`` naming ``what`` when the folder is missing or holds none.
    """
    root = Path(folder)
    if not root.is_dir():
        raise RuntimeInputError(f"{root}: no {what} (not a folder)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise RuntimeInputError(f"{root}: no {what} ({', '.join(AUDIO_SUFFIXES)})")
    return files[:limit]


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read an audio file as float32 mono at ``sample_rate`` Hz.

    Multi-channel audio is averaged to mono; other rates are resampled with ``resample``.
    Raises ``RuntimeInputError`` if the file is missing, unreadable, or holds no samples.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise RuntimeInputError(f"audio file not found: {path}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RuntimeInputError(
            f"cannot read audio file {path}: {message} (use WAV, FLAC or OGG)"
        ) from err
    if data.shape[0] == 0:
        raise RuntimeInputError(f"audio file {path} contains no samples")
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if rate != sample_rate:
        logger.debug("resampling %s from %d Hz to %d Hz", path, rate, sample_rate)
        mono = resample(mono, rate, sample_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def _polyphase_filter(up: int, down: int) -> tuple[np.ndarray, int]:
    """Kaiser-windowed sinc low-pass at the upsampled rate, split into ``up`` phases.

    Returns ``(taps [up, K], half)``: output sample ``n`` at upsampled position ``p = n * down``
    is ``sum_j taps[p % up, j] * x[p // up - j + half]``.
    """
    factor = max(up, down)
    cutoff = _ROLLOFF / factor  # in cycles per upsampled sample, times 2 (Nyquist = 1)
    half_len = _ZERO_CROSSINGS * factor  # in upsampled samples
    t = np.arange(-half_len, half_len + 1, dtype=np.float64)
    h = cutoff * np.sinc(cutoff * t) * np.kaiser(t.size, _KAISER_BETA) * up
    # padded[m] = h[m - lead] weighs the upsampled input at p - (m - lead - half_len); input
    # sample i sits at upsampled position i * up. With lead + half_len = half * up and
    # p = base * up + r, the nonzero terms are m = j * up + r with i = base - j + half.
    lead = (-half_len) % up
    total = lead + h.size
    total += (-total) % up
    padded = np.zeros(total)
    padded[lead : lead + h.size] = h
    n_taps = total // up
    taps = padded.reshape(n_taps, up).T  # taps[r, j] = padded[j * up + r]
    half = (lead + half_len) // up
    return np.ascontiguousarray(taps), half


def resample(x: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Resample 1-D ``x`` from ``orig_rate`` to ``new_rate`` Hz (float32 out).

    The output has ``ceil(len(x) * new_rate / orig_rate)`` samples, aligned so that output
    sample ``n`` is at time ``n / new_rate``; the signal is zero outside ``x``.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"resample expects 1-D audio, got shape {x.shape}")
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
    if orig_rate == new_rate:
        return x.astype(np.float32)
    g = math.gcd(orig_rate, new_rate)
    up, down = new_rate // g, orig_rate // g
    taps, half = _polyphase_filter(up, down)
    n_taps = taps.shape[1]
    n_out = -(-x.size * up // down)
    # Output n reads x[base - j + half] for j in [0, n_taps), base = (n * down) // up <= len - 1.
    left = max(0, n_taps - 1 - half)
    right = half + 1
    xp = np.concatenate([np.zeros(left), x, np.zeros(right)])
    out = np.empty(n_out, dtype=np.float64)
    j = np.arange(n_taps)
    for start in range(0, n_out, _OUT_CHUNK):
        n = np.arange(start, min(start + _OUT_CHUNK, n_out), dtype=np.int64)
        pos = n * down
        base, phase = pos // up, pos % up
        idx = (base + half + left)[:, None] - j[None, :]
        out[n] = np.einsum("nj,nj->n", xp[idx], taps[phase])
    return out.astype(np.float32)
