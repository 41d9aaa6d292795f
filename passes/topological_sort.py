"""Nodes in any valid order -> nodes in a stable topological order.

Wraps onnx_ir's ``TopologicalSortPass`` (stable: independent nodes keep their relative order).
Passes that append new nodes at the end of a graph rely on this to produce valid ONNX.

Does not fire: the order is already topological.
Scope: the main graph, its subgraphs and functions.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import common

from qgraph.pass_api import GraphPass


class TopologicalSort(GraphPass):
    """Nodes -> stable topological order."""

    name = "topological-sort"
    category = "hygiene"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, common.TopologicalSortPass()(model).modified)
