"""Helpers for testing passes (ours and yours): tiny models from text and the four checks.

``check_pass`` runs the standard pass test on a model: it runs the model in ONNX Runtime,
applies the pass and checks ``modified``, runs it again and compares with the pass's declared
tolerance, then applies the pass a second time and checks that it reports ``modified=False``
(idempotence). Use ``expect_modified=False`` for the must-not-fire case. It checks a
``GraphSurgeonPass`` (a surgery written with onnx-graphsurgeon) the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from qgraph.bundle import Bundle
from qgraph.instruments import verify
from qgraph.instruments.textform import TensorHasher, model_text
from qgraph.pass_api import BundlePass, GraphPass, Tolerance

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
    out_before = verify.run_model(model, feeds)
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
    reference = p.adapt_reference("", out_before) if result.modified else out_before
    problems = verify.compare(reference, out_after, tolerance or p.tolerance)
    assert not problems, f"{p}: {problems}"
    again = p(model)
    assert not again.modified, f"{p} is not idempotent: a second run reported modified=True"
    return PassCheck(before, model, out_before, out_after, stats)


@dataclass
class BundleCheck:
    outputs_after: dict[str, dict[str, np.ndarray]]
    stats: dict[str, int]


def check_bundle_pass(
    p: BundlePass,
    bundle: Bundle,
    *,
    expect_modified: bool = True,
    dims: dict[str, int] | None = None,
) -> BundleCheck:
    """The four checks for a bundle pass; returns the outputs after it and its statistics.

    Every component runs in ONNX Runtime before and after; inputs and reference outputs go
    through the pass's ``adapt_feeds``/``adapt_reference`` hooks, and the comparison uses its
    declared tolerance. A second run must report ``modified=False``.
    """
    hasher = TensorHasher()
    texts = {c: model_text(m, hasher) for c, m in bundle.components.items()}
    feeds = {c: verify.sample_inputs(m, dims) for c, m in bundle.components.items()}
    before = {c: verify.run_model(m, feeds[c]) for c, m in bundle.components.items()}
    p.reset_stats()
    result = p(bundle)
    assert result.modified == expect_modified, (
        f"{p}: modified={result.modified}, expected {expect_modified}"
    )
    stats = dict(p.stats)
    after = {}
    for c, model in bundle.components.items():
        if not expect_modified:
            assert model_text(model, hasher) == texts[c], f"{p} changed {c} but said it did not"
        run_feeds = p.adapt_feeds(c, feeds[c], bundle)
        after[c] = verify.run_model(model, run_feeds)
        reference = p.adapt_reference(c, before[c]) if result.modified else before[c]
        problems = verify.compare(reference, after[c], p.tolerance)
        assert not problems, f"{p} on {c}: {problems}"
    assert not p(bundle).modified, f"{p} is not idempotent: a second run reported modified=True"
    return BundleCheck(after, stats)
