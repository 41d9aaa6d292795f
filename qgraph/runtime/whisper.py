"""Greedy Whisper decoding with ONNX Runtime on raw and compiled ``whisper`` bundles.

Pipeline for each 30 s window of audio (longer audio is cut into consecutive windows, each
transcribed on its own; a word on a window boundary may be split): samples padded with zeros to
``n_samples`` -> ``log_mel`` (Whisper's log-mel, ``n_mels`` from the encoder input) ->
``encoder_model`` -> prompt ``<|startoftranscript|> [<|lang|> <|task|>] <|notimestamps|>`` ->
``decoder_model_merged`` once with ``use_cache_branch=False`` on the whole prompt, then once per
token with ``use_cache_branch=True``. Each step's logits get ``suppress_tokens`` set to -inf, the
first step also ``begin_suppress_tokens`` (what transformers, Transformers.js and CTranslate2
do); the argmax is fed back until ``<|endoftext|>`` or ``max_tokens``.

Read from the bundle: ``generation_config.json`` (special ids, suppress lists, ``max_length``,
``is_multilingual``, ``lang_to_id``, ``task_to_id``), ``preprocessor_config.json`` (window
length), ``tokenizer.json``, and the two components (manifest paths, else ``onnx/<name>.onnx``).
The decoder's cache inputs are named ``past_key_values.*`` and its outputs ``present.*``; a
present with batch 0 means "keep the past you fed" (the cross-attention cache after the first
call). Inputs are cast to the types the sessions declare. Depends on numpy and onnxruntime only.

A bundle compiled with ``static-kv-cache`` (a ``position_ids`` input; the self-attention caches
``past_key_values.{i}.decoder.*`` are ``[1, heads, max_len, head_dim]`` buffers updated in
place) runs through ``qgraph.runtime.static_kv.StaticKvCache``: the buffers are bound once
with I/O binding as past and present, the prefill's cross-attention caches stay OrtValues bound
to the step for the whole window, and a step writes its token and position into bound arrays.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from qgraph.errors import BundleError, RuntimeInputError
from qgraph.runtime.audio import SAMPLE_RATE, load_audio
from qgraph.runtime.files import component_path, load_tokenizer, read_config, read_json
from qgraph.runtime.mel import log_mel
from qgraph.runtime.ort import Component, session_options
from qgraph.runtime.prompt import LANGUAGES
from qgraph.runtime.session import Prompt, Timings, Transcript
from qgraph.runtime.static_kv import StaticKvCache, present_name

__all__ = ["WhisperSession"]

logger = logging.getLogger(__name__)

ENCODER, DECODER = "encoder_model", "decoder_model_merged"
USE_CACHE = "use_cache_branch"


class _Branch:
    """The merged decoder seen as its prompt or its cached branch (``use_cache_branch`` fixed),
    as ``StaticKvCache`` drives a prefill and a step."""

    def __init__(self, decoder: Component, cached: bool, fill: dict[str, np.ndarray]):
        self.session = decoder.session
        self.input_types, self.input_shapes = decoder.input_types, decoder.input_shapes
        self.output_names = decoder.output_names
        self.fill = {USE_CACHE: np.asarray([cached]), **fill}


def _component(root: Path, name: str, options: Any, providers: list[str]) -> Component:
    """``name``'s session, from the manifest or ``onnx/NAME.onnx`` (the Transformers.js layout)."""
    try:
        path = component_path(root, name)
    except BundleError:
        path = root / "onnx" / f"{name}.onnx"
        if not path.is_file():
            raise
    return Component(name, path, options, providers)


class WhisperSession:
    """A loaded Whisper bundle. Create once, call ``transcribe`` many times.

    ``threads``, ``optimization`` and ``providers`` are as for ``AsrSession``; ``share_weights``
    is accepted for the session protocol (the merged decoder is one session already).
    """

    decoder_sessions = 1

    def __init__(
        self,
        bundle_dir: str | os.PathLike[str],
        *,
        threads: int | None = None,
        optimization: str = "all",
        providers: list[str] | None = None,
        share_weights: bool = True,
    ) -> None:
        del share_weights
        self.bundle_dir = root = Path(bundle_dir)
        self.config = read_config(root)
        gen = read_json(root, "generation_config.json")
        pre = read_json(root, "preprocessor_config.json", required=False)
        self.tokenizer = load_tokenizer(root)
        providers = providers or ["CPUExecutionProvider"]
        encoder_options = session_options(threads, optimization, arena=False)
        self.encoder = _component(root, ENCODER, encoder_options, providers)
        self.decoder = _component(root, DECODER, session_options(threads, optimization), providers)
        required = {"input_ids", "encoder_hidden_states", USE_CACHE}
        self.past_names = [n for n in self.decoder.input_types if n.startswith("past_key_values.")]
        self.static_kv: StaticKvCache | None = None
        """The bound self-attention buffers of a ``static-kv-cache`` bundle (None: dynamic)."""
        if len(self.encoder.input_types) != 1 or not required <= set(self.decoder.input_types):
            raise BundleError(
                f"{root}: not a Whisper encoder_model / decoder_model_merged pair "
                f"(decoder inputs: {', '.join(self.decoder.input_types)})"
            )
        try:
            eos = gen["eos_token_id"]
            self.eos = int(eos[0] if isinstance(eos, list) else eos)
            self.sot = int(gen["decoder_start_token_id"])
            self.no_timestamps = int(gen["no_timestamps_token_id"])
        except (KeyError, TypeError, ValueError, IndexError):
            raise BundleError(
                f"{root}: generation_config.json lacks Whisper's special ids"
            ) from None
        self.multilingual = bool(gen.get("is_multilingual", False))
        self.lang_to_id = {k.strip("<|>"): int(v) for k, v in (gen.get("lang_to_id") or {}).items()}
        self.task_to_id = {k: int(v) for k, v in (gen.get("task_to_id") or {}).items()}
        self.suppress = np.asarray(gen.get("suppress_tokens") or [], dtype=np.int64)
        self.begin_suppress = np.asarray(gen.get("begin_suppress_tokens") or [], dtype=np.int64)
        self.max_length = int(gen.get("max_length", self.config.get("max_target_positions", 448)))
        mels = next(iter(self.encoder.input_shapes.values()))[1]
        self.n_mels = mels if isinstance(mels, int) else int(pre.get("feature_size", 80))
        self.frames = int(pre.get("nb_max_frames", 3000))
        self.hop = int(pre.get("hop_length", 160))
        self.sample_rate = int(pre.get("sampling_rate", SAMPLE_RATE))
        self.n_samples = self.max_samples = self.frames * self.hop
        if "position_ids" in self.decoder.input_types:
            self.static_kv = self._static_cache()
        logger.info("loaded %s (%d mels, %d-sample windows)", root, self.n_mels, self.n_samples)

    def _static_cache(self) -> StaticKvCache:
        own = [n for n in self.past_names if ".decoder." in n]
        self.cross_names = [n for n in self.past_names if n not in own]
        empty = {n: v.astype(self.decoder.input_types[n]) for n, v in self.empty_past().items()}
        prompt = _Branch(self.decoder, False, {n: empty[n] for n in self.cross_names})
        cached = _Branch(self.decoder, True, {})
        return StaticKvCache(prompt, cached, "input_ids", names=own)  # type: ignore[arg-type]

    # -- phases ---------------------------------------------------------------------------------
    def features(self, window: np.ndarray) -> np.ndarray:
        """Log-mel ``[1, n_mels, frames]`` of at most one window of samples (zero-padded)."""
        x = np.zeros(self.n_samples, dtype=np.float32)
        x[: min(window.size, self.n_samples)] = window[: self.n_samples]
        return log_mel(x, self.n_mels, hop_length=self.hop, min_samples=self.n_samples)[None]

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """``last_hidden_state [1, N, d]``."""
        return next(iter(self.encoder.run({next(iter(self.encoder.input_types)): mel}).values()))

    def empty_past(self) -> dict[str, np.ndarray]:
        """Zero-length caches for the first decoder call."""
        return {
            n: np.zeros((1, self.decoder.input_shapes[n][1], 0, self.decoder.input_shapes[n][3]))
            for n in self.past_names
        }

    def decode(
        self, ids: list[int], hidden: np.ndarray, past: dict[str, np.ndarray] | None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One decoder call: last-position logits ``[V]`` (float32) and the caches after it
        (the dynamic layout; a static one runs ``start`` / ``advance``)."""
        if self.static_kv is not None:
            raise RuntimeInputError(
                "decode() feeds whole caches; this static-kv-cache bundle runs start()/advance()"
            )
        feeds = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "encoder_hidden_states": hidden,
            "use_cache_branch": np.asarray([past is not None]),
            **(past if past is not None else self.empty_past()),
        }
        out = self.decoder.run(feeds)
        new = {}
        for name in self.past_names:
            present = out[name.replace("past_key_values.", "present.")]
            new[name] = present if present.shape[0] or past is None else past[name]
        return np.array(out["logits"][0, -1], dtype=np.float32), new

    def start(self, ids: list[int], hidden: np.ndarray, budget: int) -> tuple[np.ndarray, Any]:
        """The prompt's call: last-position logits and the decoding state (the caches; for a
        static bundle the next position, its buffers sized for ``budget`` more tokens)."""
        kv = self.static_kv
        if kv is None:
            logits, past = self.decode(ids, hidden, None)
            return logits, (past, hidden)
        if kv.fixed is None:
            kv.reserve(len(ids) + budget)
        elif len(ids) + budget > kv.fixed:
            raise RuntimeInputError(
                f"the static KV cache holds {kv.fixed} positions; {len(ids) + budget} needed"
            )
        feeds = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "position_ids": np.arange(len(ids), dtype=np.int64)[None],
            "encoder_hidden_states": hidden,
        }
        cross = tuple(present_name(n) for n in self.cross_names)
        logits = kv.prefill(feeds, outputs=cross)
        kv.bind_step_inputs(
            {"encoder_hidden_states": hidden}
            | {n: kv.outputs[present_name(n)] for n in self.cross_names}
        )
        return np.array(logits[0, -1], dtype=np.float32), len(ids)

    def advance(self, token: int, state: Any) -> tuple[np.ndarray, Any]:
        """One cached step on ``token``: logits and the state after it."""
        kv = self.static_kv
        if kv is None:
            past, hidden = state
            logits, past = self.decode([token], hidden, past)
            return logits, (past, hidden)
        logits = kv.step(np.asarray([[token]]), np.asarray([[state]]))
        return np.array(logits[0, -1], dtype=np.float32), state + 1

    def prompt(self, language: str = "en") -> list[int]:
        """Prompt ids for a language code (English-only models have no language token)."""
        if not self.multilingual:
            return [self.sot, self.no_timestamps]
        return [
            self.sot,
            self.lang_to_id[language],
            self.task_to_id["transcribe"],
            self.no_timestamps,
        ]

    def resolve_language(self, language: str) -> str:
        """A language code the model knows (``en``, ``English`` or ``<|en|>``)."""
        key = language.strip().strip("<|>").lower()
        names = {name.lower(): code for code, name in LANGUAGES.items()}
        code = names.get(key, key)
        if self.multilingual and code not in self.lang_to_id:
            known = ", ".join(sorted(self.lang_to_id))
            raise RuntimeInputError(f"unknown language {language!r}; this model knows: {known}")
        if not self.multilingual and code != "en":
            raise RuntimeInputError("this is an English-only Whisper model; drop --language")
        return code

    def detect_language(self, hidden: np.ndarray) -> str:
        """The language whose token the decoder prefers after ``<|startoftranscript|>``."""
        if not self.multilingual:
            return "en"
        logits, _ = self.start([self.sot], hidden, 1)
        codes = list(self.lang_to_id)
        return codes[int(np.argmax(logits[[self.lang_to_id[c] for c in codes]]))]

    def generate(
        self,
        hidden: np.ndarray,
        prompt: list[int],
        max_tokens: int,
        *,
        stop_on_eos: bool = True,
        timings: Timings | None = None,
    ) -> tuple[list[int], str]:
        """Greedy tokens after ``prompt`` and the finish reason (``eos`` or ``max_tokens``)."""
        if max_tokens < 1:
            raise RuntimeInputError(f"max_tokens must be >= 1, got {max_tokens}")
        timings = timings if timings is not None else Timings()
        tokens: list[int] = []
        state: Any = None
        while True:
            start = time.perf_counter()
            if tokens:
                logits, state = self.advance(tokens[-1], state)
            else:
                logits, state = self.start(prompt, hidden, max_tokens)
            logits[self.suppress] = -np.inf
            if not tokens:
                logits[self.begin_suppress] = -np.inf
            tokens.append(int(np.argmax(logits)))
            spent = time.perf_counter() - start
            if len(tokens) == 1:
                timings.prefill_s += spent
            else:
                timings.step_s.append(spent)
            if stop_on_eos and tokens[-1] == self.eos:
                return tokens, "eos"
            if len(tokens) >= max_tokens:
                return tokens, "max_tokens"

    def text(self, token_ids: list[int]) -> str:
        """The transcript of generated ids (special and timestamp tokens dropped)."""
        body = [t for t in token_ids if t < self.eos]  # text ids precede <|endoftext|>
        return self.tokenizer.decode(body, skip_special_tokens=True).strip()

    # -- the session protocol (qgraph.runtime.session) ------------------------------------------
    def components(self) -> list[Component]:
        return [self.encoder, self.decoder]

    def read_audio(self, audio: np.ndarray | str | os.PathLike[str]) -> np.ndarray:
        return _read_audio(audio, self.sample_rate)

    def prompt_for(self, features: np.ndarray, language: str | None = None) -> Prompt:
        return Prompt(self.prompt(self.resolve_language(language) if language else "en"))

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
            features, prompt.ids, max_tokens, stop_on_eos=stop_on_eos, timings=timings
        )

    def fixed_step(self, past_tokens: int, features: np.ndarray, prompt: Prompt) -> Any:
        """One cached step on ``past_tokens`` random self-attention entries (the cross-attention
        cache is the real one of ``features``)."""
        kv = self.static_kv
        if kv is not None:
            self.start(prompt.ids, features, past_tokens + 1)
            kv.fill_random(past_tokens)
            return lambda: kv.step(np.asarray([[prompt.ids[-1]]]), np.asarray([[past_tokens]]))
        _, past = self.decode(prompt.ids, features, None)
        rng = np.random.default_rng(0)
        fixed = {
            n: (0.1 * rng.standard_normal((*v.shape[:2], past_tokens, v.shape[3]))).astype(v.dtype)
            if ".decoder." in n
            else v
            for n, v in past.items()
        }
        return lambda: self.decode(prompt.ids[-1:], features, fixed)

    # -- end to end -----------------------------------------------------------------------------
    def transcribe(
        self,
        audio: np.ndarray | str | os.PathLike[str],
        *,
        max_tokens: int | None = None,
        language: str | None = None,
    ) -> Transcript:
        """Transcribe a path or 1-D float samples at ``sample_rate`` Hz, window by window.

        ``max_tokens`` (per window) defaults to ``max_length`` minus the prompt length;
        ``language`` (code or name) is detected per window when not given (multilingual models).
        """
        forced = self.resolve_language(language) if language is not None else None
        samples = _read_audio(audio, self.sample_rate)
        timings = Timings(audio_s=samples.size / self.sample_rate)
        tokens: list[int] = []
        texts: list[str] = []
        finish, prompt, n_audio, lang = "eos", self.prompt(), 0, "en"
        for start in range(0, samples.size, self.n_samples):
            t0 = time.perf_counter()
            mel = self.features(samples[start : start + self.n_samples])
            t1 = time.perf_counter()
            hidden = self.encode(mel)
            timings.mel_s += t1 - t0
            timings.encoder_s += time.perf_counter() - t1
            lang = forced or self.detect_language(hidden)
            prompt = self.prompt(lang)
            budget = max_tokens or self.max_length - len(prompt)
            window, reason = self.generate(hidden, prompt, budget, timings=timings)
            tokens += window
            texts.append(self.text(window))
            n_audio += int(hidden.shape[1])
            if reason == "max_tokens":
                finish = reason
                logger.warning("stopped at max_tokens=%d before <|endoftext|>", budget)
        return Transcript(
            token_ids=tokens,
            text=" ".join(t for t in texts if t),
            language=lang,
            timings=timings,
            finish_reason=finish,
            prompt_length=len(prompt),
            n_audio_tokens=n_audio,
        )


def _read_audio(audio: np.ndarray | str | os.PathLike[str], rate: int) -> np.ndarray:
    if isinstance(audio, (str, os.PathLike)):
        return load_audio(audio, rate)
    samples = np.asarray(audio, dtype=np.float32)
    if samples.ndim != 1 or samples.size == 0 or not np.all(np.isfinite(samples)):
        raise RuntimeInputError(f"audio must be non-empty, finite 1-D samples at {rate} Hz")
    return samples
