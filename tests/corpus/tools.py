"""The optimizers scored on the corpus; each writes ``out`` (weights in ``out.data``) from a case.

- ``qgraph``: the graph part of ``qgraph compile --passes fp32`` on one graph: the ``hygiene``
  then the ``fusions`` pipeline (``BUILTIN_PIPELINES``), every pass on the bare model; the
  layout passes of ``fp32`` (embedding extraction, lm_head untying, weight sharing) change the
  I/O and are left out;
- ``ort-bert`` / ``ort-gpt2``: ``onnxruntime.transformers.optimizer.optimize_model(path,
  model_type=..., num_heads, hidden_size)`` with ``opt_level=None``, the public default (1 for
  both types: ORT's basic graph optimizations, then the Python fusions);
- ``onnxscript``: ``onnxscript.rewriter.ort_fusions.optimize_for_ort(model)`` on the model as
  loaded (``onnx_ir``).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from pathlib import Path

import onnx_ir as ir

from .cases import Case

QGRAPH_PIPELINE = "hygiene,fusions"


def save(model: ir.Model, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in (out, out.with_name(out.name + ".data")):
        stale.unlink(missing_ok=True)
    ir.save(model, out, external_data=out.name + ".data")
    return out


def load(case: Case) -> ir.Model:
    model = ir.load(case.path)
    ir.external_data.load_to_model(model)
    return model


def qgraph_passes(model: ir.Model, pipeline: str = QGRAPH_PIPELINE) -> dict[str, dict[str, int]]:
    """Apply ``pipeline`` to ``model`` in place; ``{pass: stats}`` of the fusion passes."""
    from qgraph.pipeline import expand, flatten
    from qgraph.registry import default_registry

    stats: dict[str, dict[str, int]] = {}
    for p in flatten(expand(pipeline, default_registry())):
        p.reset_stats()
        p.run_on(model, "model", "")
        if p.name.startswith("fuse-"):
            stats[p.name] = dict(p.stats)
    return stats


def run_qgraph(case: Case, out: Path) -> Path:
    model = load(case)
    qgraph_passes(model)
    return save(model, out)


def _ort(model_type: str) -> Callable[[Case, Path], Path]:
    def optimize(case: Case, out: Path) -> Path:
        from onnxruntime.transformers.optimizer import optimize_model

        logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()):
            model = optimize_model(
                str(case.path),
                model_type=model_type,
                num_heads=case.num_heads,
                hidden_size=case.hidden_size,
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        for stale in (out, out.with_name(out.name + ".data")):
            stale.unlink(missing_ok=True)
        model.save_model_to_file(
            str(out), use_external_data_format=True, all_tensors_to_one_file=True
        )
        return out

    return optimize


def run_onnxscript(case: Case, out: Path) -> Path:
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model, _ = optimize_for_ort(load(case))
    return save(model, out)


TOOLS: dict[str, Callable[[Case, Path], Path]] = {
    "qgraph": run_qgraph,
    "ort-bert": _ort("bert"),
    "ort-gpt2": _ort("gpt2"),
    "onnxscript": run_onnxscript,
}
