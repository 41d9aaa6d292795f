import numpy as np
import onnx_graphsurgeon as gs

from qgraph.graphsurgeon import GraphSurgeonPass


class DropMulOneGS(GraphSurgeonPass):
    """Mul(x, 1) -> x, where the constant 1 does not broadcast x to a bigger shape (gs)."""

    name = "drop-mul-one-gs"
    category = "hygiene"

    def surgery(self, graph: gs.Graph) -> bool:
        changed = False
        for node in graph.nodes:
            if node.op != "Mul" or node.domain not in (None, "", "ai.onnx"):
                continue
            (x, one), out = node.inputs, node.outputs[0]
            if not isinstance(one, gs.Constant) and one.inputs and one.inputs[0].op == "Constant":
                one = one.inputs[0].attrs.get("value")  # the tensor of a Constant node
            # test the shape before .values: only a read of .values loads a weight
            if not isinstance(one, gs.Constant) or np.prod(one.shape) != 1 or one.values != 1:
                self.count("skipped:not a constant one")
                continue
            if out in graph.outputs or x.shape is None or len(one.shape) > len(x.shape):
                self.count("skipped:output or broadcast would change")
                continue
            for consumer in list(out.outputs):
                consumer.inputs[consumer.inputs.index(out)] = x
            node.outputs.clear()
            self.count("removed")
            changed = True
        if changed:  # cleanup().toposort() reorders nodes even in an unchanged graph
            graph.cleanup().toposort()
        return changed
