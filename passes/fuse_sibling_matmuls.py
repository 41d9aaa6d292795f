"""MatMuls of one input by constant weights -> one MatMul on the concatenated weights + Split.

Rewrite (q/k/v projections, gate/up of a gated MLP)::

    y_i = MatMul(x, W_i) [+ b_i]            i = 1..n, W_i constant [K, N_i], b_i constant [N_i]
  ->
    y_1, ..., y_n = Split(MatMul(x, Concat(W_1..W_n, axis=1)) [+ Concat(b_1..b_n)],
                          [N_1..N_n], axis=-1)

One wide matrix-vector product replaces n narrow ones: in single-token decoding (memory-bound, one
thread-pool dispatch per MatMul) this cuts the MatMul time of the packed projections by about a
sixth on ORT CPU. The bias Adds are packed too when every sibling has one (1-D constant, one Add as
the MatMul's only consumer). The concatenated weights are new initializers named after the weights
they pack (``...self_attn.q_proj.weight``, ``k_proj``, ``v_proj`` ->
``...self_attn.qkv_proj.weight``; ``gate_proj``/``up_proj`` -> ``gate_up_proj``; the biases
likewise; names that do not differ in one ``_``-suffixed part give ``<first weight>.packed<n>`` and
``<packed weight>.bias``), computed when first read (``ir.LazyTensor``: when a later pass quantizes
them or the bundle is saved; the sources' mapped pages are let go after each read), so packing a
decoder never holds a copy of it in memory; the old ones are dropped when nothing else reads them
(a use in any graph, subgraphs included, keeps them). Identical packs in decoder_init and
decoder_step stay identical, so ``share-weights`` still stores them once. The packed MatMul lists
the module scopes of the MatMuls it replaces in its ``qgraph.module_scopes`` metadata, so
quantization roles and exclusions (``*.layers.0.*``) still see the q/k/v or gate/up it computes.

Does not fire (``skipped:<reason>``): a sibling's result is a graph output (an ``If`` branch's
output included); the weights differ in element type. A single MatMul on an input, and MatMuls
by non-constant or non-2-D weights (attention's q @ k^T), and siblings whose input has no known
rank of at least 2 (a branch value without shape information) are left alone; when only some
siblings have a bias Add, the MatMuls are packed and the Adds stay. Siblings are MatMuls of one
graph: MatMuls of the same input in two branches are not packed together.
Scope: the main graph and its subgraphs. Inside an ``If`` branch (Whisper's
``decoder_model_merged``) the siblings are packed in their branch; when their weights (or
biases) are initializers of one graph, the packed initializer goes to that graph (the top-level
graph for weights both branches read), and the same weights in the same order packed in another
branch read that same initializer, so it is computed and stored once. Weights from Constant
nodes or from several graphs are packed into the siblings' own graph. New values get names
that are free in the whole model (a branch cannot shadow an outer-scope name).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from qgraph.pass_api import GraphPass, Tolerance
from qgraph.passes._lazy import release
from qgraph.passes._rewrite import (
    Builder,
    const_array,
    fresh_name,
    merged_name,
    rank,
    remove_dead,
    take_over,
    value_names,
)
from qgraph.passes._roles import SCOPES_KEY, module_scopes


def _weight(node: ir.Node) -> ir.TensorProtocol | None:
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
        return None
    tensor = ir.convenience.get_const_tensor(node.inputs[1])
    return tensor if tensor is not None and len(tensor.shape) == 2 else None


def _bias(node: ir.Node, width: int) -> tuple[ir.Node, ir.Value, np.ndarray] | None:
    """The bias Add that is the MatMul's only consumer, with its 1-D constant of ``width``."""
    users = list(node.outputs[0].uses())
    if len(users) != 1 or node.outputs[0].is_graph_output():
        return None
    add = users[0][0]
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
        return None
    other = add.inputs[1 - users[0][1]]
    arr = const_array(other)
    return (add, other, arr) if arr is not None and arr.shape == (width,) else None


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


def _home(sources: list[ir.Value], graph: ir.Graph) -> ir.Graph:
    """The graph whose initializers all ``sources`` are, else ``graph`` (the siblings' own)."""
    homes = {v.graph for v in sources if v.is_initializer()}
    if len(homes) == 1 and all(v.is_initializer() for v in sources):
        return homes.pop()
    return graph


class FuseSiblingMatMuls(GraphPass):
    """MatMuls sharing an input (q/k/v, gate/up) -> one MatMul on concatenated weights + Split."""

    name = "fuse-sibling-matmuls"
    category = "fusion"
    tolerance = Tolerance(atol=1e-5, rtol=1e-4)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        groups: dict[tuple[ir.Graph, ir.Value], list[ir.Node]] = defaultdict(list)
        for node in model.graph.all_nodes():
            if _weight(node) is not None:
                groups[(node.graph, node.inputs[0])].append(node)
        packer = _Packer(model)
        fused = 0
        for (graph, x), nodes in groups.items():
            if len(nodes) < 2 or rank(x) is None or rank(x) < 2:
                continue
            if any(n.outputs[0].is_graph_output() for n in nodes):
                self.count("skipped:a sibling result is a graph output", where=nodes[0])
                continue
            if len({_weight(n).dtype for n in nodes}) > 1:
                self.count("skipped:weights differ in element type", where=nodes[0])
                continue
            packer.pack(graph, nodes)
            fused += 1
        if fused:
            self.count("fused", fused)
            remove_dead(model)  # drops unused top-level initializers; uses in branches count
            packer.drop_unused_sources()
        return ir.passes.PassResult(model, bool(fused))


class _Packer:
    """Packs sibling groups of one model; each set of source constants is packed once."""

    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self.names: set[str] | None = None
        self.packed: dict[tuple[ir.Value, ...], ir.Value] = {}
        self.sources: list[ir.Value] = []

    def fresh(self, base: str) -> str:
        """``base``, or ``base`` with a numeric suffix, unused by any value of the model."""
        if self.names is None:
            self.names = value_names(self.model)
        return fresh_name(base, self.names)

    def initializer(
        self,
        key: tuple[ir.Value, ...],
        home: ir.Graph,
        base: str,
        make: Callable[[str], ir.TensorProtocol],
    ) -> ir.Value:
        """The packed initializer of the sources ``key``, registered in ``home`` once."""
        if key in self.packed:
            return self.packed[key]
        name = self.fresh(base)
        tensor = make(name)
        value = ir.Value(
            name=name, type=ir.TensorType(tensor.dtype), shape=tensor.shape, const_value=tensor
        )
        home.register_initializer(value)
        self.packed[key] = value
        return value

    def pack(self, graph: ir.Graph, nodes: list[ir.Node]) -> None:
        """Replace the siblings ``nodes`` of ``graph`` by one MatMul (+ Add) and a Split."""
        x = nodes[0].inputs[0]  # a group packed before may have re-pointed it
        sources = [n.inputs[1] for n in nodes]
        weights = [_weight(n) for n in nodes]
        widths = [w.shape[1] for w in weights]
        biases = [_bias(n, w) for n, w in zip(nodes, widths, strict=True)]
        with_bias = all(b is not None for b in biases)
        packed = self.initializer(
            tuple(sources),
            _home(sources, graph),
            merged_name([v.name or "" for v in sources]) or f"{sources[0].name}.packed{len(nodes)}",
            lambda name: _side_by_side(weights, name),
        )
        self.sources += sources
        b = Builder()
        y = b.one("MatMul", [x, packed])
        scopes = [scope for n in nodes for scope in module_scopes(n)]
        if scopes:
            y.producer().metadata_props[SCOPES_KEY] = ",".join(scopes)
        olds = [n.outputs[0] for n in nodes]
        if with_bias:
            values = [v for _, v, _ in biases]
            arr = np.concatenate([a for _, _, a in biases])
            bias = self.initializer(
                (packed, *values),
                _home(values, graph),
                merged_name([v.name or "" for v in values]) or f"{packed.name}.bias",
                lambda name: ir.tensor(arr, name=name),
            )
            self.sources += values
            y = b.one("Add", [y, bias])
            olds = [add.outputs[0] for add, _, _ in biases]
        parts = b.op("Split", [y, b.ints(widths)], axis=-1, outputs=len(nodes))
        for node in b.nodes:  # named here: a branch's own namer does not see the outer names
            for out in node.outputs:
                out.name = self.fresh(f"{packed.name}/{node.op_type}")
        first = next(n for n in graph if n in set(nodes))
        b.commit(graph, first)
        for old, new in zip(olds, parts, strict=True):
            take_over(graph, old, new)

    def drop_unused_sources(self) -> None:
        """Source initializers of subgraphs that nothing reads any more (``remove_dead`` only
        drops the main graph's)."""
        for value in self.sources:
            home = value.graph
            if (
                value.is_initializer()
                and not value.uses()
                and not value.is_graph_output()
                and not value.is_graph_input()
                and home.initializers.get(value.name) is value
            ):
                home.initializers.pop(value.name)
