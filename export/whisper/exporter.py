"""``export_whisper``: a Whisper checkpoint -> raw FP32 bundle in the Transformers.js layout.

The bundle (family ``whisper``)::

    onnx/encoder_model.onnx (+ .onnx_data)           input_features -> last_hidden_state
    onnx/decoder_model_merged.onnx (+ .onnx_data)    If(use_cache_branch): with/without past
    config.json  generation_config.json  preprocessor_config.json
    tokenizer.json  tokenizer_config.json  vocab.json  added_tokens.json  merges.txt
    qgraph.json

This is the folder layout Transformers.js v4 (``onnx/`` subfolder, ``*.onnx_data`` external data
declared in ``config.json``) and onnx-asr (``**/encoder_model.onnx``,
``**/decoder_model_merged.onnx``, ``vocab.json``, ``added_tokens.json``) load. The graphs are what
the dynamo exporter emits (``optimize=False``); the decoder weights are stored once at the top
level of the merged graph. Weights are never copied: initializers point at the model's torch
tensors until ``Bundle.save`` streams them to disk.
"""

from __future__ import annotations

import logging
from pathlib import Path

from qgraph.bundle import Bundle
from qgraph.export import check_export_args
from qgraph.export.tracing import save_bundle, trace_each

from . import graphs
from .configs import build_model, resolve_source
from .merge import merge_decoders
from .sidefiles import side_files

logger = logging.getLogger(__name__)

FAMILY = "whisper"
ENCODER, DECODER = "encoder_model", "decoder_model_merged"
COMPONENTS = (ENCODER, DECODER)
TRACES = (
    ("encoder", graphs.export_encoder),
    ("decoder", graphs.export_decoder),
    ("decoder with past", graphs.export_decoder_with_past),
)
"""What is traced, in order; the two decoders are then merged into ``DECODER``."""


def export_whisper(
    model: str, out_dir: str | Path, *, opset: int = 18, overwrite: bool = False
) -> Path:
    """Export ``model`` (``tiny``, a CTranslate2 folder or a transformers folder) to ``out_dir``.

    Returns the bundle path. Raises ExportError for a bad source, tokenizer or opset, or an
    existing ``out_dir`` (unless ``overwrite``), before any tracing; BundleError if the bundle
    cannot be written.
    """
    out_dir = check_export_args(out_dir, opset, overwrite)
    source = resolve_source(model)
    hf_model, description = build_model(source)
    files = side_files(hf_model, source, list(COMPONENTS))
    logger.info("exporting %s at opset %d", description, opset)

    traced = trace_each([(what, lambda f=f: f(hf_model, opset)) for what, f in TRACES])
    bundle = Bundle(family=FAMILY)
    bundle.add_component(ENCODER, traced["encoder"], f"onnx/{ENCODER}.onnx")
    merged = merge_decoders(traced["decoder"], traced["decoder with past"])
    bundle.add_component(DECODER, merged, f"onnx/{DECODER}.onnx")
    for name in COMPONENTS:
        bundle.data_files[name] = f"onnx/{name}.onnx_data"
    bundle.side_files.update(files)

    return save_bundle(bundle, out_dir, overwrite)
