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
Scope: the main graph and its subgraphs and functions.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import common
from onnxscript.optimizer import _constant_folding

from qgraph.pass_api import GraphPass, option


def _keep_storage_casts(node: ir.Node) -> bool | None:
    """False for Cast(FP16 initializer) (to-fp16's storage cast); None: the folder decides."""
    if node.op_type == "Cast" and node.inputs and node.inputs[0] is not None:
        source = node.inputs[0].const_value
        if source is not None and source.dtype == ir.DataType.FLOAT16:
            return False
    return None


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
        after = sum(1 for _ in model.graph.all_nodes())
        if before != after:
            self.count("nodes folded", before - after)
        return ir.passes.PassResult(model, modified)
