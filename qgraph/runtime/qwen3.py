"""Greedy Qwen3-ASR decoding with ONNX Runtime on raw and compiled bundles.

Pipeline: audio -> ``log_mel`` -> ``encoder`` -> prompt -> ``decoder_init`` (positions
``arange(S)``) -> ``decoder_step`` loop feeding the argmax token back, until an EOS id from the
config or ``max_tokens`` generated tokens (the token from ``decoder_init`` counts).

Component I/O is read from each ONNX session, so both bundle forms work:

- ``encoder``: one input (``mel`` [1, n_mels, T]) -> first output ``audio_features`` [1, N, H];
- ``decoder_init``: ``input_ids``, ``position_ids`` [B, S], ``audio_features``, ``audio_offset``
  [1] -> ``logits`` [B, S, V] or [B, 1, V] (the last position is used), ``present_keys`` /
  ``present_values`` [L, B, kv, S, hd];
- ``decoder_step``: ``input_ids`` [B, 1] or ``input_embeds`` [B, 1, H] (rows looked up in
  ``embed_tokens.bin``), ``position_ids`` [B, 1], ``past_keys`` / ``past_values`` -> ``logits``
  [B, 1, V], ``present_keys`` / ``present_values``.

A bundle compiled with ``static-kv-cache`` has per-layer caches instead
(``past_key_values.{i}.key/value`` in both decoders, ``present.{i}.key/value`` out): they run
through ``qgraph.runtime.static_kv.StaticKvCache`` (buffers bound once with I/O binding, updated
in place), and the cache object stands in for the (keys, values) pair below.

Inputs are cast to the element types the sessions declare (e.g. a float16 KV cache).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from qgraph.errors import BundleError, RuntimeInputError
from qgraph.runtime.audio import SAMPLE_RATE, load_audio
from qgraph.runtime.files import (
    EmbedTable,
    component_path,
    load_tokenizer,
    read_config,
)
from qgraph.runtime.mel import log_mel
from qgraph.runtime.merged import USE_CACHE, merge_decoders
from qgraph.runtime.ort import Component, session_options
from qgraph.runtime.prompt import (
    SpecialTokens,
    build_prompt_ids,
    n_audio_tokens,
    parse_transcript,
    resolve_language,
    split_language_prefix,
)
from qgraph.runtime.session import Prompt, Timings, Transcript
from qgraph.runtime.static_kv import PAST, PRESENT, StaticKvCache, is_static

__all__ = ["AsrSession", "Timings", "Transcript", "default_max_tokens", "transcribe"]

logger = logging.getLogger(__name__)

COMPONENTS = ("encoder", "decoder_init", "decoder_step")


def default_max_tokens(audio_seconds: float) -> int:
    """Token budget for a clip: 32 plus 10 per second of audio.

    Fast speech is about 4-6 tokens per second (CJK up to ~8); the margin absorbs the
    ``language X<asr_text>`` prefix and keeps a looping model from running unbounded.
    """
    return 32 + math.ceil(10.0 * max(audio_seconds, 0.0))


class _Branch(Component):
    """decoder_init or decoder_step as a branch of the merged decoder session: the same API,
    ``run`` fills ``use_cache_branch`` and the other branch's inputs (empty tensors)."""

    def __init__(self, name: str, path: Path, merged: Component, own: list[str], step: bool):
        self.name, self.path, self.session = name, path, merged.session
        self.input_types = {n: merged.input_types[n] for n in own}
        self.input_shapes = {n: merged.input_shapes[n] for n in own}
        self.output_names = merged.output_names
        self._merged = merged
        self._fill = {USE_CACHE: np.asarray([step])}
        for other, dtype in merged.input_types.items():
            if other not in own and other != USE_CACHE:
                shape = [d if isinstance(d, int) else 0 for d in merged.input_shapes[other]]
                self._fill[other] = np.zeros(shape, dtype=dtype)

    @property
    def fill(self) -> Mapping[str, np.ndarray]:
        """The inputs this branch adds to its own: the branch flag and the other branch's."""
        return self._fill

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._merged._run({**self._fill, **feeds})


def _open_merged(
    paths: dict[str, Path], options: Any, providers: list[str], prepack_dir: Path | None = None
) -> tuple[_Branch, _Branch] | None:
    """decoder_init and decoder_step as the two branches of one session (``merged``), or None
    when they cannot be merged (the caller then opens them one by one)."""
    init_path, step_path = paths["decoder_init"], paths["decoder_step"]
    if init_path.parent != step_path.parent:
        return None
    try:
        init = onnx.load(str(init_path), load_external_data=False)
        step = onnx.load(str(step_path), load_external_data=False)
    except Exception:  # unreadable: loading them one by one reports it
        return None
    model = merge_decoders(init, step)
    if model is None:
        return None
    if prepack_dir is not None and not any(
        v.name.startswith("past_key_values.") for v in step.graph.input
    ):
        # ORT 1.31 writes an optimized stacked-cache decoder that then fails in
        # GroupQueryAttention (a buffer re-used at the past's shape): static layout only
        logger.info("pre-packed weights need the static-kv-cache layout; packing at load")
        prepack_dir = None
    try:
        merged = Component(
            "decoder",
            step_path,
            options,
            providers,
            model=model.SerializeToString(),
            prepack_dir=prepack_dir,
        )
    except BundleError as err:
        logger.info("cannot merge the decoders (%s); loading them one by one", err)
        return None
    init_inputs = [v.name for v in init.graph.input]
    step_inputs = [v.name for v in step.graph.input]
    return (
        _Branch("decoder_init", init_path, merged, init_inputs, step=False),
        _Branch("decoder_step", step_path, merged, step_inputs, step=True),
    )


class AsrSession:
    """A loaded bundle: config, tokenizer, three ORT sessions (and the embed table if needed).

    Create once, call ``transcribe`` many times. ``threads`` sets ORT's intra-op thread count
    (default: ORT's choice); ``optimization`` is ORT's graph optimization level
    (``disable``/``basic``/``extended``/``all``). With ``share_weights`` (default), decoder_init
    and decoder_step run as the two branches of one ONNX Runtime session, built in memory at
    load (``qgraph.runtime.merged``): ORT pre-packs each weight once for both instead of once per
    session, one private copy of the decoder instead of two (``benchmarks/shared_memory.py``).
    With ``prepack_dir``, the encoder and (static-kv-cache layout) the merged decoder load
    their pre-packed weights memory-mapped from a per-machine cache there, written on the first
    load (``qgraph.runtime.prepack``).
    """

    capacity: int | None = None
    """Positions the KV cache holds (prompt + generated tokens); None: unbounded."""
    max_samples: int | None = None
    static_kv: StaticKvCache | None = None
    """The bound per-layer caches of a ``static-kv-cache`` bundle (None: stacked caches)."""

    def __init__(
        self,
        bundle_dir: str | os.PathLike[str],
        *,
        threads: int | None = None,
        optimization: str = "all",
        providers: list[str] | None = None,
        share_weights: bool = True,
        prepack_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.config = read_config(self.bundle_dir)
        self.special = SpecialTokens.from_config(self.config)
        self.eos_ids = frozenset(self.special.eos_token_ids)
        mel = dict(self.config.get("mel") or {})
        self.sample_rate = int(mel.get("sample_rate", SAMPLE_RATE))
        self._mel_kwargs = {
            "n_mels": int(mel.get("n_mels", 128)),
            "n_fft": int(mel.get("n_fft", 400)),
            "hop_length": int(mel.get("hop_length", 160)),
            "sample_rate": self.sample_rate,
            "fmin": float(mel.get("fmin", 0.0)),
            "fmax": float(mel.get("fmax", 8000.0)),
        }
        self.tokenizer = load_tokenizer(self.bundle_dir)
        self.prepack_dir = Path(prepack_dir) if prepack_dir is not None else None
        self._open(threads, optimization, providers or ["CPUExecutionProvider"], share_weights)
        logger.info("loaded %s", self.bundle_dir)

    def _open(
        self, threads: int | None, optimization: str, providers: list[str], share_weights: bool
    ) -> None:
        """Open the ONNX Runtime sessions and check their I/O (the layout-specific part)."""
        paths = {name: component_path(self.bundle_dir, name) for name in COMPONENTS}

        def options() -> Any:
            return session_options(threads, optimization)

        prepack = self.prepack_dir
        encoder_options = session_options(threads, optimization, arena=False)
        self.encoder = Component(
            "encoder", paths["encoder"], encoder_options, providers, prepack_dir=prepack
        )
        merged = _open_merged(paths, options(), providers, prepack) if share_weights else None
        if merged is None:
            self.decoder_init = Component(
                "decoder_init", paths["decoder_init"], options(), providers
            )
            self.decoder_step = Component(
                "decoder_step", paths["decoder_step"], options(), providers
            )
        else:
            self.decoder_init, self.decoder_step = merged
        self.merged_decoders = merged is not None

        if len(self.encoder.input_types) != 1:
            raise BundleError(f"{self.encoder.path}: encoder must take exactly one input (mel)")
        self._mel_input = next(iter(self.encoder.input_types))
        self.step_takes_embeds = "input_embeds" in self.decoder_step.input_types
        token_input = "input_embeds" if self.step_takes_embeds else "input_ids"
        static = is_static(self.decoder_step)
        if static:
            layers = sum(n.startswith("past_key_values.") for n in self.decoder_step.input_types)
            names = [(i, k) for i in range(layers // 2) for k in ("key", "value")]
            past = {PAST.format(i=i, kind=k) for i, k in names}
            kv = {PRESENT.format(i=i, kind=k) for i, k in names}
        else:
            past, kv = {"past_keys", "past_values"}, {"present_keys", "present_values"}
        prefill_inputs = {"input_ids", "position_ids", "audio_features", "audio_offset"}
        self.decoder_init.require(prefill_inputs | (past if static else set()), {"logits", *kv})
        self.decoder_step.require({token_input, "position_ids", *past}, {"logits", *kv})
        self.embed_table = (
            EmbedTable.from_bundle(self.bundle_dir, self.config) if self.step_takes_embeds else None
        )
        self.static_kv = (
            StaticKvCache(self.decoder_init, self.decoder_step, token_input) if static else None
        )
        if self.static_kv is not None:
            self.capacity = self.static_kv.fixed

    # -- phases ---------------------------------------------------------------------------------
    def read_audio(self, audio: np.ndarray | str | os.PathLike[str]) -> np.ndarray:
        """A path is loaded and resampled; an array must already be mono at ``sample_rate``."""
        if isinstance(audio, (str, os.PathLike)):
            return load_audio(audio, self.sample_rate)
        samples = np.asarray(audio, dtype=np.float32)
        if samples.ndim != 1:
            raise RuntimeInputError(
                f"audio array must be 1-D mono samples at {self.sample_rate} Hz, "
                f"got shape {samples.shape}"
            )
        if samples.size == 0:
            raise RuntimeInputError("audio array is empty")
        if not np.all(np.isfinite(samples)):
            raise RuntimeInputError("audio array contains NaN or infinite samples")
        return samples

    def features(self, samples: np.ndarray) -> np.ndarray:
        """Log-mel ``[1, n_mels, T]`` float32."""
        return log_mel(samples, **self._mel_kwargs)[None]

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """Encoder output ``audio_features`` ``[1, N, H]``."""
        out = self.encoder.run({self._mel_input: mel})
        return out[self.encoder.output_names[0]]

    def prefill(
        self, prompt_ids: list[int], audio_features: np.ndarray, audio_offset: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run ``decoder_init``: (last-position logits ``[V]``, present keys, present values)."""
        seq = len(prompt_ids)
        feeds = {
            "input_ids": np.asarray([prompt_ids], dtype=np.int64),
            "position_ids": np.arange(seq, dtype=np.int64)[None],
            "audio_features": audio_features,
            "audio_offset": np.asarray([audio_offset], dtype=np.int64),
        }
        if self.static_kv is not None:
            logits = self.static_kv.prefill(feeds)
            return logits[0, -1], self.static_kv, self.static_kv
        out = self.decoder_init.run(feeds)
        return out["logits"][0, -1], out["present_keys"], out["present_values"]

    def step(
        self, token_id: int, position: int, past_keys: np.ndarray, past_values: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run ``decoder_step`` for one token: (logits ``[V]``, present keys, present values)."""
        if self.static_kv is not None:
            token = (
                self.embed_table.lookup(np.asarray([[token_id]]))
                if self.embed_table is not None
                else np.asarray([[token_id]])
            )
            logits = self.static_kv.step(token, np.asarray([[position]]))
            return logits[0, -1].copy(), past_keys, past_values
        feeds: dict[str, np.ndarray] = {
            "position_ids": np.asarray([[position]], dtype=np.int64),
            "past_keys": past_keys,
            "past_values": past_values,
        }
        if self.embed_table is not None:
            feeds["input_embeds"] = self.embed_table.lookup(np.asarray([[token_id]]))
        else:
            feeds["input_ids"] = np.asarray([[token_id]], dtype=np.int64)
        out = self.decoder_step.run(feeds)
        return out["logits"][0, -1], out["present_keys"], out["present_values"]

    def random_past(self, past_tokens: int, seed: int = 0) -> tuple[Any, Any]:
        """A random KV cache of ``past_tokens`` positions, as ``step`` takes it (benchmarks)."""
        if self.static_kv is not None:
            self.static_kv.fill_random(past_tokens, seed)
            return self.static_kv, self.static_kv
        layers, _, heads, _, head_dim = self.decoder_step.input_shapes["past_keys"]
        shape = (layers, 1, heads, past_tokens, head_dim)
        rng = np.random.default_rng(seed)
        dtype = self.decoder_step.input_types["past_keys"]
        return tuple((0.1 * rng.standard_normal(shape)).astype(dtype) for _ in range(2))

    def generate(
        self,
        audio_features: np.ndarray,
        prompt_ids: list[int],
        audio_offset: int,
        max_tokens: int,
        *,
        stop_on_eos: bool = True,
        timings: Timings | None = None,
    ) -> tuple[list[int], str]:
        """Greedy tokens after the prompt and the finish reason: ``"eos"``, ``"max_tokens"``, or
        ``"cache_full"`` when the bundle's static KV cache (``capacity``) has no room left."""
        if max_tokens < 1:
            raise RuntimeInputError(f"max_tokens must be >= 1, got {max_tokens}")
        timings = timings if timings is not None else Timings()
        if self.static_kv is not None and self.static_kv.fixed is None:
            self.static_kv.reserve(len(prompt_ids) + max_tokens)
        start = time.perf_counter()
        logits, keys, values = self.prefill(prompt_ids, audio_features, audio_offset)
        token = int(np.argmax(logits))
        timings.prefill_s = time.perf_counter() - start
        tokens = [token]
        position = len(prompt_ids)
        while True:
            if stop_on_eos and token in self.eos_ids:
                return tokens, "eos"
            if len(tokens) >= max_tokens:
                return tokens, "max_tokens"
            if self.capacity is not None and position >= self.capacity:
                return tokens, "cache_full"
            start = time.perf_counter()
            logits, keys, values = self.step(token, position, keys, values)
            token = int(np.argmax(logits))
            timings.step_s.append(time.perf_counter() - start)
            tokens.append(token)
            position += 1

    def prompt(
        self, n_audio: int, language: str | None = None, context: str = ""
    ) -> tuple[list[int], int]:
        """Prompt ids and audio offset for ``n_audio`` audio tokens."""
        return build_prompt_ids(self.tokenizer, n_audio, language, context, self.special)

    def decode_text(self, token_ids: list[int], language: str | None) -> tuple[str, str | None]:
        """(transcript, language) from generated ids; a forced ``language`` wins."""
        body = [t for t in token_ids if t not in self.eos_ids]
        if language is not None:
            prefix, text_ids = [], body
        else:
            prefix, text_ids = split_language_prefix(body, self.special)
        text = self.tokenizer.decode(text_ids, skip_special_tokens=True).strip()
        if language is not None:
            return text, resolve_language(language)
        if not prefix:
            # No <asr_text> id: the tokenizer may still spell it in the text.
            lang, text = parse_transcript(text)
            return text, lang
        prefix_text = self.tokenizer.decode(prefix, skip_special_tokens=True)
        return text, parse_transcript(prefix_text + "<asr_text>")[0]

    # -- the session protocol (qgraph.runtime.session) ------------------------------------------
    @property
    def decoder_sessions(self) -> int:
        return 1 if self.merged_decoders else 2

    def components(self) -> list[Component]:
        return [self.encoder, self.decoder_init, self.decoder_step]

    def prompt_for(
        self, features: np.ndarray, language: str | None = None, context: str = ""
    ) -> Prompt:
        return Prompt(*self.prompt(int(features.shape[1]), language, context))

    def greedy(
        self,
        features: np.ndarray,
        prompt: Prompt,
        max_tokens: int,
        *,
        stop_on_eos: bool = True,
        timings: Timings | None = None,
    ) -> tuple[list[int], str]:
        return self.generate(
            features,
            prompt.ids,
            prompt.offset,
            max_tokens,
            stop_on_eos=stop_on_eos,
            timings=timings,
        )

    def fixed_step(self, past_tokens: int, features: np.ndarray, prompt: Prompt) -> Any:
        keys, values = self.random_past(past_tokens)
        return lambda: self.step(prompt.ids[-1], past_tokens, keys, values)

    # -- end to end -----------------------------------------------------------------------------
    def transcribe(
        self,
        audio: np.ndarray | str | os.PathLike[str],
        *,
        max_tokens: int | None = None,
        language: str | None = None,
        context: str = "",
    ) -> Transcript:
        """Transcribe a path or a 1-D float array at ``sample_rate`` Hz.

        ``max_tokens`` defaults to ``default_max_tokens(duration)``; ``language`` (code or name)
        forces the output language; ``context`` goes into the system turn.
        """
        if language is not None:
            resolve_language(language)  # fail before any work on a bad name
        samples = self.read_audio(audio)
        timings = Timings(audio_s=samples.size / self.sample_rate)
        start = time.perf_counter()
        mel = self.features(samples)
        timings.mel_s = time.perf_counter() - start

        start = time.perf_counter()
        audio_features = self.encode(mel)
        timings.encoder_s = time.perf_counter() - start
        n_audio = int(audio_features.shape[1])
        expected = n_audio_tokens(mel.shape[-1])
        if n_audio != expected:
            logger.warning(
                "encoder returned %d audio tokens for %d mel frames (formula: %d)",
                n_audio,
                mel.shape[-1],
                expected,
            )
        prompt_ids, audio_offset = self.prompt(n_audio, language, context)
        budget = max_tokens if max_tokens is not None else default_max_tokens(timings.audio_s)
        tokens, finish = self.generate(
            audio_features, prompt_ids, audio_offset, budget, timings=timings
        )
        text, lang = self.decode_text(tokens, language)
        if finish == "max_tokens":
            logger.warning("stopped at max_tokens=%d before an end-of-text token", budget)
        elif finish == "cache_full":
            logger.warning("stopped: the KV cache holds %d positions", self.capacity)
        logger.debug(
            "transcribed %.2f s in %.3f s (%d tokens)",
            timings.audio_s,
            timings.total_s,
            len(tokens),
        )
        return Transcript(
            token_ids=tokens,
            text=text,
            language=lang,
            timings=timings,
            finish_reason=finish,
            prompt_length=len(prompt_ids),
            n_audio_tokens=n_audio,
        )


def transcribe(
    bundle_dir: str | os.PathLike[str],
    audio: np.ndarray | str | os.PathLike[str],
    *,
    max_tokens: int | None = None,
    language: str | None = None,
    context: str = "",
    threads: int | None = None,
) -> Transcript:
    """One-shot transcription (loads the bundle each call; use ``AsrSession`` to reuse it)."""
    session = AsrSession(bundle_dir, threads=threads)
    return session.transcribe(audio, max_tokens=max_tokens, language=language, context=context)
