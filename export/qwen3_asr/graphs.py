"""Trace the three wrappers to raw ONNX (``onnx_ir.Model``) with readable dynamic dims.

Each ``export_*`` function traces its wrapper on small example inputs with
``qgraph.export.tracing.trace`` (dynamo, no optimizer: the raw graph, initializers still backed
by the model's own torch tensors). Dynamic dims are then renamed (see ``dims``).
"""

from __future__ import annotations

import logging

import onnx_ir as ir
import torch
from torch.export import Dim

from qgraph.export.dims import DimSpec, name_derived_dims
from qgraph.export.tracing import rename_initializer, trace

from .dims import encoder_dims
from .wrappers import DecoderInitWrapper, DecoderStepWrapper, EncoderWrapper

logger = logging.getLogger(__name__)

PRODUCER = "qgraph.export.qwen3_asr"
TIED_EMBEDDING = "model.language_model.embed_tokens.weight"
"""Name given to the tied embedding / lm_head initializer (its key in the checkpoint)."""

EXAMPLE_FRAMES = 1234
"""Example mel length: not a multiple of 100 frames and more than one 104-token window."""


def encoder_io(n_mels: int, output_dim: int) -> dict[str, DimSpec]:
    """Encoder I/O names and shapes, inputs first."""
    return {"mel": [1, n_mels, "time"], "audio_features": [1, "audio_tokens", output_dim]}


def decoder_init_io(
    layers: int, kv: int, head_dim: int, hidden: int, vocab: int
) -> dict[str, DimSpec]:
    """decoder_init I/O names and shapes (public layout), inputs first."""
    cache = [layers, "batch", kv, "seq", head_dim]
    return {
        "input_ids": ["batch", "seq"],
        "position_ids": ["batch", "seq"],
        "audio_features": ["batch", "audio_tokens", hidden],
        "audio_offset": [1],
        "logits": ["batch", "seq", vocab],
        "present_keys": cache,
        "present_values": cache,
    }


def decoder_step_io(layers: int, kv: int, head_dim: int, vocab: int) -> dict[str, DimSpec]:
    """decoder_step I/O names and shapes (public layout), inputs first."""
    past = [layers, "batch", kv, "past", head_dim]
    total = [layers, "batch", kv, "total", head_dim]
    return {
        "input_ids": ["batch", 1],
        "position_ids": ["batch", 1],
        "past_keys": past,
        "past_values": past,
        "logits": ["batch", 1, vocab],
        "present_keys": total,
        "present_values": total,
    }


def _trace(module, args, io, dynamic_shapes, opset: int, what: str) -> ir.Model:
    return trace(module, args, io, dynamic_shapes, opset, what, PRODUCER)


def export_encoder(model: torch.nn.Module, opset: int) -> ir.Model:
    """``mel [1,128,time] -> audio_features [1,audio_tokens,output_dim]``."""
    cfg = model.config.audio_config
    mel = torch.randn(
        1, cfg.num_mel_bins, EXAMPLE_FRAMES, generator=torch.Generator().manual_seed(0)
    )
    io = encoder_io(cfg.num_mel_bins, cfg.output_dim)
    wrapper = EncoderWrapper(model).eval()
    onnx_model = _trace(wrapper, (mel,), io, {"mel": {2: Dim("time")}}, opset, "encoder")
    name_derived_dims(onnx_model, "time", encoder_dims(wrapper.chunk, wrapper.window))
    return onnx_model


def export_decoder_init(model: torch.nn.Module, opset: int) -> ir.Model:
    """Prefill graph (see ``DecoderInitWrapper``), batch/seq/audio_tokens dynamic."""
    cfg = model.config.text_config
    batch, seq, n_audio, offset = 2, 40, 20, 9
    ids = torch.full((batch, seq), 100, dtype=torch.long)
    ids[:, offset : offset + n_audio] = model.config.audio_token_id
    pos = torch.arange(seq).expand(batch, seq).contiguous()
    feats = torch.zeros(batch, n_audio, cfg.hidden_size)
    args = (ids, pos, feats, torch.tensor([offset]))
    b, s = Dim("batch"), Dim("seq")
    shapes = {
        "input_ids": {0: b, 1: s},
        "position_ids": {0: b, 1: s},
        "audio_features": {0: b, 1: Dim("audio_tokens")},
        "audio_offset": None,
    }
    io = decoder_init_io(
        cfg.num_hidden_layers,
        cfg.num_key_value_heads,
        cfg.head_dim,
        cfg.hidden_size,
        cfg.vocab_size,
    )
    onnx_model = _trace(DecoderInitWrapper(model).eval(), args, io, shapes, opset, "decoder_init")
    name_tied_embedding(onnx_model, model)
    return onnx_model


def export_decoder_step(model: torch.nn.Module, opset: int) -> ir.Model:
    """Decode graph (see ``DecoderStepWrapper``), batch/past dynamic."""
    cfg = model.config.text_config
    batch, past = 2, 7
    cache = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, past, cfg.head_dim)
    args = (
        torch.full((batch, 1), 100, dtype=torch.long),
        torch.full((batch, 1), past, dtype=torch.long),
        torch.zeros(cache),
        torch.zeros(cache),
    )
    b, p = Dim("batch"), Dim("past")
    shapes = {
        "input_ids": {0: b},
        "position_ids": {0: b},
        "past_keys": {1: b, 3: p},
        "past_values": {1: b, 3: p},
    }
    io = decoder_step_io(
        cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size
    )
    onnx_model = _trace(DecoderStepWrapper(model).eval(), args, io, shapes, opset, "decoder_step")
    name_tied_embedding(onnx_model, model)
    return onnx_model


def name_tied_embedding(onnx_model: ir.Model, model: torch.nn.Module) -> None:
    """Call the tied embedding/lm_head initializer by its checkpoint key (torch picks either)."""
    if model.lm_head.weight is model.get_input_embeddings().weight:
        rename_initializer(onnx_model, "lm_head.weight", TIED_EMBEDDING)
