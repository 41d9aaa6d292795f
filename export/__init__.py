"""Exporters: PyTorch checkpoint -> raw FP32 ONNX bundle, one subpackage per model family.

Only this package imports torch and transformers; the CLI imports it lazily. Each family's
record in ``qgraph.families`` names its entry point (``export(model, out_dir, *, opset,
overwrite) -> Path``) and its validator.
"""

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
