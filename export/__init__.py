"""Exporters: PyTorch checkpoint -> raw FP32 ONNX bundle, one subpackage per model family.

Only this package imports torch and transformers; the CLI imports it lazily. ``FAMILIES`` maps
the family name used on the command line (``qgraph export FAMILY``) to its module, which
provides ``export(model, out_dir, *, opset) -> Path``.
"""

FAMILIES: dict[str, str] = {
    "qwen3-asr": "qgraph.export.qwen3_asr",
    "whisper": "qgraph.export.whisper",
}
