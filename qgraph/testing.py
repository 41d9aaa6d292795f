"""Helpers for testing passes (ours and yours): tiny models from text and the four checks.

``check_pass`` runs the standard pass test on a model: it runs the model in ONNX Runtime,
applies the pass and checks ``modified``, runs it again and compares with the pass's declared
tolerance, then applies the pass a second time and checks that it reports ``modified=False``
(idempotence). Use ``expect_modified=False`` for the must-not-fire case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from qgraph.instruments import verify
from qgraph.instruments.textform import TensorHasher, model_text
from qgraph.pass_api import GraphPass, Tolerance

IR_VERSION = 10


def model_from_text(text: str) -> ir.Model:
    """Build a model from ONNX textual syntax (``onnx.parser``); IR version 10 for ORT."""
    proto = onnx.parser.parse_model(text)
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def copy_model(model: ir.Model) -> ir.Model:
    return ir.from_proto(ir.to_proto(model))


def op_types(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph.all_nodes()]


@dataclass
class PassCheck:
    before: ir.Model
    after: ir.Model
    outputs_before: dict[str, np.ndarray]
    outputs_after: dict[str, np.ndarray]
    stats: dict[str, int]
    """The pass's statistics from the first run."""


def check_pass(
    p: GraphPass,
    model: ir.Model,
    *,
    expect_modified: bool = True,
    feeds: dict[str, np.ndarray] | None = None,
    dims: dict[str, int] | None = None,
    tolerance: Tolerance | None = None,
) -> PassCheck:
    """Apply ``p`` to ``model`` and assert the four properties; returns both versions."""
    before = copy_model(model)
    feeds = feeds if feeds is not None else verify.sample_inputs(model, dims)
    out_before = verify.run_model(before, feeds)
    p.reset_stats()
    result = p(model)
    stats = dict(p.stats)
    assert result.modified == expect_modified, (
        f"{p}: modified={result.modified}, expected {expect_modified}"
    )
    if not expect_modified:
        hasher = TensorHasher()
        assert model_text(model, hasher) == model_text(before, hasher), (
            f"{p} changed the model but reported modified=False"
        )
    out_after = verify.run_model(model, feeds)
    problems = verify.compare(out_before, out_after, tolerance or p.tolerance)
    assert not problems, f"{p}: {problems}"
    again = p(model)
    assert not again.modified, f"{p} is not idempotent: a second run reported modified=True"
    return PassCheck(before, model, out_before, out_after, stats)
