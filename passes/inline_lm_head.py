"""MatMul(h, Transpose(E)) with E a tied embedding -> MatMul(h, W) with W = E^T an initializer.

With tied embeddings the exporter emits the lm_head as a run-time ``Transpose`` of the token
embedding table (shared with the embedding ``Gather``), which a quantizer cannot touch and ONNX
Runtime materialises at load anyway. This pass gives the lm_head its own ``[hidden, vocab]``
weight (``lm_head.weight``), computed lazily and streamed at save time. Equal lm_heads of
several components are stored once by ``share-weights``.

With ``embed_from_lm_head`` (default) an embedding ``Gather`` of the same table is rewritten
to read the new weight: Gather(E, ids) -> Transpose(Gather(E^T, ids, axis=1)), the same rows,
so the table is stored once (as E^T) instead of twice.

``keep_tied=true`` leaves the run-time Transpose (one copy of the table on disk, no quantizable
lm_head) and reports nothing to do.
Does not fire: no ``MatMul`` whose weight is a ``Transpose(perm=[1,0])`` of a 2-D initializer
(``skipped:no transposed-weight lm_head``).
Scope: every component with a decoder role by default (``on=`` to choose): prefill and step
(``decoder_init``, ``decoder_step``), the sherpa-onnx layout's ``decoder`` and Whisper's merged
decoder (``decoder_model_merged``); the main graph and its subgraphs. In ``decoder_model_merged``
the lm_head MatMuls of both ``If`` branches read one top-level ``Transpose`` of the table: they get
one shared top-level weight, and the embedding Gathers of both branches read it.
"""

from __future__ import annotations

import onnx_ir as ir

from qgraph.bundle import Bundle
from qgraph.families import DECODER_ROLES
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
    must_follow = {
        "extract-embed-fp16": "the step's embedding table is extracted from its plain Gather first"
    }
    default_roles = DECODER_ROLES
    keep_tied: bool = option(False, "leave the lm_head as Transpose(embedding)")
    weight_name: str = option("lm_head.weight", "name of the new [hidden, vocab] initializer")
    embed_from_lm_head: bool = option(
        True, "let the embedding Gather read the new weight (axis 1) so the table is stored once"
    )

    def call(self, bundle: Bundle) -> ir.passes.PassResult:
        if self.keep_tied:
            self.count("skipped:keep_tied")
            return ir.passes.PassResult(bundle, False)
        modified = False
        for comp in self.targets(bundle.roles()):
            model = bundle.components[comp]
            heads = [n for n in model.graph.all_nodes() if self._is_tied_head(n)]
            if not heads:
                self.count("skipped:no transposed-weight lm_head")
                continue
            untied: dict[ir.Value, ir.Value] = {}
            for matmul in heads:
                transpose = matmul.inputs[1].producer()
                table = transpose.inputs[0]
                weight = untied.get(table)
                if weight is None:
                    weight = untied[table] = self._untie(model, table)
                    self.count("untied")
                matmul.replace_input_with(1, weight)
                if not transpose.outputs[0].uses() and not transpose.outputs[0].is_graph_output():
                    transpose.graph.remove(transpose, safe=True)
            for table in untied:
                if table.is_initializer() and not table.uses() and not table.is_graph_output():
                    del table.graph.initializers[table.name]
            self.touch(comp)
            modified = True
        return ir.passes.PassResult(bundle, modified)

    def _untie(self, model: ir.Model, table: ir.Value) -> ir.Value:
        """The ``[hidden, vocab]`` initializer beside ``table`` (its graph), Gathers moved."""
        home = table.graph or model.graph
        name = self.weight_name if self.weight_name not in home.initializers else None
        head = _transposed(table.const_value, name or "")
        weight = ir.Value(
            name=name, type=ir.TensorType(head.dtype), shape=head.shape, const_value=head
        )
        home.register_initializer(weight)
        if self.embed_from_lm_head:
            self._gather_from(table, weight)
        return weight

    def _gather_from(self, table: ir.Value, weight: ir.Value) -> None:
        """Gather(E, ids) -> Transpose(Gather(E^T, ids, axis=1)): the same rows, from E^T."""
        for use in list(table.uses()):
            node = use.node
            ids = node.inputs[1] if len(node.inputs) > 1 else None
            if (
                node.op_type != "Gather"
                or use.idx != 0
                or node.attributes.get_int("axis", 0) != 0
                or ids is None
                or ids.shape is None
            ):
                continue
            rank = len(ids.shape)
            gather = ir.node("Gather", [weight, ids], {"axis": 1}, name=f"{node.name}_from_lm_head")
            perm = [*range(1, rank + 1), 0]
            back = ir.node(
                "Transpose", [gather.outputs[0]], {"perm": perm}, name=f"{node.name}_rows"
            )
            node.graph.insert_before(node, [gather, back])
            back.outputs[0].type = node.outputs[0].type
            back.outputs[0].shape = node.outputs[0].shape
            ir.convenience.replace_all_uses_with(node.outputs[0], back.outputs[0])
            node.graph.remove(node, safe=True)
            self.count("embedding reads lm_head")

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
