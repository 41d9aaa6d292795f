"""onnx-graphsurgeon adapter: write a graph pass with the ``gs`` API, run it like any other pass.

A ``GraphSurgeonPass`` subclass implements ``surgery(graph: gs.Graph) -> bool`` with the usual
onnx-graphsurgeon calls (``graph.nodes``, ``gs.Variable``, ``gs.Constant``, ``gs.Node``,
``graph.cleanup().toposort()``) instead of ``call(model)``. Everything else is a ``GraphPass``:
``on=[...]``, options, ``self.count``, ``--verify-each``, ``--print-changed``, ``check_pass``.

How one run works, per component:

1. The ``ir.Model`` is serialised to a ``ModelProto`` whose initializers are external-data
   *placeholders* (``location = qgraph-ir/<n>``, no bytes), so nothing is read or copied, and
   imported with ``gs.import_onnx``. Each placeholder ``gs.Constant`` holds lazy values that,
   when the surgery reads ``constant.values``, return a copy of the original onnx-ir tensor
   (only that tensor is read; the others stay memory-mapped).
2. ``surgery(graph)`` runs; its return value is a hint only.
3. ``gs.export_onnx`` gives a ``ModelProto`` again; it is deserialised, every placeholder goes
   back to its original onnx-ir tensor object, and a constant the surgery materialised but left
   equal (same name, dtype, shape and values) goes back to its original too.
4. ``modified`` is exact: the canonical text form (``qgraph.instruments.textform``) of the
   result is compared with the input's, original tensors printed by identity (no weight is
   hashed) and any other tensor by content. Unchanged: the model is left untouched, byte for
   byte (the round trip is discarded). Changed: the model takes the new graph and functions;
   model-level fields stay, and nodes that survived the surgery keep their ``metadata_props``
   and ``doc_string`` (onnx-graphsurgeon drops both; qgraph's layer roles live there).

Not carried: large tensors in node attributes (``Constant`` nodes) are serialised with their
bytes (they are small in exported models); value-level ``metadata_props``; initializers no
node reads (``gs`` drops them, which then counts as a change). ``onnx-graphsurgeon`` is an
optional extra (``pip install 'qgraph[graphsurgeon]'``), imported only when a pass runs.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx_ir as ir

from qgraph.errors import PassFailure
from qgraph.instruments.textform import TensorHasher, model_text
from qgraph.pass_api import GraphPass

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

logger = logging.getLogger(__name__)

PLACEHOLDER = "qgraph-ir/"
"""External-data location prefix of the byte-less initializers handed to onnx-graphsurgeon."""


def import_graphsurgeon() -> Any:
    """``onnx_graphsurgeon``, or a PassFailure that says how to install it."""
    try:
        import onnx_graphsurgeon
    except ImportError:
        raise PassFailure(
            "this pass needs onnx-graphsurgeon: pip install 'qgraph[graphsurgeon]' "
            "(or pip install onnx-graphsurgeon)"
        ) from None
    return onnx_graphsurgeon


@functools.cache
def _ir_values_class() -> type:
    """``gs.LazyValues`` whose ``load()`` reads the original onnx-ir tensor (defined lazily)."""
    gs = import_graphsurgeon()

    class IrValues(gs.ir.tensor.LazyValues):
        """Lazy values of a placeholder: exported as the placeholder, loaded from onnx-ir."""

        def __init__(self, proto: Any, tensor: ir.TensorProtocol) -> None:
            super().__init__(proto)
            self.ir_tensor = tensor

        def load(self) -> np.ndarray:
            return np.array(self.ir_tensor.numpy())  # a copy, as gs's own LazyValues.load

    return IrValues


class _Tokens:
    """Tensor "hashes" for the text comparison: originals by identity, anything else by content."""

    def __init__(self, originals: list[ir.TensorProtocol]) -> None:
        self._ids = {id(t): (t, f"ir{i}") for i, t in enumerate(originals)}
        self._content = TensorHasher()

    def __call__(self, t: ir.TensorProtocol) -> str:
        hit = self._ids.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        return self._content(t)


def _initializers(model: ir.Model) -> list[ir.Value]:
    return [v for g in model.graphs() for v in g.initializers.values()]


def _to_graphsurgeon(model: ir.Model, originals: list[ir.TensorProtocol]) -> gs.Graph:
    """Import ``model`` into onnx-graphsurgeon with placeholders for its initializers."""
    gs = import_graphsurgeon()
    swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []
    try:
        for value in _initializers(model):
            t = value.const_value
            if t is None or t.dtype == ir.DataType.STRING:
                continue
            swapped.append((value, t))
            value.const_value = ir.ExternalTensor(
                f"{PLACEHOLDER}{len(originals)}",
                0,
                t.nbytes,
                t.dtype,
                shape=t.shape,
                name=value.name,
            )
            originals.append(t)
        proto = ir.serde.serialize_model(model)
    finally:
        for value, t in swapped:
            value.const_value = t
    graph = gs.import_onnx(proto)
    del proto
    ir_values = _ir_values_class()
    for g in [graph, *graph.subgraphs(recursive=True)]:
        for tensor in g.tensors().values():
            index = _placeholder_index(getattr(tensor, "_values", None))
            if index is not None and not isinstance(tensor._values, ir_values):
                tensor._values = ir_values(tensor._values.tensor, originals[index])
                tensor.data_location = None  # once loaded, the values are exported inline
    return graph


def _placeholder_index(values: Any) -> int | None:
    proto = getattr(values, "tensor", None)
    for entry in getattr(proto, "external_data", ()):
        if entry.key == "location" and entry.value.startswith(PLACEHOLDER):
            return int(entry.value[len(PLACEHOLDER) :])
    return None


def _gs_node_pairs(gs_graph: gs.Graph, graph: ir.Graph) -> list[tuple[Any, ir.Node]]:
    """(gs node, ir node) pairs in export order, subgraphs included (the orders are equal)."""
    gs = import_graphsurgeon()
    pairs = []
    for gs_node, node in zip(gs_graph.nodes, graph, strict=True):
        pairs.append((gs_node, node))
        for key, attr in gs_node.attrs.items():
            if isinstance(attr, gs.Graph):
                pairs += _gs_node_pairs(attr, node.attributes[key].as_graph())
            elif isinstance(attr, list) and attr and isinstance(attr[0], gs.Graph):
                for sub, ir_sub in zip(attr, node.attributes[key].as_graphs(), strict=True):
                    pairs += _gs_node_pairs(sub, ir_sub)
    return pairs


def _empty_list_attrs(gs_graph: gs.Graph, sources: dict[int, tuple[Any, ir.Node]]) -> dict:
    """Take empty list attributes off the gs nodes (``gs.export_onnx`` cannot type them).

    Returns ``{id(gs node): (gs node, [(name, type)])}``; the type comes from the node the gs
    node was imported from, else from the operator's schema, else INTS.
    """
    gs = import_graphsurgeon()
    taken: dict[int, tuple[Any, list[tuple[str, ir.AttributeType]]]] = {}
    for g in [gs_graph, *gs_graph.subgraphs(recursive=True)]:
        for gs_node in g.nodes:
            empty = [k for k, v in gs_node.attrs.items() if isinstance(v, list) and not v]
            if not empty:
                continue
            source = sources.get(id(gs_node), (None, None))[1]
            found = []
            for key in empty:
                del gs_node.attrs[key]
                found.append((key, _attr_type(gs_node, key, source, g.opset, gs)))
            taken[id(gs_node)] = (gs_node, found)
    return taken


def _attr_type(gs_node: Any, key: str, source: ir.Node | None, opset: int, gs: Any):
    if source is not None and key in source.attributes:
        return source.attributes[key].type
    try:
        schema = onnx.defs.get_schema(gs_node.op, opset, gs_node.domain or "")
        return ir.AttributeType(int(schema.attributes[key].type))
    except (onnx.defs.SchemaError, KeyError):
        return ir.AttributeType.INTS


def _from_graphsurgeon(
    gs_graph: gs.Graph,
    originals: list[ir.TensorProtocol],
    names: dict[str, ir.TensorProtocol],
    sources: dict,
) -> ir.Model:
    """Export the surgery's graph back to onnx-ir with the original tensors in place."""
    gs = import_graphsurgeon()
    empty = _empty_list_attrs(gs_graph, sources)
    try:
        new = ir.serde.deserialize_model(gs.export_onnx(gs_graph))
    finally:
        for gs_node, found in empty.values():
            gs_node.attrs.update({key: [] for key, _ in found})
    if empty:
        for gs_node, node in _gs_node_pairs(gs_graph, new.graph):
            for key, typ in empty.get(id(gs_node), (None, ()))[1]:
                node.attributes[key] = ir.Attr(key, typ, [])
    for value in _initializers(new):
        t = value.const_value
        if isinstance(t, ir.ExternalTensor) and t.location.startswith(PLACEHOLDER):
            value.const_value = originals[int(t.location[len(PLACEHOLDER) :])]
            continue
        old = names.get(value.name)
        if old is not None and t is not None and _same_tensor(old, t):
            value.const_value = old  # materialised by the surgery but left as it was
    return new


def _same_tensor(a: ir.TensorProtocol, b: ir.TensorProtocol) -> bool:
    if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
        return False
    return (
        a.tobytes() == b.tobytes() if a.dtype.bitwidth < 8 else np.array_equal(a.numpy(), b.numpy())
    )


class GraphSurgeonPass(GraphPass):
    """A graph pass written with onnx-graphsurgeon: override ``surgery(graph) -> bool``.

    ``surgery`` edits the ``gs.Graph`` of one component in place and returns whether it meant to
    change it (a hint, logged when it disagrees; the reported ``modified`` is always the exact
    comparison). Weights are placeholders until the surgery reads ``constant.values``.
    """

    def surgery(self, graph: gs.Graph) -> bool:
        """Edit ``graph`` in place; return whether the graph was changed."""
        raise NotImplementedError(f"{type(self).__name__} must implement surgery(graph)")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        originals: list[ir.TensorProtocol] = []
        gs_graph = _to_graphsurgeon(model, originals)
        tokens = _Tokens(originals)
        before = model_text(model, tokens)
        # gs node -> the ir node it was imported from (kept alive, so ids stay unique)
        sources = {id(g): (g, n) for g, n in _gs_node_pairs(gs_graph, model.graph)}
        hint = self.surgery(gs_graph)
        names = {v.name: v.const_value for v in _initializers(model) if v.const_value is not None}
        new = _from_graphsurgeon(gs_graph, originals, names, sources)
        modified = model_text(new, tokens) != before
        if hint is not None and bool(hint) != modified:
            logger.warning(
                "%s: surgery() returned %s but the graph %s%s",
                self,
                hint,
                "changed" if modified else "did not change",
                " (gs's toposort() reorders even an unchanged graph: call cleanup().toposort() "
                "only after a change)"
                if modified
                else "",
            )
        if not modified:
            return ir.passes.PassResult(model, False)
        for gs_node, node in _gs_node_pairs(gs_graph, new.graph):
            source = sources.get(id(gs_node))
            if source is not None and source[0] is gs_node:
                node.metadata_props.update(source[1].metadata_props)
                node.doc_string = source[1].doc_string
        new.graph.metadata_props.update(model.graph.metadata_props)
        model.graph = new.graph
        model.functions.clear()
        model.functions.update(new.functions)
        return ir.passes.PassResult(model, True)
