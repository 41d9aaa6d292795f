"""Side files of a raw Qwen3-ASR bundle: config, preprocessor config and tokenizer.

- ``config.json``: the public layout (``model_type``, ``encoder{}``, ``decoder{}``, ``mel{}``,
  ``special_tokens{}``) read by runtimes of the published Qwen3-ASR ONNX exports;
- ``preprocessor_config.json``: Qwen3ASRFeatureExtractor settings with ``padding`` off: the
  encoder graph takes the unpadded mel and pads to whole chunks itself, so no 30 s padding;
- ``tokenizer.json`` + ``tokenizer_config.json``: copied from the checkpoint (generated with
  transformers only when it ships no ``tokenizer.json``), or the built-in example tokenizer for
  random models. The special-token ids are checked against the ids the graphs assume.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from qgraph.errors import ExportError

logger = logging.getLogger(__name__)

SPECIAL_TOKENS: dict[str, tuple[str, int]] = {
    "endoftext": ("<|endoftext|>", 151643),
    "im_start": ("<|im_start|>", 151644),
    "im_end": ("<|im_end|>", 151645),
    "audio_start": ("<|audio_start|>", 151669),
    "audio_end": ("<|audio_end|>", 151670),
    "audio_pad": ("<|audio_pad|>", 151676),
    "asr_text": ("<asr_text>", 151704),
}
"""Special tokens the prompt and the decode loop rely on: (text, id)."""

EOS_TOKEN_IDS = [151643, 151645]

MEL = {
    "sample_rate": 16000,
    "n_fft": 400,
    "hop_length": 160,
    "n_mels": 128,
    "fmin": 0,
    "fmax": 8000,
}

EXAMPLE_TOKENIZER_CONFIG: dict[str, Any] = {
    "tokenizer_class": "Qwen2Tokenizer",
    "add_bos_token": False,
    "add_prefix_space": False,
    "bos_token": None,
    "eos_token": "<|im_end|>",
    "pad_token": "<|endoftext|>",
    "unk_token": None,
    "errors": "replace",
    "clean_up_tokenization_spaces": False,
    "split_special_tokens": False,
    "model_max_length": 65536,
}
"""tokenizer_config.json written next to the built-in example tokenizer."""


def config_json(model: Any, pad_token_id: int) -> dict[str, Any]:
    """The public ``config.json`` for a ``Qwen3ASRForConditionalGeneration``."""
    audio, text = model.config.audio_config, model.config.text_config
    rope = dict(text.rope_parameters or {})
    return {
        "model_type": "qwen3_asr",
        "encoder": {
            "num_layers": audio.encoder_layers,
            "hidden_size": audio.d_model,
            "num_heads": audio.encoder_attention_heads,
            "ffn_dim": audio.encoder_ffn_dim,
            "conv_channels": audio.downsample_hidden_size,
            "output_dim": audio.output_dim,
            "downsample_factor": 8,
            "num_mel_bins": audio.num_mel_bins,
            "n_window": audio.n_window,
            "n_window_infer": audio.n_window_infer,
        },
        "decoder": {
            "num_layers": text.num_hidden_layers,
            "hidden_size": text.hidden_size,
            "num_attention_heads": text.num_attention_heads,
            "num_key_value_heads": text.num_key_value_heads,
            "head_dim": text.head_dim,
            "intermediate_size": text.intermediate_size,
            "vocab_size": text.vocab_size,
            "rope_theta": float(rope.get("rope_theta", 1_000_000.0)),
            "rms_norm_eps": text.rms_norm_eps,
            "tie_word_embeddings": bool(model.config.tie_word_embeddings),
            "rope_scaling": {
                "mrope_section": list(rope.get("mrope_section", [24, 20, 20])),
                "interleaved": bool(rope.get("mrope_interleaved", True)),
            },
        },
        "mel": dict(MEL),
        "special_tokens": {
            "eos_token_ids": list(EOS_TOKEN_IDS),
            "pad_token_id": pad_token_id,
            **{k: i for k, (_, i) in SPECIAL_TOKENS.items() if k != "endoftext"},
        },
    }


def preprocessor_config_json() -> dict[str, Any]:
    """Feature-extractor settings matching the unpadded mel the encoder graph takes.

    Feed the log-mel ``[128, T]`` with ``T = samples // 160`` (clips under 8000 samples are
    zero-padded first); the encoder pads T to whole 100-frame chunks itself. No 30 s padding.
    """
    return {
        "feature_extractor_type": "Qwen3ASRFeatureExtractor",
        "feature_size": MEL["n_mels"],
        "sampling_rate": MEL["sample_rate"],
        "hop_length": MEL["hop_length"],
        "n_fft": MEL["n_fft"],
        "padding_side": "right",
        "padding_value": 0.0,
        "padding": "do_not_pad",
        "return_attention_mask": False,
        "dither": 0.0,
        "n_window": 50,
        "min_length": 8000,
    }


def tokenizer_files(folder: Path | None) -> tuple[dict[str, bytes | Path], int]:
    """``({file: content}, pad_token_id)`` for the bundle's tokenizer.

    ``folder`` None selects the built-in example tokenizer. Raises ExportError if a special
    token sits at another id than the graphs and the runtime assume.
    """
    from tokenizers import Tokenizer

    if folder is None:
        from qgraph.examples import example_tokenizer

        tok = example_tokenizer()
        files: dict[str, bytes | Path] = {
            "tokenizer.json": tok.to_str().encode(),
            "tokenizer_config.json": _json_bytes(EXAMPLE_TOKENIZER_CONFIG),
        }
        tok_config = EXAMPLE_TOKENIZER_CONFIG
    else:
        files = _checkpoint_tokenizer(folder)
        raw = files["tokenizer.json"]
        text = raw.read_text() if isinstance(raw, Path) else raw.decode()
        try:
            tok = Tokenizer.from_str(text)
        except Exception as err:  # tokenizers raises plain Exceptions from Rust
            raise ExportError(f"{folder}: unreadable tokenizer.json ({err})") from None
        tok_config = _read_json(files["tokenizer_config.json"])
    for key, (content, want) in SPECIAL_TOKENS.items():
        got = tok.token_to_id(content)
        if got != want:
            raise ExportError(
                f"tokenizer: {content} ({key}) has id {got}, expected {want}; "
                "this is not a Qwen3-ASR tokenizer"
            )
    pad = tok_config.get("pad_token")
    pad_text = pad.get("content") if isinstance(pad, dict) else pad
    pad_id = tok.token_to_id(pad_text) if isinstance(pad_text, str) else None
    return files, pad_id if pad_id is not None else SPECIAL_TOKENS["endoftext"][1]


def _checkpoint_tokenizer(folder: Path) -> dict[str, bytes | Path]:
    tok_json, tok_cfg = folder / "tokenizer.json", folder / "tokenizer_config.json"
    if tok_json.is_file() and tok_cfg.is_file():
        return {"tokenizer.json": tok_json, "tokenizer_config.json": tok_cfg}
    logger.info("%s has no tokenizer.json; building it with transformers", folder)
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        backend = tok.backend_tokenizer
    except Exception as err:  # transformers raises many types for broken tokenizer files
        raise ExportError(
            f"{folder}: no usable tokenizer (needs tokenizer.json, or vocab.json + merges.txt "
            f"+ tokenizer_config.json): {str(err).splitlines()[0] if str(err) else err!r}"
        ) from None
    files: dict[str, bytes | Path] = {"tokenizer.json": backend.to_str().encode()}
    if tok_cfg.is_file():
        files["tokenizer_config.json"] = tok_cfg
    else:
        files["tokenizer_config.json"] = _json_bytes(EXAMPLE_TOKENIZER_CONFIG)
    return files


def _read_json(content: bytes | Path) -> dict[str, Any]:
    raw = content.read_bytes() if isinstance(content, Path) else content
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ExportError(f"tokenizer_config.json is not valid JSON ({err})") from None
    return data if isinstance(data, dict) else {}


def _json_bytes(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()
