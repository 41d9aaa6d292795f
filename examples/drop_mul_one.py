import numpy as np
import onnx_ir as ir

from qgraph.pass_api import GraphPass


class DropMulOne(GraphPass):
    """Mul(x, 1) -> x, where the constant 1 does not broadcast x to a bigger shape."""

    name = "drop-mul-one"
    category = "hygiene"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in list(model.graph):
            if node.op_type != "Mul" or node.domain not in ("", "ai.onnx"):
                continue
            x, one = node.inputs
            out, const = node.outputs[0], ir.convenience.get_const_tensor(one)
            if const is None or const.size != 1 or not np.all(const.numpy() == 1):
                self.count("skipped:not a constant one")
                continue
            if out.is_graph_output() or x.shape is None or len(const.shape) > len(x.shape):
                self.count("skipped:output or broadcast would change")
                continue
            ir.convenience.replace_all_uses_with(out, x)
            model.graph.remove(node, safe=True)
            self.count("removed")
            modified = True
        return ir.passes.PassResult(model, modified)
