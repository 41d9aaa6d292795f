"""MatMuls of one input by constant weights -> one MatMul on the concatenated weights + Split.

Rewrite (q/k/v projections, gate/up of a gated MLP)::

    y_i = MatMul(x, W_i) [+ b_i]            i = 1..n, W_i constant [K, N_i], b_i constant [N_i]
  ->
    y_1, ..., y_n = Split(MatMul(x, Concat(W_1..W_n, axis=1)) [+ Concat(b_1..b_n)],
                          [N_1..N_n], axis=-1)

One wide matrix-vector product replaces n narrow ones: in single-token decoding (memory-bound,
one thread-pool dispatch per MatMul) this cuts the MatMul time of the packed projections by
about a sixth on ORT CPU. The bias Adds are packed too when every sibling has one (1-D
constant, one Add as the MatMul's only consumer). The concatenated weights are new
initializers named after the first weight, computed when first read (``ir.LazyTensor``: when a
later pass quantizes them or the bundle is saved; the sources' mapped pages are let go after
each read), so packing a decoder never holds a copy of it in memory; the old ones are dropped
when nothing else reads them. Identical packs in decoder_init and decoder_step stay identical,
so ``share-weights`` still stores them once. The packed MatMul lists the module scopes of the
MatMuls it replaces in its ``qgraph.module_scopes`` metadata, so quantization roles and
exclusions (``*.layers.0.*``) still see the q/k/v or gate/up it computes.

Does not fire (``skipped:<reason>``): a sibling's result is a graph output; the weights differ
in element type. A single MatMul on an input, and MatMuls by non-constant or non-2-D weights
(attention's q @ k^T), are left alone; when only some siblings have a bias Add, the MatMuls are
packed and the Adds stay.
Scope: the main graph.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx_ir as ir

from qgraph.pass_api import GraphPass, Tolerance
from qgraph.passes._lazy import release
from qgraph.passes._rewrite import Builder, const_array, rank, remove_dead, take_over
from qgraph.passes._roles import SCOPES_KEY, module_scopes


def _weight(node: ir.Node) -> ir.TensorProtocol | None:
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
        return None
    tensor = ir.convenience.get_const_tensor(node.inputs[1])
    return tensor if tensor is not None and len(tensor.shape) == 2 else None


def _bias(node: ir.Node, width: int) -> tuple[ir.Node, np.ndarray] | None:
    """The bias Add that is the MatMul's only consumer, with its 1-D constant of ``width``."""
    users = list(node.outputs[0].uses())
    if len(users) != 1 or node.outputs[0].is_graph_output():
        return None
    add = users[0][0]
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
        return None
    other = add.inputs[1 - users[0][1]]
    arr = const_array(other)
    return (add, arr) if arr is not None and arr.shape == (width,) else None


def _side_by_side(tensors: list[ir.TensorProtocol], name: str) -> ir.LazyTensor:
    """``Concat(tensors, axis=1)``, computed when read; each source is released after it."""

    def compute() -> ir.Tensor:
        packed = np.concatenate([t.numpy() for t in tensors], axis=1)
        for t in tensors:  # no view of a source is left: unmap its pages
            release(t)
        return ir.tensor(packed, name=name)

    width = sum(t.shape[1] for t in tensors)
    shape = ir.Shape([tensors[0].shape[0], width])
    return ir.LazyTensor(compute, dtype=tensors[0].dtype, shape=shape, name=name)


def _initializer(graph: ir.Graph, name: str, tensor: ir.TensorProtocol) -> ir.Value:
    value = ir.Value(
        name=name, type=ir.TensorType(tensor.dtype), shape=tensor.shape, const_value=tensor
    )
    graph.register_initializer(value)
    return value


class FuseSiblingMatMuls(GraphPass):
    """MatMuls sharing an input (q/k/v, gate/up) -> one MatMul on concatenated weights + Split."""

    name = "fuse-sibling-matmuls"
    category = "fusion"
    reason = "low-rank factorises the plain FP32 MatMuls that a fusion would hide"
    must_follow = ("compression",)
    tolerance = Tolerance(atol=1e-5, rtol=1e-4)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        groups: dict[ir.Value, list[ir.Node]] = defaultdict(list)
        for node in graph:
            if _weight(node) is not None:
                groups[node.inputs[0]].append(node)
        fused = 0
        for x, nodes in groups.items():
            if len(nodes) < 2 or rank(x) is None or rank(x) < 2:
                continue
            if any(n.outputs[0].is_graph_output() for n in nodes):
                self.count("skipped:a sibling result is a graph output")
                continue
            if len({_weight(n).dtype for n in nodes}) > 1:
                self.count("skipped:weights differ in element type")
                continue
            self._pack(graph, x, nodes)
            fused += 1
        if fused:
            self.count("fused", fused)
            remove_dead(model)
        return ir.passes.PassResult(model, bool(fused))

    def _pack(self, graph: ir.Graph, x: ir.Value, nodes: list[ir.Node]) -> None:
        weights = [_weight(n) for n in nodes]
        widths = [w.shape[1] for w in weights]
        biases = [_bias(n, w) for n, w in zip(nodes, widths, strict=True)]
        with_bias = all(b is not None for b in biases)
        b = Builder()
        name = f"{nodes[0].inputs[1].name}.packed{len(nodes)}"
        y = b.one("MatMul", [x, _initializer(graph, name, _side_by_side(weights, name))])
        scopes = [scope for n in nodes for scope in module_scopes(n)]
        if scopes:
            y.producer().metadata_props[SCOPES_KEY] = ",".join(scopes)
        if with_bias:
            bias = np.concatenate([arr for _, arr in biases])
            y = b.one("Add", [y, _initializer(graph, f"{name}.bias", ir.tensor(bias))])
        parts = b.op("Split", [y, b.ints(widths)], axis=-1, outputs=len(nodes))
        olds = [add.outputs[0] for add, _ in biases] if with_bias else [n.outputs[0] for n in nodes]
        first = next(n for n in graph if n in set(nodes))
        b.commit(graph, first)
        for old, new in zip(olds, parts, strict=True):
            take_over(graph, old, new)
