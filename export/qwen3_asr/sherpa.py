"""The sherpa-onnx layout of Qwen3-ASR: ``export_sherpa(model, out_dir)`` -> a bundle that
``sherpa_onnx.OfflineRecognizer.from_qwen3_asr`` loads as it is.

Contract (sherpa-onnx >= 2.0.1, checked with 2.0.1: ``offline-qwen3-asr-model.cc`` and
``offline-recognizer-qwen3-asr-impl.cc``; batch 1; every input read by position; models loaded
from their paths, so external data works):

- ``conv_frontend.onnx``: ``input_features [1, frames, 128]`` (sherpa's Whisper-style log-mel,
  ``frames = samples // 160``, the same numbers as ``qgraph.runtime.mel.log_mel`` transposed) ->
  ``conv_output [1, conv_tokens, d_model]``: the conv stem, ``conv_out`` and the per-chunk
  positional embedding on every 100-frame chunk (``conv_tokens = 13 * ceil(frames / 100)``).
- ``encoder.onnx``: ``conv_output`` + ``feature_attention_mask [1, conv_tokens]`` (bool, True on
  the ``N`` valid tokens, a prefix) -> ``audio_features [1, conv_tokens, hidden]``: windowed
  attention (104 tokens) with masked keys, ``ln_post``, the projector; rows past ``N`` are exact
  zeros, which sherpa trims before building the prompt with ``N`` ``<|audio_pad|>``.
- ``decoder.onnx``: ``input_ids [1, seq]``, ``audio_features [1, audio_tokens, hidden]``,
  ``attention_mask [1, seq]`` (present, unused: sherpa always sends ones), ``cache_position [seq]``
  (contiguous positions, the first is the number of cached tokens), then ``cache_key_i`` /
  ``cache_value_i [1, max_total_len, kv_heads, head_dim]`` per layer (static caches, zero past
  the cached tokens) -> ``logits [1, seq, vocab]`` (every position: sherpa reads row ``seq - 1``
  of the prefill) and ``key_delta_i`` / ``value_delta_i [1, seq, kv_heads, head_dim]``, the new
  rows that sherpa copies into its caches at ``cache_position[0]``. Audio rows replace the
  ``<|audio_pad|>`` embeddings in order; only the first ``cache_position[0]`` cache rows are read.
  Metadata: ``model_type`` (contains ``kv_delta``), ``num_layers``, ``hidden_size``,
  ``vocab_size``, ``max_total_len``.
- ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` (with ``added_tokens_decoder``):
  sherpa's own byte-level BPE reads these; ``tokenizer.json`` and ``config.json`` stay for qgraph.

sherpa-onnx stops at ``<|im_end|>`` only and cuts a decode whose last 64 tokens hold at most 3
distinct ids; it does not pad clips under 0.5 s to 8000 samples as the Qwen3-ASR extractor does.

The bundle (family ``qwen3-asr-sherpa``) is a qgraph ``Bundle``: ``qgraph compile`` runs passes
on it. Passes that change graph I/O (``slice-init-logits``, ``extract-embed-fp16``) break the
contract.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import onnx_ir as ir
import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim

from qgraph.bundle import Bundle
from qgraph.errors import ExportError
from qgraph.export import check_export_args
from qgraph.export.dims import DimSpec
from qgraph.export.tracing import neg_mask, save_bundle, trace, trace_each

from . import sidefiles
from .configs import build_resolved, resolve_source
from .graphs import EXAMPLE_FRAMES, PRODUCER, name_tied_embedding
from .wrappers import EncoderWrapper, TextDecoder, conv_stem

logger = logging.getLogger(__name__)

FAMILY = "qwen3-asr-sherpa"
MODEL_TYPE = "qwen3_asr_kv_delta"
"""Decoder ``model_type`` metadata; sherpa-onnx looks for ``kv_delta`` in it."""

DEFAULT_MAX_TOTAL_LEN = 512
"""KV cache length (prompt + audio tokens + generated tokens); sherpa-onnx's default."""
MIN_TOTAL_LEN = 64

COMPONENTS = ("conv_frontend", "encoder", "decoder")
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")
"""What sherpa-onnx's Qwen3-ASR tokenizer reads from its ``tokenizer`` folder."""


# -- wrappers ------------------------------------------------------------------------------------
class ConvFrontendWrapper(nn.Module):
    """``input_features [1,T,128] -> conv_output [1,13*ceil(T/100),d_model]`` (conv stem)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        tower = model.model.audio_tower
        # Held under the checkpoint's attribute path so initializer names match its keys.
        self.model = nn.Module()
        self.model.audio_tower = nn.Module()
        for name in ("conv2d1", "conv2d2", "conv2d3", "conv_out", "positional_embedding"):
            setattr(self.model.audio_tower, name, getattr(tower, name))
        self.chunk = 2 * tower.config.n_window

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        tower = self.model.audio_tower
        frames, n_mels = input_features.shape[1], input_features.shape[2]
        x = F.pad(input_features, (0, 0, 0, (self.chunk - frames % self.chunk) % self.chunk))
        chunks = x.shape[1] // self.chunk
        x = x.reshape(chunks, self.chunk, n_mels).transpose(1, 2).unsqueeze(1)
        x = conv_stem(tower, x)
        return x.reshape(1, chunks * x.shape[1], x.shape[-1])


class SherpaEncoderWrapper(EncoderWrapper):
    """``(conv_output [1,A,d], feature_attention_mask [1,A]) -> audio_features [1,A,hidden]``.

    Windows of 104 tokens over the conv tokens, keys masked where the mask is False; masked
    rows of the output are zeros. Equals the native encoder when the mask is a prefix.
    """

    def forward(self, conv_output: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        tower = self.model.audio_tower
        tokens, d_model = conv_output.shape[1], conv_output.shape[2]
        pad = (self.window - tokens % self.window) % self.window
        x = F.pad(conv_output, (0, 0, 0, pad))
        keep = F.pad(mask.to(torch.int64), (0, pad)) > 0
        windows = x.shape[1] // self.window
        x = x.reshape(windows, self.window, d_model)
        attn_mask = neg_mask(keep.reshape(windows, 1, 1, self.window), x.dtype)
        for layer in tower.layers:
            x = self._layer(layer, x, attn_mask)
        x = x.reshape(1, windows * self.window, d_model)[:, :tokens]
        x = self.model.multi_modal_projector(tower.ln_post(x))
        return torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype))


class SherpaDecoderWrapper(TextDecoder):
    """One graph for prefill and decode over static caches; returns logits and K/V deltas.

    ``forward(input_ids, audio_features, attention_mask, cache_position, k0, v0, k1, ...)`` ->
    ``(logits [1,S,V], key_delta_0, value_delta_0, ...)`` with deltas ``[1,S,kv,head_dim]``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.audio_token_id = int(model.config.audio_token_id)

    def forward(
        self,
        input_ids: torch.Tensor,
        audio_features: torch.Tensor,
        attention_mask: torch.Tensor,
        cache_position: torch.Tensor,
        *cache: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        del attention_mask  # part of the contract; sherpa-onnx always sends ones
        h = self.model.language_model.embed_tokens(input_ids)
        is_audio = input_ids == self.audio_token_id
        rank = torch.cumsum(is_audio.to(torch.int64), dim=1) - 1
        rank = torch.clamp(rank, min=0, max=audio_features.shape[1] - 1)
        rows = audio_features[0].index_select(0, rank[0]).unsqueeze(0)
        h = torch.where(is_audio.unsqueeze(-1), rows.to(h.dtype), h)

        past_len = cache_position[0].item()
        torch._check(past_len >= 0)
        torch._check(past_len <= cache[0].shape[1])
        rope = self.rope(cache_position.unsqueeze(0), h.dtype)
        total = past_len + input_ids.shape[1]
        keep = torch.arange(total, device=h.device)[None, :] <= cache_position[:, None]
        mask = neg_mask(keep, h.dtype)[None, None]
        deltas: list[torch.Tensor] = []
        for i, layer in enumerate(self.model.language_model.layers):
            past_k = cache[2 * i][:, :past_len].transpose(1, 2)
            past_v = cache[2 * i + 1][:, :past_len].transpose(1, 2)
            h, k, v = self.layer(layer, h, rope, mask, (past_k, past_v), new_kv=True)
            deltas += [k.transpose(1, 2), v.transpose(1, 2)]
        return (self.head(h), *deltas)


# -- tracing -------------------------------------------------------------------------------------
def cache_names(layers: int) -> list[str]:
    """Decoder cache inputs in sherpa-onnx order: key then value, layer by layer."""
    return [f"cache_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]


def delta_names(layers: int) -> list[str]:
    """Decoder K/V delta outputs in sherpa-onnx order."""
    return [f"{kind}_delta_{i}" for i in range(layers) for kind in ("key", "value")]


def export_conv_frontend(model: nn.Module, opset: int) -> ir.Model:
    """``input_features [1,frames,128] -> conv_output [1,conv_tokens,d_model]``."""
    cfg = model.config.audio_config
    io = {
        "input_features": [1, "frames", cfg.num_mel_bins],
        "conv_output": [1, "conv_tokens", cfg.d_model],
    }
    shapes = {"input_features": {1: Dim("frames")}}
    wrapper = ConvFrontendWrapper(model).eval()
    return trace(wrapper, (_example_mel(model),), io, shapes, opset, "conv_frontend", PRODUCER)


def export_encoder(model: nn.Module, opset: int) -> ir.Model:
    """``conv_output, feature_attention_mask -> audio_features`` (see ``SherpaEncoderWrapper``)."""
    cfg = model.config.audio_config
    with torch.no_grad():
        conv = ConvFrontendWrapper(model).eval()(_example_mel(model))
    tokens = conv.shape[1]
    mask = torch.arange(tokens)[None] < tokens - 5  # a valid prefix, as sherpa-onnx sends
    io = {
        "conv_output": [1, "conv_tokens", cfg.d_model],
        "feature_attention_mask": [1, "conv_tokens"],
        "audio_features": [1, "conv_tokens", cfg.output_dim],
    }
    dim = Dim("conv_tokens")
    shapes = {"conv_output": {1: dim}, "mask": {1: dim}}
    wrapper = SherpaEncoderWrapper(model).eval()
    return trace(wrapper, (conv, mask), io, shapes, opset, "encoder", PRODUCER)


def export_decoder(model: nn.Module, opset: int, max_total_len: int) -> ir.Model:
    """The kv-delta decoder (see ``SherpaDecoderWrapper``) with its sherpa-onnx metadata."""
    cfg = model.config.text_config
    layers, kv, head_dim = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim
    seq, past, n_audio = 23, 9, 7
    ids = torch.full((1, seq), 100, dtype=torch.long)
    ids[:, 3 : 3 + n_audio] = model.config.audio_token_id
    cache = [torch.zeros(1, max_total_len, kv, head_dim) for _ in range(2 * layers)]
    args = (
        ids,
        torch.zeros(1, n_audio, cfg.hidden_size),
        torch.ones(1, seq, dtype=torch.long),
        torch.arange(past, past + seq),
        *cache,
    )
    s = Dim("seq")
    # Positional: torch.export packs ``*cache`` into one tuple, which a dict spec cannot match.
    shapes = ({1: s}, {1: Dim("audio_tokens")}, {1: s}, {0: s}, tuple({} for _ in cache))
    io: dict[str, DimSpec] = {
        "input_ids": [1, "seq"],
        "audio_features": [1, "audio_tokens", cfg.hidden_size],
        "attention_mask": [1, "seq"],
        "cache_position": ["seq"],
        **{name: [1, max_total_len, kv, head_dim] for name in cache_names(layers)},
        "logits": [1, "seq", cfg.vocab_size],
        **{name: [1, "seq", kv, head_dim] for name in delta_names(layers)},
    }
    wrapper = SherpaDecoderWrapper(model).eval()
    onnx_model = trace(wrapper, args, io, shapes, opset, "decoder", PRODUCER)
    name_tied_embedding(onnx_model, model)
    onnx_model.metadata_props.update(
        {
            "model_type": MODEL_TYPE,
            "num_layers": str(layers),
            "hidden_size": str(cfg.hidden_size),
            "vocab_size": str(cfg.vocab_size),
            "max_total_len": str(max_total_len),
            "num_key_value_heads": str(kv),
            "head_dim": str(head_dim),
        }
    )
    return onnx_model


def _example_mel(model: nn.Module) -> torch.Tensor:
    """``[1, EXAMPLE_FRAMES, n_mels]``: a partial last chunk, more than one attention window."""
    bins = model.config.audio_config.num_mel_bins
    return torch.randn(1, EXAMPLE_FRAMES, bins, generator=torch.Generator().manual_seed(0))


# -- tokenizer -----------------------------------------------------------------------------------
def sherpa_tokenizer_files(
    tokenizer_json: str, tokenizer_config: dict[str, Any]
) -> dict[str, bytes]:
    """``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` from a byte-level BPE
    ``tokenizer.json`` (text) and its ``tokenizer_config.json`` (parsed).

    The config keeps its keys; ``added_tokens_decoder`` gets every added token of
    ``tokenizer.json`` it lacks. Raises ExportError for a tokenizer that is not BPE, or a merge
    that ``merges.txt`` cannot hold (a piece with whitespace).
    """
    try:
        data = json.loads(tokenizer_json)
        model = data["model"]
        vocab, merges = model["vocab"], model["merges"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ExportError(f"tokenizer.json: not a BPE tokenizer ({err})") from None
    if model.get("type", "BPE") != "BPE" or not isinstance(vocab, dict):
        raise ExportError(f"tokenizer.json: model type {model.get('type')!r}; sherpa needs BPE")
    lines = ["#version: 0.2"]
    for merge in merges:
        pair = merge.split(" ") if isinstance(merge, str) else list(merge)
        if len(pair) != 2 or any(not p or any(c.isspace() for c in p) for p in pair):
            raise ExportError(f"tokenizer.json: merge {merge!r} cannot be written to merges.txt")
        lines.append(" ".join(pair))
    config = dict(tokenizer_config)
    decoder = dict(config.get("added_tokens_decoder") or {})
    for token in data.get("added_tokens", []):
        decoder.setdefault(
            str(token["id"]),
            {
                "content": token["content"],
                "lstrip": bool(token.get("lstrip", False)),
                "normalized": bool(token.get("normalized", False)),
                "rstrip": bool(token.get("rstrip", False)),
                "single_word": bool(token.get("single_word", False)),
                "special": bool(token.get("special", False)),
            },
        )
    config["added_tokens_decoder"] = dict(sorted(decoder.items(), key=lambda kv: int(kv[0])))
    return {
        "vocab.json": (json.dumps(vocab, ensure_ascii=False) + "\n").encode(),
        "merges.txt": ("\n".join(lines) + "\n").encode(),
        "tokenizer_config.json": (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode(),
    }


def _read(content: bytes | Path) -> bytes:
    return content.read_bytes() if isinstance(content, Path) else content


# -- entry point ---------------------------------------------------------------------------------
def export_sherpa(
    model: str,
    out_dir: str | Path,
    *,
    max_total_len: int = DEFAULT_MAX_TOTAL_LEN,
    opset: int = 18,
    overwrite: bool = False,
) -> Path:
    """Export ``model`` (built-in name, checkpoint folder or hub id) in the sherpa-onnx layout.

    Returns the bundle path; pass it as ``conv_frontend``/``encoder``/``decoder`` (the three
    ``.onnx`` files) and ``tokenizer`` (the folder) to ``OfflineRecognizer.from_qwen3_asr``.
    ``max_total_len`` is the static KV cache length (prompt + audio tokens + generated tokens).
    Raises ExportError for a bad source, tokenizer, opset or length, or an existing ``out_dir``
    (unless ``overwrite``), before any tracing; BundleError if the bundle cannot be written.
    """
    if not MIN_TOTAL_LEN <= max_total_len <= 65536:
        raise ExportError(f"max_total_len {max_total_len} is out of range {MIN_TOTAL_LEN}..65536")
    out_dir = check_export_args(out_dir, opset, overwrite)
    folder = resolve_source(model)
    tokenizer, pad_id = sidefiles.tokenizer_files(folder)
    sherpa_tok = sherpa_tokenizer_files(
        _read(tokenizer["tokenizer.json"]).decode(),
        json.loads(_read(tokenizer["tokenizer_config.json"])),
    )
    hf_model, description = build_resolved(model, folder)
    limit = hf_model.config.text_config.max_position_embeddings
    if max_total_len > limit:
        raise ExportError(f"max_total_len {max_total_len} exceeds the model's {limit} positions")
    logger.info("exporting %s for sherpa-onnx at opset %d", description, opset)

    bundle = Bundle(family=FAMILY)
    traces = (
        lambda: export_conv_frontend(hf_model, opset),
        lambda: export_encoder(hf_model, opset),
        lambda: export_decoder(hf_model, opset, max_total_len),
    )
    for name, onnx_model in trace_each(list(zip(COMPONENTS, traces, strict=True))).items():
        bundle.add_component(name, onnx_model)
    config = sidefiles.config_json(hf_model, pad_id)
    config["layout"] = {"name": "sherpa-onnx", "max_total_len": max_total_len}
    bundle.write_json("config.json", config)
    bundle.side_files["tokenizer.json"] = tokenizer["tokenizer.json"]
    bundle.side_files.update(sherpa_tok)

    return save_bundle(bundle, out_dir, overwrite)
