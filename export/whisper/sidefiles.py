"""Side files of a Whisper bundle, in the layout Transformers.js and onnx-asr read.

- ``config.json``: the transformers ``WhisperConfig`` (``model_type: whisper``), plus
  ``transformers.js_config.use_external_data_format`` declaring one external-data file per
  component (Transformers.js needs the count);
- ``generation_config.json``: special ids (``decoder_start_token_id``, ``eos_token_id``,
  ``no_timestamps_token_id`` ...), ``suppress_tokens`` / ``begin_suppress_tokens``,
  ``is_multilingual``, ``task_to_id`` (and ``lang_to_id`` for multilingual models),
  ``alignment_heads`` when the source knows them, ``max_length``. A transformers checkpoint's own
  file wins; CTranslate2's ``config.json`` provides its suppress lists and alignment heads;
- ``preprocessor_config.json``: ``WhisperFeatureExtractor`` settings (30 s windows);
- ``tokenizer.json`` (timestamp tokens completed), ``tokenizer_config.json``, and the slow files
  ``vocab.json`` + ``added_tokens.json`` (onnx-asr) + ``merges.txt``.
"""

from __future__ import annotations

import json
from typing import Any

from tokenizers import Tokenizer

from . import tokens
from .configs import Source

SAMPLE_RATE, HOP, N_FFT = 16000, 160, 400
MULTILINGUAL_VOCAB = 51865
"""Whisper models with at least this many ids are multilingual (transformers' rule)."""


def _json(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()


def config_json(model: Any, components: list[str]) -> dict[str, Any]:
    """The model's ``WhisperConfig`` as JSON, with the Transformers.js external-data counts."""
    config = json.loads(model.config.to_json_string(use_diff=False))
    config["architectures"] = ["WhisperForConditionalGeneration"]
    config["transformers.js_config"] = {
        "use_external_data_format": {f"{name}.onnx": 1 for name in components}
    }
    return config


def generation_config_json(model: Any, tok: Tokenizer, source: Source) -> dict[str, Any]:
    """``generation_config.json``: the source's own, else derived from tokenizer and config."""
    own = source.read_json("generation_config.json") if source.kind == "transformers" else {}
    if own:
        return own
    ids = tokens.special_ids(tok)
    cfg = model.config
    multilingual = cfg.vocab_size >= MULTILINGUAL_VOCAB
    out: dict[str, Any] = {
        "decoder_start_token_id": ids["sot"],
        "bos_token_id": ids["eos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["eos"],
        "no_timestamps_token_id": ids["no_timestamps"],
        "prev_sot_token_id": ids["sot_prev"],
        "is_multilingual": multilingual,
        "task_to_id": {"transcribe": ids["transcribe"], "translate": ids["translate"]},
        "suppress_tokens": list(cfg.suppress_tokens or []),
        "begin_suppress_tokens": list(cfg.begin_suppress_tokens or []),
        "max_initial_timestamp_index": 50,
        "max_length": cfg.max_target_positions,
        "return_timestamps": False,
    }
    if multilingual:
        out["lang_to_id"] = tokens.language_ids(tok, ids)
    heads = source.read_json("config.json").get("alignment_heads") if source.folder else None
    if heads:
        out["alignment_heads"] = heads
    return dict(sorted(out.items()))


def preprocessor_config_json(model: Any) -> dict[str, Any]:
    """``WhisperFeatureExtractor`` settings for this model's mel count and window."""
    frames = 2 * model.config.max_source_positions
    return {
        "feature_extractor_type": "WhisperFeatureExtractor",
        "processor_class": "WhisperProcessor",
        "feature_size": model.config.num_mel_bins,
        "sampling_rate": SAMPLE_RATE,
        "hop_length": HOP,
        "n_fft": N_FFT,
        "chunk_length": frames * HOP // SAMPLE_RATE,
        "n_samples": frames * HOP,
        "nb_max_frames": frames,
        "padding_side": "right",
        "padding_value": 0.0,
        "return_attention_mask": False,
    }


def tokenizer_config_json(source: Source) -> dict[str, Any]:
    """The checkpoint's ``tokenizer_config.json``, else WhisperTokenizer's defaults."""
    own = source.read_json("tokenizer_config.json")
    if own:
        return own
    return {
        "tokenizer_class": "WhisperTokenizer",
        "processor_class": "WhisperProcessor",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "add_prefix_space": False,
        "errors": "replace",
        "clean_up_tokenization_spaces": True,
        "model_max_length": 1024,
        "predict_timestamps": False,
    }


def side_files(model: Any, source: Source, components: list[str]) -> dict[str, bytes]:
    """Every side file of the bundle, by name."""
    tok = tokens.complete_timestamps(source.tokenizer(), model.config.vocab_size)
    tokens.special_ids(tok)  # fail early on a tokenizer without Whisper's special tokens
    return {
        "config.json": _json(config_json(model, components)),
        "generation_config.json": _json(generation_config_json(model, tok, source)),
        "preprocessor_config.json": _json(preprocessor_config_json(model)),
        "tokenizer.json": tok.to_str(pretty=True).encode(),
        "tokenizer_config.json": _json(tokenizer_config_json(source)),
        **tokens.vocab_files(tok),
    }
