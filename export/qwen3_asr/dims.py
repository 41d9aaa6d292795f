"""Readable names for the Qwen3-ASR encoder's intermediate dims (see ``qgraph.export.dims``)."""

from __future__ import annotations

from collections.abc import Callable

from .wrappers import audio_token_count, post_cnn_tokens


def encoder_dims(chunk: int, window: int) -> dict[str, Callable[[int], int]]:
    """Readable names for the encoder's intermediate dims, as functions of ``time``."""

    def chunks(t: int) -> int:
        return -(-t // chunk)

    def windows(t: int) -> int:
        return -(-audio_token_count(t, chunk // 2) // window)

    return {
        "chunks": chunks,
        "padded_time": lambda t: chunks(t) * chunk,
        "chunk_tokens": lambda t: chunks(t) * post_cnn_tokens(chunk),
        "windows": windows,
        "window_tokens": lambda t: windows(t) * window,
        "audio_tokens": lambda t: audio_token_count(t, chunk // 2),
    }
