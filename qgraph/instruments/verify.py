"""Numeric checks: run a component before and after a pass in ONNX Runtime and compare.

Inputs are generated from the component's signature: symbolic dims take values from ``dims``
(default 1 for names containing "batch", 8 otherwise), integer inputs named ``*position*`` count
up along the last axis, ``*offset*`` inputs are 0, other integers are drawn from [0, 100), floats
from a normal distribution. ORT graph optimisations are disabled so that each side runs the
graph as written. The comparison uses the ``Tolerance`` the pass declares.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from qgraph.errors import VerificationError
from qgraph.pass_api import Tolerance

logger = logging.getLogger(__name__)


def sample_inputs(model: ir.Model, dims: dict[str, int] | None = None, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    dims = dims or {}
    feeds = {}
    for v in model.graph.inputs:
        if v.dtype is None or v.shape is None:
            raise VerificationError(f"input {v.name!r} has no type or shape; cannot generate data")
        shape = []
        for d in v.shape:
            if isinstance(d, int):
                shape.append(d)
            else:
                name = str(d)
                shape.append(dims.get(name, 1 if "batch" in name.lower() else 8))
        np_dtype = v.dtype.numpy()
        lname = (v.name or "").lower()
        if np.issubdtype(np_dtype, np.integer):
            if "position" in lname:
                arr = np.broadcast_to(np.arange(shape[-1] if shape else 1), shape).astype(np_dtype)
            elif "offset" in lname:
                arr = np.zeros(shape, np_dtype)
            else:
                arr = rng.integers(0, 100, size=shape).astype(np_dtype)
        elif np_dtype == np.bool_:
            arr = rng.random(shape) < 0.5
        else:
            arr = rng.standard_normal(shape).astype(np_dtype)
        feeds[v.name] = np.ascontiguousarray(arr)
    return feeds


def input_signature(model: ir.Model) -> list[tuple]:
    return [
        (v.name, v.dtype, None if v.shape is None else tuple(map(str, v.shape)))
        for v in model.graph.inputs
    ]


def model_session(model: ir.Model, path: Path, optimization: str = "disable") -> Any:
    """Save the in-memory ``model`` to ``path`` (weights in ``<path>.data``) and open it in ONNX
    Runtime on the CPU at graph ``optimization`` level (``qgraph.runtime.ort.OPT_LEVELS``): the
    one way instruments and calibrating passes run a model they hold."""
    import onnxruntime as ort

    from qgraph.runtime.ort import session_options

    ir.save(model, path, external_data=path.name + ".data")
    return ort.InferenceSession(
        str(path), session_options(None, optimization), providers=["CPUExecutionProvider"]
    )


def run_model(model: ir.Model, feeds: dict, workdir: Path | None = None) -> dict[str, np.ndarray]:
    """Save ``model`` to a scratch folder and run it in ORT (CPU, no graph optimisations)."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        sess = model_session(model, Path(tmp) / "model.onnx")
        names = [o.name for o in sess.get_outputs()]
        wanted = {i.name for i in sess.get_inputs()}
        return dict(
            zip(names, sess.run(None, {k: v for k, v in feeds.items() if k in wanted}), strict=True)
        )


def compare(before: dict, after: dict, tol: Tolerance) -> list[str]:
    """Human-readable problems, one per output that breaks the tolerance (empty: all fine)."""
    problems = []
    for name, a in before.items():
        if name not in after:
            problems.append(f"output '{name}' disappeared")
            continue
        b = after[name]
        if a.shape != b.shape:
            problems.append(f"output '{name}' shape {list(a.shape)} -> {list(b.shape)}")
            continue
        if not np.issubdtype(a.dtype, np.floating):
            if not np.array_equal(a, b):
                problems.append(f"output '{name}' ({a.dtype}) values differ")
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        if not np.isfinite(b64).all() and np.isfinite(a64).all():
            problems.append(f"output '{name}' has NaN/inf after the pass")
            continue
        diff = float(np.max(np.abs(a64 - b64))) if a.size else 0.0
        if tol.exact and diff != 0:
            problems.append(f"output '{name}' max abs diff {diff:.3g} (pass declares exact)")
            continue
        scale = float(np.max(np.abs(a64))) if a.size else 0.0
        if tol.atol is not None and diff > tol.atol + (tol.rtol or 0) * scale:
            problems.append(
                f"output '{name}' max abs diff {diff:.3g} exceeds atol={tol.atol:g} + "
                f"rtol={tol.rtol or 0:g} x max |reference| ({scale:.3g})"
            )
        if tol.min_cosine is not None and a.size:
            cos = float(
                a64.ravel() @ b64.ravel() / (np.linalg.norm(a64) * np.linalg.norm(b64) + 1e-30)
            )
            if cos < tol.min_cosine:
                problems.append(f"output '{name}' cosine {cos:.5f} < {tol.min_cosine}")
        if tol.min_top1 is not None and a.ndim >= 1 and a.shape[-1] > 1:
            agree = float(np.mean(a.argmax(-1) == b.argmax(-1)))
            if agree < tol.min_top1:
                problems.append(f"output '{name}' top-1 agreement {agree:.3f} < {tol.min_top1}")
    return problems
