"""Reference runtime: numpy + ONNX Runtime transcription of raw and compiled qwen3-asr bundles.

Public API::

    from qgraph.runtime import AsrSession, transcribe
    result = transcribe("bundle/", "speech.wav")          # -> Transcript
    session = AsrSession("bundle/", threads=4)            # load once, transcribe many
    session.transcribe(samples_16k, language="en").text

The runtime depends only on numpy, onnxruntime, soundfile and tokenizers (never on torch,
transformers or the exporter). Names are imported lazily so ``qgraph.runtime.mel`` and friends
stay cheap to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "AsrSession",
    "SpecialTokens",
    "Timings",
    "Transcript",
    "build_prompt_ids",
    "default_max_tokens",
    "load_audio",
    "log_mel",
    "n_audio_tokens",
    "parse_transcript",
    "resample",
    "transcribe",
]

_HOMES = {
    "AsrSession": "decode",
    "Timings": "decode",
    "Transcript": "decode",
    "default_max_tokens": "decode",
    "transcribe": "decode",
    "SpecialTokens": "prompt",
    "build_prompt_ids": "prompt",
    "n_audio_tokens": "prompt",
    "parse_transcript": "prompt",
    "load_audio": "audio",
    "resample": "audio",
    "log_mel": "mel",
    "WhisperSession": "whisper",
    "bench_whisper": "whisper",
    "is_whisper_bundle": "whisper",
    "evaluate": "eval",
    "open_session": "eval",
}

if TYPE_CHECKING:
    from qgraph.runtime.audio import load_audio, resample
    from qgraph.runtime.decode import (
        AsrSession,
        Timings,
        Transcript,
        default_max_tokens,
        transcribe,
    )
    from qgraph.runtime.mel import log_mel
    from qgraph.runtime.prompt import (
        SpecialTokens,
        build_prompt_ids,
        n_audio_tokens,
        parse_transcript,
    )


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'qgraph.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(f"qgraph.runtime.{home}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
