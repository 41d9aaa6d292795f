"""Reference runtime: numpy + ONNX Runtime transcription of raw and compiled bundles.

Public API::

    from qgraph.runtime import open_session, transcribe
    session = open_session("bundle/", threads=4)          # the bundle family's session
    session.transcribe("speech.wav").text                 # load once, transcribe many
    result = transcribe("qwen3-bundle/", "speech.wav")    # one-shot Qwen3-ASR -> Transcript

Every session follows ``qgraph.runtime.session.Session``; ``qgraph.families`` says which
class a bundle gets.

The runtime depends only on numpy, onnxruntime, soundfile and tokenizers (never on torch,
transformers or the exporter). Names are imported lazily so ``qgraph.runtime.mel`` and friends
stay cheap to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "AsrSession",
    "Prompt",
    "Session",
    "SherpaSession",
    "SpecialTokens",
    "Timings",
    "Transcript",
    "build_prompt_ids",
    "default_max_tokens",
    "load_audio",
    "log_mel",
    "n_audio_tokens",
    "open_session",
    "parse_transcript",
    "resample",
    "transcribe",
    "WhisperSession",
]

_HOMES = {
    "AsrSession": "qwen3",
    "default_max_tokens": "qwen3",
    "transcribe": "qwen3",
    "SpecialTokens": "prompt",
    "build_prompt_ids": "prompt",
    "n_audio_tokens": "prompt",
    "parse_transcript": "prompt",
    "load_audio": "audio",
    "resample": "audio",
    "log_mel": "mel",
    "WhisperSession": "whisper",
    "SherpaSession": "sherpa",
    "Session": "session",
    "Prompt": "session",
    "Timings": "session",
    "Transcript": "session",
    "evaluate": "eval",
    "run_bench": "bench",
    "open_session": "qgraph.families",
}

if TYPE_CHECKING:
    from qgraph.runtime.audio import load_audio, resample
    from qgraph.runtime.mel import log_mel
    from qgraph.runtime.prompt import (
        SpecialTokens,
        build_prompt_ids,
        n_audio_tokens,
        parse_transcript,
    )
    from qgraph.runtime.qwen3 import AsrSession, default_max_tokens, transcribe
    from qgraph.runtime.session import Timings, Transcript


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'qgraph.runtime' has no attribute {name!r}")
    module = home if "." in home else f"qgraph.runtime.{home}"
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
