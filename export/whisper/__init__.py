"""Whisper exporter: transformers' ``WhisperForConditionalGeneration`` -> Transformers.js layout.

``export_whisper(model, out_dir, opset=18)`` writes ``onnx/encoder_model.onnx`` and
``onnx/decoder_model_merged.onnx`` (one ``If`` on ``use_cache_branch``) with the configs and
tokenizer files Transformers.js v4 and onnx-asr read. Sources (``configs``): the built-in random
``tiny``, a CTranslate2 / faster-whisper folder (``model.bin``, converted in memory by
``ctranslate2``) or a transformers checkpoint folder. ``validate.validate_whisper`` compares a
bundle with PyTorch eager. Modules: ``configs``, ``ctranslate2``, ``tokens``, ``wrappers``,
``graphs``, ``merge``, ``sidefiles``, ``exporter``, ``validate``.
"""

from .configs import BUILTIN, build_model, resolve_source
from .exporter import FAMILY, export_whisper

export = export_whisper
"""The entry point its record in ``qgraph.families`` names."""

__all__ = ["BUILTIN", "FAMILY", "build_model", "export", "export_whisper", "resolve_source"]
