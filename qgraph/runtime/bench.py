"""Latency benchmark of a bundle with the reference runtime.

``run_bench`` loads the bundle once, does one warm-up round (excluded) and then ``repeat``
measured rounds. Each round:

1. end to end on ``audio_seconds`` of the built-in speech (tiled to length): log-mel, encoder,
   ``decoder_init`` on the matching prompt, then exactly ``steps`` ``decoder_step`` calls
   (EOS ignored, so every round does the same work);
2. ``steps`` ``decoder_step`` calls on a fixed cache of ``past_tokens`` (100) random entries,
   which gives a step latency independent of the prompt length.

Reported: per-component medians, the median end-to-end time, real-time factor (end to end /
audio duration), decode speed (tokens/s at 100 past tokens and during the end-to-end run) and
peak resident memory of the process. With ``floor`` (default) also the step's memory-bandwidth
floor (``qgraph.runtime.floor``): the bytes a step reads (step weights, cache at
``past_tokens``) over this machine's read bandwidth with the benchmark's thread count, measured
after the rounds.

One loop for every family, through the session protocol (``qgraph.runtime.session``): on the
sherpa-onnx layout ``decoder_init`` is the prefill call of its one ``decoder`` graph and
``decoder_step`` its one-token calls over static caches; on Whisper the first and the cached
calls of the merged decoder (at most one 30 s window of audio; the fixed cache replaces the
self-attention entries only).
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from qgraph.errors import RuntimeInputError
from qgraph.runtime.audio import load_audio
from qgraph.runtime.session import Timings

__all__ = ["BenchResult", "bench_audio", "peak_rss_bytes", "rss_bytes", "run_bench"]

logger = logging.getLogger(__name__)


@dataclass
class BenchResult:
    """Medians in milliseconds unless the name says otherwise."""

    bundle: str
    audio_seconds: float
    mel_frames: int
    audio_tokens: int
    prompt_length: int
    steps: int
    past_tokens: int
    repeat: int
    threads: int | None
    load_s: float
    mel_ms: float
    encoder_ms: float
    decoder_init_ms: float
    decoder_step_ms: float
    decode_step_e2e_ms: float
    end_to_end_ms: float
    rtf: float
    tokens_per_s: float
    e2e_tokens_per_s: float
    rss_after_load_mb: float
    peak_rss_mb: float
    decoder_sessions: int = 1
    """ONNX Runtime sessions running the decoder graphs (1: merged or a single decoder graph)."""
    step_weight_mb: float | None = None
    """MiB of step weights read per token (``qgraph.runtime.floor.step_bytes``)."""
    step_cache_mb: float | None = None
    """MiB of past cache read per token at ``past_tokens``."""
    bandwidth_gbs: float | None = None
    """Measured read bandwidth (GB/s, 1e9 bytes) with ``floor_threads`` threads."""
    floor_threads: int | None = None
    floor_ms: float | None = None
    """The step's bandwidth floor: (weights + cache) / bandwidth."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_rounds(
        cls, rounds: list[tuple[Timings, list[float]]], *, rss_after_load: int, **fields: Any
    ) -> BenchResult:
        """The result of measured ``rounds`` (each: the end-to-end run's ``Timings`` and the
        fixed-cache step times, in seconds): medians, the rates derived from them and the peak
        RSS so far; ``fields`` describe the run (bundle, audio, steps, ...)."""
        step_ms = _median_ms([s for _, fixed in rounds for s in fixed])
        e2e_step_ms = _median_ms([s for t, _ in rounds for s in t.step_s])
        e2e_ms = _median_ms([t.total_s for t, _ in rounds])
        return cls(
            **fields,
            mel_ms=_median_ms([t.mel_s for t, _ in rounds]),
            encoder_ms=_median_ms([t.encoder_s for t, _ in rounds]),
            decoder_init_ms=_median_ms([t.prefill_s for t, _ in rounds]),
            decoder_step_ms=step_ms,
            decode_step_e2e_ms=e2e_step_ms,
            end_to_end_ms=e2e_ms,
            rtf=e2e_ms / 1000.0 / fields["audio_seconds"],
            tokens_per_s=1000.0 / step_ms,
            e2e_tokens_per_s=1000.0 / e2e_step_ms,
            rss_after_load_mb=rss_after_load / 2**20,
            peak_rss_mb=peak_rss_bytes() / 2**20,
        )


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (current RSS where no peak is known)."""
    import psutil

    info = psutil.Process().memory_info()
    peak = getattr(info, "peak_wset", None)  # Windows
    if peak:
        return int(peak)
    try:
        import resource

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(maxrss if sys.platform == "darwin" else maxrss * 1024)
    except (ImportError, OSError):
        return int(info.rss)


def rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def bench_audio(seconds: float, sample_rate: int = 16000, source: Path | None = None) -> np.ndarray:
    """``seconds`` of speech: ``source`` (default: the built-in long example) tiled and cut."""
    if seconds <= 0:
        raise ValueError(f"audio length must be positive, got {seconds}")
    if source is None:
        from qgraph.examples import example_long_audio

        source = example_long_audio()
    speech = load_audio(source, sample_rate)
    n = int(round(seconds * sample_rate))
    reps = -(-n // speech.size)
    return np.tile(speech, reps)[:n].astype(np.float32)


def _median_ms(values: list[float]) -> float:
    return 1000.0 * statistics.median(values) if values else float("nan")


def run_bench(
    bundle_dir: str | os.PathLike[str],
    *,
    audio_seconds: float = 11.0,
    steps: int = 30,
    repeat: int = 5,
    past_tokens: int = 100,
    threads: int | None = None,
    audio: np.ndarray | None = None,
    share_weights: bool = True,
    floor: bool = True,
    prepack_dir: str | os.PathLike[str] | None = None,
) -> BenchResult:
    """Benchmark ``bundle_dir`` with its family's session (any ``Session``); ``audio`` (16 kHz
    mono) overrides the built-in speech; ``share_weights=False`` opens a Qwen3-ASR bundle's
    decoder_init and decoder_step as two sessions."""
    if steps < 1 or repeat < 1 or past_tokens < 1:
        raise ValueError("steps, repeat and past_tokens must be >= 1")
    from qgraph.families import open_session

    start = time.perf_counter()
    extra: dict[str, Any] = {"prepack_dir": prepack_dir} if prepack_dir is not None else {}
    session = open_session(bundle_dir, threads=threads, share_weights=share_weights, **extra)
    load_s = time.perf_counter() - start
    rss_after_load = rss_bytes()
    samples = audio if audio is not None else bench_audio(audio_seconds, session.sample_rate)
    if session.max_samples is not None and samples.size > session.max_samples:
        seconds = session.max_samples / session.sample_rate
        raise RuntimeInputError(f"this bundle's benchmark takes at most {seconds:.0f} s of audio")
    seconds = samples.size / session.sample_rate

    mel = session.features(samples)
    features = session.encode(mel)
    prompt = session.prompt_for(features)
    fixed_step = session.fixed_step(past_tokens, features, prompt)

    rounds: list[tuple[Timings, list[float]]] = []
    for round_index in range(repeat + 1):  # round 0 is the warm-up
        timings = Timings(audio_s=seconds)
        t0 = time.perf_counter()
        mel = session.features(samples)
        t1 = time.perf_counter()
        features = session.encode(mel)
        t2 = time.perf_counter()
        timings.mel_s, timings.encoder_s = t1 - t0, t2 - t1
        session.greedy(features, prompt, steps + 1, stop_on_eos=False, timings=timings)
        fixed: list[float] = []
        for _ in range(steps):
            t = time.perf_counter()
            fixed_step()
            fixed.append(time.perf_counter() - t)
        if round_index:
            rounds.append((timings, fixed))
            logger.debug("bench round %d: %.3f s end to end", round_index, timings.total_s)

    result = BenchResult.from_rounds(
        rounds,
        rss_after_load=rss_after_load,
        bundle=str(bundle_dir),
        audio_seconds=seconds,
        mel_frames=int(mel.shape[-1]),
        audio_tokens=int(features.shape[1]),
        prompt_length=len(prompt.ids),
        steps=steps,
        past_tokens=past_tokens,
        repeat=repeat,
        threads=threads,
        load_s=load_s,
        decoder_sessions=session.decoder_sessions,
    )
    if not floor:
        return result
    # after the peak RSS is taken: the bandwidth probe allocates its own buffer
    return replace(result, **_floor(session, bundle_dir, past_tokens, threads))


def _floor(session: Any, bundle_dir: Any, past_tokens: int, threads: int | None) -> dict:
    """The floor fields of ``BenchResult`` for the session's step graph ({} if none)."""
    from qgraph.families import DECODER, MERGED_DECODER, STEP, family_of
    from qgraph.runtime.floor import floor_ms, read_bandwidth, step_bytes

    roles = family_of(bundle_dir).components
    by_role = {roles.get(c.name): c for c in session.components()}
    step = next((by_role[r] for r in (STEP, MERGED_DECODER, DECODER) if r in by_role), None)
    if step is None:
        return {}
    read = step_bytes(step.path, past_tokens)
    n = threads or os.cpu_count() or 1
    bandwidth = read_bandwidth(n)["best"]
    return {
        "step_weight_mb": read.weights / 2**20,
        "step_cache_mb": read.cache / 2**20,
        "bandwidth_gbs": bandwidth / 1e9,
        "floor_threads": n,
        "floor_ms": floor_ms(read, bandwidth),
    }
