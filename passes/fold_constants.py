"""Node(constant inputs) -> initializer; Transpose(W) of a single-use weight -> W^T initializer.

Wraps onnxscript's constant folder (``onnxscript.optimizer.FoldConstantsPass``): evaluates
nodes whose inputs are all constants, propagates shapes to turn ``Shape``-derived values into
constants where they are static, and replaces the results by initializers. Then, as onnxscript's
own optimizer does, it drops the nodes that folding left unused and lifts ``Constant`` nodes of
more than 16 elements into initializers (so that weights live in external data). A ``Cast`` of
an FP16 initializer is kept: it is ``to-fp16``'s storage cast, and folding it would undo it.

Does not fire: inputs that are not constant; results larger than ``output_size_limit``
elements (except the always-folded ops, e.g. Transpose of a weight with no other use).
A weight shared by two consumers (a tied embedding used by Gather and, transposed, by the
lm_head MatMul) is not duplicated: that is ``inline-lm-head``'s decision.

Names: a folded initializer computed from initializers is named after the largest of them (by
elements; the first on a tie), its *source*: it takes the source's name when the source is
gone after folding (``Transpose(model...q_proj.weight)`` -> ``model...q_proj.weight``, now
``[in, out]``), else ``<source>.T`` for a Transpose and ``<source>.<op>`` (lower case) for any
other op. Names stay unique within the component (``_1``, ``_2``, ... on a clash) and depend
only on the graph, so every run gives the same ones. Folded values that are graph outputs,
and results of constants alone (``Constant``, ``ConstantOfShape``), keep the folder's name.
Scope: the main graph and its subgraphs and functions.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import common
from onnxscript.optimizer import _constant_folding

from qgraph.pass_api import GraphPass, option
from qgraph.passes._rewrite import fresh_name, rename_initializers, value_names


def _keep_storage_casts(node: ir.Node) -> bool | None:
    """False for Cast(FP16 initializer) (to-fp16's storage cast); None: the folder decides."""
    if node.op_type == "Cast" and node.inputs and node.inputs[0] is not None:
        source = node.inputs[0].const_value
        if source is not None and source.dtype == ir.DataType.FLOAT16:
            return False
    return None


def _sources(model: ir.Model) -> dict[tuple[ir.Graph, str], tuple[ir.Value, str]]:
    """(graph, node output name) -> (the largest initializer it is computed from, the op that
    computes it), for every node output downstream of an initializer."""
    found: dict[tuple[ir.Graph, str], tuple[ir.Value, str]] = {}
    by_value: dict[ir.Value, ir.Value] = {}
    for graph in model.graphs():
        for node in graph:
            best: ir.Value | None = None
            for v in node.inputs:
                source = v if v is not None and v.is_initializer() else by_value.get(v)
                if source is None or source.const_value is None or not source.name:
                    continue
                if best is None or source.const_value.size > best.const_value.size:
                    best = source
            if best is None:
                continue
            for out in node.outputs:
                by_value[out] = best
                if out.name:
                    found[(graph, out.name)] = (best, node.op_type)
    return found


def _name_folded(model: ir.Model, sources: dict, before: dict[ir.Graph, set[str]]) -> None:
    """Name the new initializers after their sources (see the module docstring)."""
    taken: set[str] | None = None
    for graph in model.graphs():
        renames: dict[ir.Value, str] = {}
        for name, value in graph.initializers.items():
            entry = sources.get((graph, name))
            if name in before.get(graph, ()) or entry is None or value.is_graph_output():
                continue
            if taken is None:
                taken = value_names(model)
            source, op = entry
            base = source.name
            if base in taken:
                base = f"{source.name}.{'T' if op == 'Transpose' else op.lower()}"
            taken.discard(name)
            renames[value] = fresh_name(base, taken)
        if renames:
            rename_initializers(graph, renames)


class FoldConstants(GraphPass):
    """Node(constants) -> constant (onnxscript's folder, with shape propagation)."""

    name = "fold-constants"
    category = "hygiene"
    input_size_limit: int = option(
        _constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
        "largest input (elements) a folded node may read",
    )
    output_size_limit: int = option(
        _constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT,
        "largest result (elements) that is materialised as a new initializer",
    )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = sum(1 for _ in model.graph.all_nodes())
        sources = _sources(model)
        initializers = {g: set(g.initializers) for g in model.graphs()}
        result = _constant_folding.FoldConstantsPass(
            shape_inference=True,
            input_size_limit=self.input_size_limit,
            output_size_limit=self.output_size_limit,
            should_fold=_keep_storage_casts,
        )(model)
        modified = result.modified
        if modified:
            common.RemoveUnusedNodesPass()(model)
        modified |= common.LiftConstantsToInitializersPass(size_limit=16)(model).modified
        if modified:
            _name_folded(model, sources, initializers)
        after = sum(1 for _ in model.graph.all_nodes())
        if before != after:
            self.count("nodes folded", before - after)
        return ir.passes.PassResult(model, modified)
