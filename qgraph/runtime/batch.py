"""Batched greedy decoding: several utterances share every decode step's weight reads.

A decode step is bound by reading the decoder's weights; with ``B`` rows, one read serves
``B`` tokens. The Qwen3-ASR graphs take batch-1 encoder input (``mel [1, n_mels, T]``), and a
prefill of several prompts would need padding that the last-position logits
(``slice-init-logits``) cannot see past, so each utterance is encoded and prefilled alone
(batch 1), straight into its row of a batched static KV cache (``StaticKvCache`` with ``batch``
rows: the prefill binds that row's slice of each buffer), and then every step runs all rows at
once. Rows keep their own positions (GroupQueryAttention's ``seqlens_k`` per row comes from
``position_ids``), so no padding is attended; a finished row repeats its last token at its
last position (a write to a slot nobody reads) until the whole batch is done.

Needs a ``static-kv-cache`` bundle (the stacked cache has one past length for all rows).
``transcribe_many`` sorts the utterances by length, so the rows of a batch finish at similar
times, and returns the transcripts in input order.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from qgraph.errors import RuntimeInputError
from qgraph.runtime.session import Prompt, Timings, Transcript
from qgraph.runtime.static_kv import StaticKvCache

__all__ = ["greedy_batch", "require_batching", "transcribe_many"]

logger = logging.getLogger(__name__)


def require_batching(session: Any) -> StaticKvCache:
    """The session's static cache; a ``RuntimeInputError`` when the session cannot batch (a
    stacked-cache Qwen3-ASR bundle, or another family's session)."""
    static = getattr(session, "static_kv", None)
    if static is None:
        raise RuntimeInputError(
            "batched decoding needs a qwen3-asr bundle compiled with static-kv-cache "
            "(qgraph compile IN -o OUT --passes static-kv-cache)"
        )
    return static


def _cache(session: Any, batch: int) -> StaticKvCache:
    """The session's static cache of ``batch`` rows (kept on the session for reuse)."""
    require_batching(session)
    if batch == 1:
        return session.static_kv
    caches = session.__dict__.setdefault("_batch_caches", {})
    if batch not in caches:
        token_input = session.static_kv.token_input
        caches[batch] = StaticKvCache(
            session.decoder_init, session.decoder_step, token_input, batch=batch
        )
    return caches[batch]


def greedy_batch(
    session: Any,
    jobs: Sequence[tuple[np.ndarray, Prompt, int]],
    *,
    stop_on_eos: bool = True,
    timings: Timings | None = None,
) -> list[tuple[list[int], str]]:
    """Greedy tokens and finish reason for each ``(audio_features, prompt, max_tokens)`` job,
    all rows stepping together (see the module docstring). ``timings`` (optional) receives the
    summed prefill time and one entry per batched step."""
    batch = len(jobs)
    if batch < 1:
        return []
    cache = _cache(session, batch)
    if cache.fixed is None:
        cache.reserve(max(len(p.ids) + n for _, p, n in jobs))
    timings = timings if timings is not None else Timings()
    tokens: list[list[int]] = []
    positions = np.zeros((batch, 1), np.int64)
    finish: list[str | None] = [None] * batch

    def done(row: int) -> str | None:
        token, (_, _, budget) = tokens[row][-1], jobs[row]
        if stop_on_eos and token in session.eos_ids:
            return "eos"
        if len(tokens[row]) >= budget:
            return "max_tokens"
        if cache.fixed is not None and positions[row, 0] >= cache.fixed:
            return "cache_full"
        return None

    start = time.perf_counter()
    for row, (features, prompt, _) in enumerate(jobs):
        seq = len(prompt.ids)
        feeds = {
            "input_ids": np.asarray([prompt.ids], np.int64),
            "position_ids": np.arange(seq, dtype=np.int64)[None],
            "audio_features": features,
            "audio_offset": np.asarray([prompt.offset], np.int64),
        }
        logits = cache.prefill(feeds, row=row)
        tokens.append([int(np.argmax(logits[0, -1]))])
        positions[row, 0] = seq
        finish[row] = done(row)
    timings.prefill_s = time.perf_counter() - start

    while not all(finish):
        start = time.perf_counter()
        last = np.asarray([[t[-1]] for t in tokens])
        token_in = session.embed_table.lookup(last) if session.embed_table is not None else last
        best = np.argmax(cache.step(token_in, positions)[:, -1], axis=-1)  # one pass, all rows
        for row in range(batch):
            if finish[row] is None:
                tokens[row].append(int(best[row]))
                positions[row, 0] += 1
                finish[row] = done(row)
        timings.step_s.append(time.perf_counter() - start)
    return [(t, str(f)) for t, f in zip(tokens, finish, strict=True)]


def transcribe_many(
    session: Any,
    audios: Sequence[np.ndarray | str | os.PathLike[str]],
    *,
    batch_size: int = 4,
    max_tokens: int | None = None,
    language: str | None = None,
    context: str = "",
) -> list[Transcript]:
    """Transcribe every audio, ``batch_size`` at a time (``greedy_batch``); input order kept.
    A transcript's timings hold its own mel and encoder times and its batch's prefill and
    steps (shared by the batch's rows)."""
    from qgraph.runtime.qwen3 import default_max_tokens

    if batch_size < 1:
        raise RuntimeInputError(f"batch size must be >= 1, got {batch_size}")
    samples = [session.read_audio(a) for a in audios]
    order = sorted(range(len(samples)), key=lambda i: samples[i].size)
    results: dict[int, Transcript] = {}
    for lo in range(0, len(order), batch_size):
        rows = order[lo : lo + batch_size]
        jobs, per = [], []
        for i in rows:
            timings = Timings(audio_s=samples[i].size / session.sample_rate)
            start = time.perf_counter()
            mel = session.features(samples[i])
            timings.mel_s = time.perf_counter() - start
            start = time.perf_counter()
            features = session.encode(mel)
            timings.encoder_s = time.perf_counter() - start
            prompt = session.prompt_for(features, language, context)
            budget = max_tokens if max_tokens is not None else default_max_tokens(timings.audio_s)
            jobs.append((features, prompt, budget))
            per.append(timings)
        shared = Timings()
        decoded = greedy_batch(session, jobs, timings=shared)
        for i, timings, (features, prompt, _), (tokens, reason) in zip(
            rows, per, jobs, decoded, strict=True
        ):
            timings.prefill_s, timings.step_s = shared.prefill_s, list(shared.step_s)
            text, lang = session.decode_text(tokens, language)
            results[i] = Transcript(
                token_ids=tokens,
                text=text,
                language=lang,
                timings=timings,
                finish_reason=reason,
                prompt_length=len(prompt.ids),
                n_audio_tokens=int(features.shape[1]),
            )
        logger.debug("decoded a batch of %d", len(rows))
    return [results[i] for i in range(len(samples))]
