"""Trace the Whisper wrappers to raw ONNX (``onnx_ir.Model``) with readable, optimum-style names.

``torch.onnx.export(dynamo=True, optimize=False)`` at the given opset on small example inputs;
the ``ONNXProgram.model`` is returned as is (no optimizer, no fusion, no folding, initializers
still backed by the model's torch tensors). I/O names and dims follow optimum's Whisper export,
which Transformers.js and onnx-asr read:

- encoder: ``input_features [batch_size, n_mels, 3000] -> last_hidden_state [batch_size, 1500, d]``;
- decoders: ``input_ids [batch_size, decoder_sequence_length]``, ``encoder_hidden_states
  [batch_size, encoder_sequence_length, d]``, ``past_key_values.{i}.{decoder,encoder}.{key,value}``
  ``[batch_size, heads, past_decoder_sequence_length | encoder_sequence_length, head_dim]`` ->
  ``logits`` and ``present.{i}.*`` in the same layout.

The example lengths (5 tokens, 7 past, 17 encoder positions) are unusual on purpose: a length the
tracer baked into a constant would show up as that number (a test looks for it).
"""

from __future__ import annotations

import logging

import onnx_ir as ir
import torch
from torch.export import Dim

from qgraph.export.dims import DimSpec
from qgraph.export.tracing import rename_initializer, trace

from .wrappers import DecoderWithPastWrapper, DecoderWrapper, EncoderWrapper

logger = logging.getLogger(__name__)

EXAMPLE_SEQ, EXAMPLE_PAST, EXAMPLE_ENC, EXAMPLE_BATCH = 5, 7, 17, 2
PRODUCER = "qgraph.export.whisper"
TIED_EMBEDDING = "model.decoder.embed_tokens.weight"
"""Name of the tied token embedding / output projection initializer (its checkpoint key)."""


def kv_names(layers: int, prefix: str) -> list[str]:
    """``{prefix}.{i}.decoder.key``, ``.decoder.value``, ``.encoder.key``, ``.encoder.value``."""
    return [
        f"{prefix}.{i}.{side}.{kind}"
        for i in range(layers)
        for side in ("decoder", "encoder")
        for kind in ("key", "value")
    ]


def _dims(model: torch.nn.Module) -> tuple[int, int, int, int]:
    cfg = model.config
    heads = cfg.decoder_attention_heads
    return cfg.decoder_layers, heads, cfg.d_model // heads, cfg.vocab_size


def _trace(module, args, io, dynamic_shapes, opset: int, what: str) -> ir.Model:
    model = trace(module, args, io, dynamic_shapes, opset, what, PRODUCER)
    proj = getattr(module, "proj_out", None)
    if proj is not None and proj.weight is module.model.decoder.embed_tokens.weight:
        rename_initializer(model, "proj_out.weight", TIED_EMBEDDING)  # torch picks either name
    return model


def export_encoder(model: torch.nn.Module, opset: int) -> ir.Model:
    """The encoder graph; batch dynamic, the 30 s mel length static (Whisper needs it)."""
    cfg = model.config
    frames = 2 * cfg.max_source_positions
    features = torch.randn(
        EXAMPLE_BATCH, cfg.num_mel_bins, frames, generator=torch.Generator().manual_seed(0)
    )
    io = {
        "input_features": ["batch_size", cfg.num_mel_bins, frames],
        "last_hidden_state": ["batch_size", cfg.max_source_positions, cfg.d_model],
    }
    shapes = ({0: Dim("batch_size")},)
    return _trace(EncoderWrapper(model), (features,), io, shapes, opset, "encoder_model")


def export_decoder(model: torch.nn.Module, opset: int) -> ir.Model:
    """The first-call decoder (no past): computes the cross-attention cache from the encoder."""
    layers, heads, head_dim, vocab = _dims(model)
    ids = torch.full((EXAMPLE_BATCH, EXAMPLE_SEQ), 3, dtype=torch.long)
    hidden = torch.zeros(EXAMPLE_BATCH, EXAMPLE_ENC, model.config.d_model)
    io: dict[str, DimSpec] = {
        "input_ids": ["batch_size", "decoder_sequence_length"],
        "encoder_hidden_states": ["batch_size", "encoder_sequence_length", model.config.d_model],
        "logits": ["batch_size", "decoder_sequence_length", vocab],
    }
    for name in kv_names(layers, "present"):
        length = "decoder_sequence_length" if ".decoder." in name else "encoder_sequence_length"
        io[name] = ["batch_size", heads, length, head_dim]
    b = Dim("batch_size")
    shapes = ({0: b, 1: Dim("decoder_sequence_length")}, {0: b, 1: Dim("encoder_sequence_length")})
    return _trace(DecoderWrapper(model), (ids, hidden), io, shapes, opset, "decoder_model")


def export_decoder_with_past(model: torch.nn.Module, opset: int) -> ir.Model:
    """The later-call decoder: the self cache grows by the new tokens, the cross cache is empty."""
    layers, heads, head_dim, vocab = _dims(model)
    ids = torch.full((EXAMPLE_BATCH, EXAMPLE_SEQ), 3, dtype=torch.long)
    io: dict[str, DimSpec] = {"input_ids": ["batch_size", "decoder_sequence_length"]}
    past = []
    for name in kv_names(layers, "past_key_values"):
        length = EXAMPLE_PAST if ".decoder." in name else EXAMPLE_ENC
        past.append(torch.zeros(EXAMPLE_BATCH, heads, length, head_dim))
        dim = "past_decoder_sequence_length" if ".decoder." in name else "encoder_sequence_length"
        io[name] = ["batch_size", heads, dim, head_dim]
    io["logits"] = ["batch_size", "decoder_sequence_length", vocab]
    for name in kv_names(layers, "present"):
        if ".decoder." in name:
            io[name] = ["batch_size", heads, "total_decoder_sequence_length", head_dim]
        else:
            io[name] = [0, heads, "encoder_sequence_length", head_dim]
    b, p, e = Dim("batch_size"), Dim("past_decoder_sequence_length"), Dim("encoder_sequence_length")
    cache = [{0: b, 2: p} if ".decoder." in n else {0: b, 2: e} for n in kv_names(layers, "past")]
    shapes = ({0: b, 1: Dim("decoder_sequence_length")}, tuple(cache))  # *past is one tuple
    return _trace(
        DecoderWithPastWrapper(model), (ids, *past), io, shapes, opset, "decoder_with_past_model"
    )
