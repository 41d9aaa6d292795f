"""Exporters: PyTorch checkpoint -> raw FP32 ONNX bundle, one subpackage per model family.

Only this package imports torch and transformers; the CLI imports it lazily. ``FAMILIES`` maps
the family name used on the command line (``qgraph export FAMILY``) to its module, which
provides ``export(model, out_dir, *, opset) -> Path``.
"""

FAMILIES: dict[str, str] = {
    "qwen3-asr": "qgraph.export.qwen3_asr",
    "whisper": "qgraph.export.whisper",
}

MIN_OPSET, MAX_OPSET = 18, 23
"""Opsets the dynamo exporter and the wrappers are checked with."""


def check_export_args(out_dir, opset: int, overwrite: bool):
    """The checks every exporter makes before tracing; returns ``out_dir`` as a Path.

    Raises ExportError for an opset outside MIN_OPSET..MAX_OPSET or an existing, non-empty
    ``out_dir`` (unless ``overwrite``), so that a bad call fails in a second, not after minutes.
    """
    from pathlib import Path

    from qgraph.errors import ExportError

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported; use {MIN_OPSET}..{MAX_OPSET}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite and (out_dir.is_file() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir} already exists; choose another output or pass --force")
    return out_dir
