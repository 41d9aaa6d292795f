"""Dead node / initializer / function / opset import -> removed.

Wraps onnx_ir's ``RemoveUnusedNodesPass``, ``RemoveUnusedFunctionsPass`` and
``RemoveUnusedOpsetsPass``. Graph inputs and outputs are never removed, so the component's
signature is unchanged.

Does not fire: everything is used.
Scope: the main graph, subgraphs and functions.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import common

from qgraph.pass_api import GraphPass


class RemoveUnused(GraphPass):
    """Unused nodes, initializers, functions and opset imports -> removed."""

    name = "remove-unused"
    category = "hygiene"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        nodes = sum(1 for _ in model.graph.all_nodes())
        inits = len(model.graph.initializers)
        modified = False
        for sub in (
            common.RemoveUnusedNodesPass(),
            common.RemoveUnusedFunctionsPass(),
            common.RemoveUnusedOpsetsPass(),
        ):
            modified |= sub(model).modified
        self.count("nodes removed", nodes - sum(1 for _ in model.graph.all_nodes()))
        self.count("initializers removed", inits - len(model.graph.initializers))
        return ir.passes.PassResult(model, modified)
