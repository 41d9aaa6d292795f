"""Two nodes with the same op, attributes and inputs -> one node.

Wraps onnx_ir's ``CommonSubexpressionEliminationPass``. Nodes with subgraphs and
non-deterministic ops (RandomNormal, ...) are left alone; outputs of the graph are kept.

Does not fire: no two nodes compute the same thing.
Scope: the main graph.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import common

from qgraph.pass_api import GraphPass


class CommonSubexpressionElimination(GraphPass):
    """Duplicate computations -> one node."""

    name = "cse"
    category = "hygiene"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = sum(1 for _ in model.graph.all_nodes())
        result = common.CommonSubexpressionEliminationPass()(model)
        self.count("nodes merged", before - sum(1 for _ in model.graph.all_nodes()))
        return ir.passes.PassResult(model, result.modified)
