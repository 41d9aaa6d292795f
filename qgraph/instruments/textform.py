"""Canonical text of a component, for diffs and dumps: one line per node, no weight bytes.

Initializers are summarised as ``dtype[shape] #hash`` (a content hash, cached per tensor object
so each weight is hashed once per run); graph inputs/outputs carry their types. Subgraphs are
indented under the node that owns them. The same model always prints the same text.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir


class TensorHasher:
    """Content hashes of tensors, computed once per tensor object."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[object, str]] = {}

    def __call__(self, t: ir.TensorProtocol) -> str:
        hit = self._cache.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        h = hashlib.blake2b(digest_size=6)
        if t.dtype.bitwidth < 8 or t.dtype == ir.DataType.STRING:
            h.update(t.tobytes())
        else:
            buf = np.ascontiguousarray(t.numpy()).reshape(-1).view(np.uint8)
            for start in range(0, buf.size, 1 << 26):
                h.update(memoryview(buf[start : start + (1 << 26)]))
        digest = h.hexdigest()
        self._cache[id(t)] = (t, digest)
        return digest


def _type(v: ir.Value) -> str:
    dtype = v.dtype.name if v.dtype is not None else "?"
    if v.shape is None:
        return dtype
    return f"{dtype}[{','.join(str(d) for d in v.shape)}]"


def _name(v: ir.Value | None) -> str:
    return "" if v is None else f"%{v.name}"


def _attr(a: ir.Attr, hasher: TensorHasher, indent: str) -> str:
    t = a.type
    if t == ir.AttributeType.TENSOR:
        tensor = a.as_tensor()
        return f"{tensor.dtype.name}[{','.join(map(str, tensor.shape))}] #{hasher(tensor)}"
    if t in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
        graphs = [a.as_graph()] if t == ir.AttributeType.GRAPH else a.as_graphs()
        return " ".join(
            "{\n" + graph_text(g, hasher, indent + "    ") + indent + "}" for g in graphs
        )
    if t == ir.AttributeType.FLOAT:
        return repr(a.as_float())
    if t == ir.AttributeType.STRING:
        return repr(a.as_string())
    return str(a.value)


def graph_text(graph: ir.Graph, hasher: TensorHasher, indent: str = "") -> str:
    lines = [f"{indent}input {_name(v)}: {_type(v)}" for v in graph.inputs]
    for name in sorted(graph.initializers):
        t = graph.initializers[name].const_value
        if t is None:
            lines.append(f"{indent}init %{name}: (no value)")
        else:
            lines.append(
                f"{indent}init %{name}: {t.dtype.name}[{','.join(map(str, t.shape))}] #{hasher(t)}"
            )
    for node in graph:
        outs = ", ".join(_name(v) for v in node.outputs)
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        ins = ", ".join(_name(v) for v in node.inputs)
        attrs = ", ".join(
            f"{k}={_attr(a, hasher, indent)}" for k, a in sorted(node.attributes.items())
        )
        lines.append(f"{indent}{outs} = {op}({ins})" + (f" {{{attrs}}}" if attrs else ""))
    lines += [f"{indent}output {_name(v)}: {_type(v)}" for v in graph.outputs]
    return "\n".join(lines) + "\n"


def model_text(model: ir.Model, hasher: TensorHasher) -> str:
    opsets = ", ".join(f"{d or 'ai.onnx'}:{v}" for d, v in sorted(model.opset_imports.items()))
    return f"opsets {opsets}\n" + graph_text(model.graph, hasher)


@dataclass
class Facts:
    """Counts used by the one-line diff summary."""

    ops: Counter
    nodes: int
    initializers: int
    bytes: int

    @classmethod
    def of(cls, model: ir.Model) -> Facts:
        ops: Counter = Counter()
        nodes = 0
        for node in model.graph.all_nodes():
            nodes += 1
            ops[
                node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
            ] += 1
        inits = [v for g in model.graphs() for v in g.initializers.values()]
        size = sum(v.const_value.nbytes for v in inits if v.const_value is not None)
        return cls(ops, nodes, len(inits), size)
