"""The reference runtime on the sherpa-onnx layout of Qwen3-ASR (family ``qwen3-asr-sherpa``).

``SherpaSession`` is an ``AsrSession`` (same log-mel, prompt, greedy loop, text and timings)
that drives the three sherpa-onnx graphs the way sherpa-onnx does
(``export/qwen3_asr/sherpa.py`` holds the contract):

- ``encode``: ``conv_frontend`` on the log-mel ``[1, frames, n_mels]``, then ``encoder`` with a
  mask that is True on the first ``n_audio_tokens(frames)`` conv tokens; the rows past them
  (zeros) are dropped;
- ``prefill`` / ``step``: ``decoder`` with ``cache_position`` and one static cache per layer and
  kind (``[1, max_total_len, kv_heads, head_dim]``); the returned K/V deltas are written into
  the caches at ``cache_position``. The caches are the ``keys`` / ``values`` that ``prefill``
  returns and ``step`` takes (lists, updated in place).

``capacity`` is ``max_total_len``: decoding stops with ``"cache_full"`` when the caches are full.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from qgraph.errors import BundleError, RuntimeInputError
from qgraph.runtime.files import component_path
from qgraph.runtime.ort import Component, session_options
from qgraph.runtime.prompt import n_audio_tokens
from qgraph.runtime.qwen3 import AsrSession

__all__ = ["SherpaSession"]

logger = logging.getLogger(__name__)

COMPONENTS = ("conv_frontend", "encoder", "decoder")
_DECODER_INPUTS = ("input_ids", "audio_features", "attention_mask", "cache_position")


class SherpaSession(AsrSession):
    """A loaded sherpa-onnx-layout bundle; the API of ``AsrSession``."""

    def _open(
        self, threads: int | None, optimization: str, providers: list[str], share_weights: bool
    ) -> None:
        del share_weights  # one decoder graph: nothing to share
        paths = {name: component_path(self.bundle_dir, name) for name in COMPONENTS}
        self.conv_frontend, self.encoder, self.decoder = (
            Component(name, paths[name], session_options(threads, optimization), providers)
            for name in COMPONENTS
        )
        self.merged_decoders = True  # one decoder graph serves the prefill and the steps
        self.step_takes_embeds = False
        self.embed_table = None
        self.conv_frontend.require({"input_features"}, {"conv_output"})
        self.encoder.require({"conv_output", "feature_attention_mask"}, {"audio_features"})
        caches = len(self.decoder.input_types) - len(_DECODER_INPUTS)
        if caches < 2 or caches % 2:
            raise BundleError(f"{self.decoder.path}: decoder has no key/value cache pairs")
        pairs = [(k, i) for i in range(caches // 2) for k in ("key", "value")]
        self._cache_names = [f"cache_{k}_{i}" for k, i in pairs]
        self._delta_names = [f"{k}_delta_{i}" for k, i in pairs]
        self.decoder.require({*_DECODER_INPUTS, *self._cache_names}, {"logits", *self._delta_names})
        shape = self.decoder.input_shapes[self._cache_names[0]]
        if not all(isinstance(d, int) for d in shape):
            raise BundleError(f"{self.decoder.path}: cache inputs must have a static shape")
        self._cache_shape = tuple(shape)
        self.capacity = int(shape[1])
        hidden = self.decoder.input_shapes["audio_features"][2]
        # the audio rows a step never reads (its token is not <|audio_pad|>)
        self._no_audio = np.zeros((1, 1, hidden if isinstance(hidden, int) else 1), np.float32)

    def components(self) -> list[Component]:
        return [self.conv_frontend, self.encoder, self.decoder]

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """``audio_features [1, N, H]`` for the valid conv tokens."""
        frames = np.ascontiguousarray(mel.transpose(0, 2, 1))
        conv = self.conv_frontend.run({"input_features": frames})["conv_output"]
        n = n_audio_tokens(mel.shape[-1])
        if n > conv.shape[1]:
            raise BundleError(
                f"{self.conv_frontend.path}: {conv.shape[1]} conv tokens for {mel.shape[-1]} "
                f"mel frames, expected at least {n}"
            )
        mask = np.arange(conv.shape[1])[None] < n
        out = self.encoder.run({"conv_output": conv, "feature_attention_mask": mask})
        return out["audio_features"][:, :n]

    def _empty_caches(self) -> list[np.ndarray]:
        dtype = self.decoder.input_types[self._cache_names[0]]
        return [np.zeros(self._cache_shape, dtype) for _ in self._cache_names]

    def _run_decoder(
        self, ids: list[int], position: int, audio: np.ndarray, caches: list[np.ndarray]
    ) -> np.ndarray:
        """One decoder call at ``position``; writes the deltas into ``caches``; last logits."""
        seq = len(ids)
        if position + seq > self.capacity:
            raise RuntimeInputError(
                f"{position + seq} positions do not fit the KV cache of {self.capacity}: use "
                "shorter audio or re-export with a larger --max-total-len"
            )
        out = self.decoder.run(
            {
                "input_ids": np.asarray([ids], dtype=np.int64),
                "audio_features": audio,
                "attention_mask": np.ones((1, seq), dtype=np.int64),
                "cache_position": np.arange(position, position + seq, dtype=np.int64),
                **dict(zip(self._cache_names, caches, strict=True)),
            }
        )
        for cache, name in zip(caches, self._delta_names, strict=True):
            cache[:, position : position + seq] = out[name]
        return out["logits"][0, -1]

    def prefill(
        self, prompt_ids: list[int], audio_features: np.ndarray, audio_offset: int
    ) -> tuple[np.ndarray, Any, Any]:
        """The prompt on empty caches: (last-position logits, key caches, value caches).

        ``audio_offset`` is implied: audio rows replace the ``<|audio_pad|>`` ids in order.
        """
        del audio_offset
        caches = self._empty_caches()
        logits = self._run_decoder(prompt_ids, 0, audio_features, caches)
        return logits, caches[0::2], caches[1::2]

    def step(
        self, token_id: int, position: int, past_keys: Any, past_values: Any
    ) -> tuple[np.ndarray, Any, Any]:
        """One token at ``position``; the caches hold ``position`` valid rows and get one more."""
        caches = [c for pair in zip(past_keys, past_values, strict=True) for c in pair]
        logits = self._run_decoder([token_id], position, self._no_audio, caches)
        return logits, past_keys, past_values

    def random_past(self, past_tokens: int, seed: int = 0) -> tuple[Any, Any]:
        if past_tokens >= self.capacity:
            raise RuntimeInputError(f"past_tokens {past_tokens} >= KV cache of {self.capacity}")
        rng = np.random.default_rng(seed)
        caches = self._empty_caches()
        for cache in caches:
            cache[:, :past_tokens] = 0.1 * rng.standard_normal(cache[:, :past_tokens].shape)
        return caches[0::2], caches[1::2]
