"""MatMul(h, Transpose(E)) with E a tied embedding -> MatMul(h, W) with W = E^T an initializer.

With tied embeddings the exporter emits the lm_head as a run-time ``Transpose`` of the token
embedding table (shared with the embedding ``Gather``), which a quantizer cannot touch and ONNX
Runtime materialises at load anyway. This pass gives the lm_head its own ``[hidden, vocab]``
weight (``lm_head.weight``), computed lazily and streamed at save time. Equal lm_heads of
several components are stored once by ``share-weights``.

``keep_tied=true`` leaves the run-time Transpose (one copy of the table on disk, no quantizable
lm_head) and reports nothing to do.
Does not fire: no ``MatMul`` whose weight is a ``Transpose(perm=[1,0])`` of a 2-D initializer
(``skipped:no transposed-weight lm_head``).
Scope: ``decoder_init`` and ``decoder_step`` by default (``components=``).
"""

from __future__ import annotations

import onnx_ir as ir

from qgraph.bundle import Bundle
from qgraph.pass_api import BundlePass, option


def _transposed(table: ir.TensorProtocol, name: str) -> ir.LazyTensor:
    shape = ir.Shape(list(reversed(list(table.shape))))
    return ir.LazyTensor(
        lambda: ir.tensor(table.numpy().T.copy(), name=name),
        dtype=table.dtype,
        shape=shape,
        name=name,
    )


class InlineLmHead(BundlePass):
    """Tied lm_head Transpose(embedding) -> its own [hidden, vocab] weight."""

    name = "inline-lm-head"
    category = "bundle"
    components: tuple[str, ...] = option(
        ("decoder_init", "decoder_step"), "components whose lm_head is untied"
    )
    keep_tied: bool = option(False, "leave the lm_head as Transpose(embedding)")
    weight_name: str = option("lm_head.weight", "name of the new [hidden, vocab] initializer")

    def call(self, bundle: Bundle) -> ir.passes.PassResult:
        if self.keep_tied:
            self.count("skipped:keep_tied")
            return ir.passes.PassResult(bundle, False)
        modified = False
        for comp in self.components:
            model = bundle.components.get(comp)
            if model is None:
                continue
            heads = [n for n in model.graph if self._is_tied_head(n)]
            if not heads:
                self.count("skipped:no transposed-weight lm_head")
                continue
            for matmul in heads:
                transpose = matmul.inputs[1].producer()
                table = transpose.inputs[0]
                name = (
                    self.weight_name if self.weight_name not in model.graph.initializers else None
                )
                weight = ir.Value(name=name, const_value=_transposed(table.const_value, name or ""))
                model.graph.register_initializer(weight)
                matmul.replace_input_with(1, weight)
                if not transpose.outputs[0].uses():
                    model.graph.remove(transpose, safe=True)
                if not table.uses() and not table.is_graph_output():
                    del model.graph.initializers[table.name]
                self.count("untied")
            self.touch(comp)
            modified = True
        return ir.passes.PassResult(bundle, modified)

    @staticmethod
    def _is_tied_head(node: ir.Node) -> bool:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            return False
        transpose = node.inputs[1].producer() if node.inputs[1] is not None else None
        if transpose is None or transpose.op_type != "Transpose":
            return False
        perm = transpose.attributes.get_ints("perm", None)
        table = transpose.inputs[0]
        return (
            table.const_value is not None
            and len(table.const_value.shape) == 2
            and (perm is None or list(perm) == [1, 0])
        )
