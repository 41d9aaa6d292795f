"""The session protocol every runtime implements, and the types its results share.

A session is a loaded bundle of one family (``qgraph.families``; ``open_session`` picks the
class): ``AsrSession`` (Qwen3-ASR), ``SherpaSession`` (Qwen3-ASR in sherpa-onnx's layout),
``WhisperSession``. Commands, the benchmark loop (``qgraph.runtime.bench``), evaluation and
calibrating passes use only what ``Session`` declares, so a new family's session works with all
of them:

- ``features(samples) -> mel`` and ``encode(mel) -> audio features``;
- ``prompt_for(features, language=None) -> Prompt`` and ``greedy(features, prompt, max_tokens,
  stop_on_eos=, timings=) -> (tokens, finish reason)``: prefill then one step per token;
- ``fixed_step(past_tokens, features, prompt) -> callable``: one decoder step on a fixed random
  cache of ``past_tokens`` positions (the benchmark's step latency);
- ``transcribe(audio, max_tokens=, language=) -> Transcript``;
- ``components()``: the ONNX Runtime components it runs; ``observe(session, callback)`` calls
  ``callback(component name, outputs)`` after every run of one, which is how calibration reads
  intermediate values (added as extra graph outputs) during real transcriptions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from qgraph.runtime.ort import Component

__all__ = ["Observer", "Prompt", "Session", "Timings", "Transcript", "observe"]

Observer = Callable[[str, Mapping[str, np.ndarray]], None]


@dataclass(frozen=True)
class Prompt:
    """Decoder prompt ids; ``offset`` is where the audio features go in it (0 when the decoder
    reads them by cross-attention)."""

    ids: list[int]
    offset: int = 0


@dataclass
class Timings:
    """Wall-clock seconds of each phase of one transcription."""

    audio_s: float = 0.0
    mel_s: float = 0.0
    encoder_s: float = 0.0
    prefill_s: float = 0.0
    step_s: list[float] = field(default_factory=list)

    @property
    def decode_s(self) -> float:
        return float(sum(self.step_s))

    @property
    def total_s(self) -> float:
        return self.mel_s + self.encoder_s + self.prefill_s + self.decode_s

    @property
    def rtf(self) -> float:
        """Real-time factor: processing time / audio duration (lower is faster)."""
        return self.total_s / self.audio_s if self.audio_s > 0 else float("nan")

    @property
    def step_tokens_per_s(self) -> float:
        """Decode speed over the ``decoder_step`` calls."""
        return len(self.step_s) / self.decode_s if self.decode_s > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            decode_s=self.decode_s,
            total_s=self.total_s,
            rtf=self.rtf,
            step_tokens_per_s=self.step_tokens_per_s,
        )
        return out


@dataclass
class Transcript:
    """Result of ``transcribe``.

    ``token_ids`` are all generated ids (the ``language X<asr_text>`` prefix included, and the
    EOS id last when ``finish_reason == "eos"``); ``text`` is the transcript alone.
    """

    token_ids: list[int]
    text: str
    language: str | None
    timings: Timings
    finish_reason: str
    prompt_length: int
    n_audio_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "language": self.language,
            "token_ids": list(self.token_ids),
            "finish_reason": self.finish_reason,
            "prompt_length": self.prompt_length,
            "n_audio_tokens": self.n_audio_tokens,
            "timings": self.timings.to_dict(),
        }


class Session(Protocol):
    """What every family's runtime session provides (see the module docstring)."""

    sample_rate: int
    decoder_sessions: int
    """ONNX Runtime sessions running the decoder graphs (1: merged or a single graph)."""
    max_samples: int | None
    """Longest audio one ``greedy`` call covers (Whisper's 30 s window), None: unbounded."""

    def read_audio(self, audio: Any) -> np.ndarray: ...

    def features(self, samples: np.ndarray) -> np.ndarray: ...

    def encode(self, mel: np.ndarray) -> np.ndarray: ...

    def prompt_for(self, features: np.ndarray, language: str | None = None) -> Prompt: ...

    def greedy(
        self,
        features: np.ndarray,
        prompt: Prompt,
        max_tokens: int,
        *,
        stop_on_eos: bool = True,
        timings: Timings | None = None,
    ) -> tuple[list[int], str]: ...

    def fixed_step(
        self, past_tokens: int, features: np.ndarray, prompt: Prompt
    ) -> Callable[[], Any]: ...

    def transcribe(
        self, audio: Any, *, max_tokens: int | None = None, language: str | None = None
    ) -> Transcript: ...

    def components(self) -> list[Component]: ...


def observe(session: Session, callback: Observer | None) -> None:
    """Call ``callback(component, outputs)`` after every component run (None: stop)."""
    for component in session.components():
        component.observer = callback
