"""Reshape(x, shape){allowzero=1} -> Reshape(x, shape) where ``shape`` is a constant with no 0.

``allowzero=1`` only changes what a 0 in ``shape`` means (keep a zero-sized dim instead of
copying the input dim). Some runtimes (DirectML, older ORT builds) reject the attribute, and the
torch exporter sets it on every Reshape. Dropping it is exact when the shape is a known constant
without zeros.

Does not fire: ``allowzero`` absent or 0; the shape is computed at run time (counted as
``skipped:shape not constant``); the shape contains a 0 (``skipped:shape has a zero``).
Scope: every graph of the component, subgraphs included.
"""

from __future__ import annotations

import onnx_ir as ir

from qgraph.pass_api import GraphPass


class StripReshapeAllowzero(GraphPass):
    """Reshape{allowzero=1} -> Reshape where the shape is a constant with no zero."""

    name = "strip-reshape-allowzero"
    category = "hygiene"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx"):
                continue
            attr = node.attributes.get("allowzero")
            if attr is None or attr.as_int() == 0:
                continue
            shape = (
                ir.convenience.get_const_tensor(node.inputs[1]) if len(node.inputs) > 1 else None
            )
            if shape is None:
                self.count("skipped:shape not constant", where=node)
                continue
            if (shape.numpy() == 0).any():
                self.count("skipped:shape has a zero", where=node)
                continue
            del node.attributes["allowzero"]
            self.count("stripped")
            modified = True
        return ir.passes.PassResult(model, modified)
