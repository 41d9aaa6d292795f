"""Accuracy and speed of a bundle on labelled audio: WER (jiwer), RTF, a per-utterance report.

``evaluate(bundle, data_dir)`` transcribes every utterance of ``data_dir`` with the reference
runtime of the bundle's family (``qgraph.families.open_session``; anything with
``transcribe(samples, language=...) -> Transcript`` and a ``sample_rate`` works) and scores it.

Data folder (searched recursively): audio files (``.wav``, ``.flac``, ``.ogg``), each with its
reference text either in a same-stem ``.txt`` file beside it or on a line ``ID text`` of a
LibriSpeech-style ``*.trans.txt`` file in the same folder (``ID`` = the audio file's stem).

Normalisation (``normalize``), applied to reference and hypothesis alike before scoring:
Unicode NFKC and case folding; text in ``[...]``, ``(...)`` and ``<...>`` removed (noise tags);
apostrophes removed (``don't`` = ``dont``); hyphens, slashes and every other punctuation or symbol
character (Unicode categories P and S) replaced by a space; whitespace collapsed. Numbers are
not spelled out ("4" and "four" differ), and no spelling variants are merged.

WER is corpus-level: (substitutions + deletions + insertions) / reference words, summed over
utterances (jiwer's alignment). RTF is wall-clock seconds of ``transcribe`` (log-mel, encoder,
decoder; audio file reading excluded) divided by audio seconds, per utterance and in total.

Batched (``batch > 1``, a Qwen3-ASR bundle compiled with ``static-kv-cache``): the utterances
are sorted by length and decoded ``batch`` at a time, every decode step serving all of them
(``qgraph.runtime.batch``); the transcripts are the same as batch 1 wherever the decoder's
kernels are (ONNX Runtime's int8-activation MatMulNBits can round a row differently with more
rows; see ``benchmarks/results/perf.md``). An utterance's seconds are then its own log-mel and
encoder time plus an equal share of its batch's prefills and steps, so the total is the wall
clock of all batches; the report keeps the data folder's order.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from qgraph.errors import QGraphError, RuntimeInputError
from qgraph.families import open_session
from qgraph.runtime.audio import find_audio, load_audio

__all__ = [
    "EvalReport",
    "Transcriber",
    "Utterance",
    "UtteranceResult",
    "evaluate",
    "load_dataset",
    "normalize",
    "reference_texts",
    "score",
]

logger = logging.getLogger(__name__)

_TAGS = re.compile(r"\[[^\]]*\]|\([^)]*\)|<[^>]*>")


class Transcriber(Protocol):
    """What ``evaluate`` needs from a runtime session."""

    sample_rate: int

    def transcribe(self, audio: np.ndarray, *, language: str | None = None) -> Any: ...


def normalize(text: str) -> str:
    """The text as scored: see the module docstring for the exact rules."""
    text = _TAGS.sub(" ", unicodedata.normalize("NFKC", text).casefold())
    text = text.replace("'", "").replace("\u2019", "")
    kept = [" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text]
    return " ".join("".join(kept).split())


@dataclass(frozen=True)
class Utterance:
    id: str
    audio: Path
    text: str


@dataclass
class UtteranceResult:
    """One scored utterance; ``wer`` is this utterance's own error rate."""

    id: str
    audio_s: float
    seconds: float
    reference: str
    hypothesis: str
    words: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        return self.errors / self.words if self.words else float("nan")

    @property
    def rtf(self) -> float:
        return self.seconds / self.audio_s if self.audio_s else float("nan")


@dataclass
class EvalReport:
    """All utterances of one evaluation and the corpus totals."""

    bundle: str
    data: str
    utterances: list[UtteranceResult]

    @property
    def words(self) -> int:
        return sum(u.words for u in self.utterances)

    @property
    def errors(self) -> int:
        return sum(u.errors for u in self.utterances)

    @property
    def wer(self) -> float:
        return self.errors / self.words if self.words else float("nan")

    @property
    def audio_s(self) -> float:
        return sum(u.audio_s for u in self.utterances)

    @property
    def seconds(self) -> float:
        return sum(u.seconds for u in self.utterances)

    @property
    def rtf(self) -> float:
        return self.seconds / self.audio_s if self.audio_s else float("nan")

    def to_dict(self) -> dict[str, Any]:
        utterances = [{**asdict(u), "wer": u.wer, "rtf": u.rtf} for u in self.utterances]
        totals = {"wer": self.wer, "words": self.words, "errors": self.errors}
        totals |= {"audio_s": self.audio_s, "seconds": self.seconds, "rtf": self.rtf}
        return {"bundle": self.bundle, "data": self.data, **totals, "utterances": utterances}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def table(self) -> str:
        """One line per utterance (id, seconds, WER, RTF, hypothesis), then the totals."""
        width = max([len(u.id) for u in self.utterances] + [9])
        lines = [f"{'utterance':<{width}}  {'sec':>6}  {'WER':>6}  {'RTF':>6}  hypothesis"]
        for u in self.utterances:
            lines.append(
                f"{u.id:<{width}}  {u.audio_s:6.2f}  {100 * u.wer:5.1f}%  {u.rtf:6.3f}  "
                f"{u.hypothesis}"
            )
        lines.append(
            f"{len(self.utterances)} utterances, {self.audio_s:.1f} s: WER {100 * self.wer:.2f}% "
            f"({self.errors}/{self.words} words), RTF {self.rtf:.3f}"
        )
        return "\n".join(lines)


def load_dataset(data_dir: str | os.PathLike[str]) -> list[Utterance]:
    """Audio files under ``data_dir`` with their reference texts, sorted by path."""
    root = Path(data_dir)
    files = find_audio(root)
    texts = reference_texts(root, files)
    out = []
    for audio in files:
        text = texts.get(audio)
        if text is None:
            own = audio.with_suffix(".txt").name
            raise RuntimeInputError(f"{audio}: no transcript ({own} or a *.trans.txt line)")
        if not normalize(text):
            raise RuntimeInputError(f"{audio}: the reference transcript is empty")
        out.append(Utterance(audio.relative_to(root).with_suffix("").as_posix(), audio, text))
    return out


def reference_texts(root: Path, files: list[Path]) -> dict[Path, str]:
    """The reference transcript of each of ``files`` that has one under ``root``: a same-stem
    ``.txt`` beside it, else its line in a LibriSpeech-style ``*.trans.txt``."""
    listed: dict[Path, str] = {}
    for trans in root.rglob("*.trans.txt"):
        for line in trans.read_text(encoding="utf-8").splitlines():
            if line.strip():
                uid, _, text = line.strip().partition(" ")
                listed[trans.parent / uid] = text
    out = {}
    for audio in files:
        own = audio.with_suffix(".txt")
        if own.is_file():
            out[audio] = own.read_text(encoding="utf-8")
        elif audio.with_suffix("") in listed:
            out[audio] = listed[audio.with_suffix("")]
    return out


def score(reference: str, hypothesis: str) -> tuple[int, int, int, int]:
    """``(reference words, substitutions, deletions, insertions)`` after ``normalize``."""
    try:
        import jiwer
    except ModuleNotFoundError:
        raise QGraphError("word error rates need jiwer: pip install jiwer") from None
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        raise RuntimeInputError("the reference transcript is empty after normalisation")
    out = jiwer.process_words(ref, hyp)
    return len(ref.split()), out.substitutions, out.deletions, out.insertions


def evaluate(
    bundle_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    session: Transcriber | None = None,
    threads: int | None = None,
    language: str | None = None,
    limit: int | None = None,
    batch: int = 1,
) -> EvalReport:
    """Transcribe and score every utterance of ``data_dir`` (the first ``limit`` if given),
    ``batch`` utterances per decode step (see the module docstring; ``batch > 1`` raises
    ``RuntimeInputError`` on a bundle that cannot batch, before any decoding).

    ``session`` overrides ``open_session(bundle_dir, threads=threads)``.
    """
    if batch < 1:
        raise RuntimeInputError(f"batch size must be >= 1, got {batch}")
    utterances = load_dataset(data_dir)[:limit]
    session = session if session is not None else open_session(bundle_dir, threads=threads)
    if batch > 1:
        from qgraph.runtime.batch import require_batching

        require_batching(session)
    samples = [load_audio(utt.audio, session.sample_rate) for utt in utterances]
    if batch == 1:
        decoded = [_timed_transcribe(session, s, language) for s in samples]
    else:
        decoded = _batched(session, samples, batch, language)
    results = []
    for utt, audio, (hypothesis, seconds) in zip(utterances, samples, decoded, strict=True):
        words, sub, dele, ins = score(utt.text, hypothesis)
        results.append(
            UtteranceResult(
                utt.id,
                audio.size / session.sample_rate,
                seconds,
                utt.text.strip(),
                hypothesis,
                words,
                sub,
                dele,
                ins,
            )
        )
        logger.info("%s: %d/%d errors in %.2f s", utt.id, sub + dele + ins, words, seconds)
    return EvalReport(str(bundle_dir), str(data_dir), results)


def _timed_transcribe(
    session: Transcriber, samples: np.ndarray, language: str | None
) -> tuple[str, float]:
    """(hypothesis, wall-clock seconds) of one ``transcribe``."""
    start = time.perf_counter()
    text = session.transcribe(samples, language=language).text
    return text, time.perf_counter() - start


def _batched(
    session: Any, samples: list[np.ndarray], batch: int, language: str | None
) -> list[tuple[str, float]]:
    """(hypothesis, seconds) per utterance in input order, decoded ``batch`` at a time in
    length order; each utterance's seconds: its log-mel and encoder time plus an equal share of
    the rest of its batch's wall clock (prefills and steps)."""
    from qgraph.runtime.batch import transcribe_many

    order = sorted(range(len(samples)), key=lambda i: samples[i].size)
    out: dict[int, tuple[str, float]] = {}
    for lo in range(0, len(order), batch):
        rows = order[lo : lo + batch]
        start = time.perf_counter()
        transcripts = transcribe_many(
            session, [samples[i] for i in rows], batch_size=len(rows), language=language
        )
        wall = time.perf_counter() - start
        own = [t.timings.mel_s + t.timings.encoder_s for t in transcripts]
        shared = max(wall - sum(own), 0.0) / len(rows)
        for i, t, seconds in zip(rows, transcripts, own, strict=True):
            out[i] = (t.text, seconds + shared)
    return [out[i] for i in range(len(samples))]
