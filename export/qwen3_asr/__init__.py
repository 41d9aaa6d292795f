"""Qwen3-ASR exporter: transformers' native ``Qwen3ASRForConditionalGeneration`` -> raw bundle.

``export_qwen3_asr(model, out_dir, opset=18)`` writes the encoder / decoder_init / decoder_step
bundle; ``build_model(name_or_dir)`` gives the PyTorch model (built-in ``tiny``, ``random-0.6b``,
``random-1.7b``, a checkpoint folder or a hub id); ``validate.validate_bundle`` compares a
bundle with PyTorch eager. Modules: ``configs`` (sources), ``wrappers`` (traceable forwards),
``graphs`` + ``dims`` (tracing, dim names), ``sidefiles``, ``exporter``, ``validate``.
"""

from .configs import BUILTIN, build_model
from .exporter import FAMILY, export_qwen3_asr

export = export_qwen3_asr
"""The entry point its record in ``qgraph.families`` names."""

__all__ = ["BUILTIN", "FAMILY", "build_model", "export", "export_qwen3_asr"]
