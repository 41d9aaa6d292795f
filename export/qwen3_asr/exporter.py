"""``export_qwen3_asr``: Qwen3-ASR checkpoint -> raw FP32 bundle (encoder, decoder_init/step).

The bundle holds the three graphs exactly as the dynamo exporter emits them at the chosen opset
(``optimize=False``: no fusions, no folding), each with its own external-data file, plus
``config.json``, ``preprocessor_config.json``, ``tokenizer.json`` and ``tokenizer_config.json``.
Weights are never copied: the ONNX initializers point at the model's torch tensors until
``Bundle.save`` streams them to disk, so peak memory stays near one copy of the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import onnx_ir as ir
import torch

from qgraph.bundle import Bundle
from qgraph.export import check_export_args
from qgraph.export.tracing import save_bundle, trace_each

from . import graphs, sidefiles
from .configs import build_resolved, resolve_source

logger = logging.getLogger(__name__)

FAMILY = "qwen3-asr"
COMPONENTS: tuple[tuple[str, Callable[[torch.nn.Module, int], ir.Model]], ...] = (
    ("encoder", graphs.export_encoder),
    ("decoder_init", graphs.export_decoder_init),
    ("decoder_step", graphs.export_decoder_step),
)
"""Component names, in bundle order, and the function that traces each."""


def export_qwen3_asr(
    model: str, out_dir: str | Path, *, opset: int = 18, overwrite: bool = False
) -> Path:
    """Export ``model`` (built-in name, checkpoint folder or hub id) to a raw bundle at ``out_dir``.

    Returns the bundle path. Raises ExportError for a bad source, tokenizer or opset, or an
    existing ``out_dir`` (unless ``overwrite``), before any tracing; BundleError if the bundle
    cannot be written.
    """
    out_dir = check_export_args(out_dir, opset, overwrite)
    folder = resolve_source(model)
    tokenizer, pad_id = sidefiles.tokenizer_files(folder)
    hf_model, description = build_resolved(model, folder)
    logger.info("exporting %s at opset %d", description, opset)

    bundle = Bundle(family=FAMILY)
    traces = [(name, lambda f=f: f(hf_model, opset)) for name, f in COMPONENTS]
    for name, onnx_model in trace_each(traces).items():
        bundle.add_component(name, onnx_model)
    bundle.write_json("config.json", sidefiles.config_json(hf_model, pad_id))
    bundle.write_json("preprocessor_config.json", sidefiles.preprocessor_config_json())
    bundle.side_files.update(tokenizer)

    return save_bundle(bundle, out_dir, overwrite)
