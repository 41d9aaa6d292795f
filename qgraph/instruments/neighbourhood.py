"""Where a pass rewrote a graph: changed sites and a few nodes around each, before and after.

A node is identified by its signature (domain, op, input and output value names, simple
attributes), so a node the pass left alone has the same signature before and after; the nodes
only in the "before" graph were removed or changed, those only in "after" were added or changed.
Changed nodes that share a value form one *site*. For each site the picture keeps its changed
nodes (at most ``max_changed``) and their direct producers and consumers (context, at most
``max_context``), so a 113-site fusion of a 0.6B decoder is a few small drawings, not a graph.

Sites are stored compactly (JSON-able) in the history: ``{"nodes": [[op, name, changed], ...],
"edges": [[src, dst], ...], "more": n}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

HUB = 4
"""A value touched by more changed nodes than this does not tie them into one site."""
_SIMPLE = (ir.AttributeType.INT, ir.AttributeType.FLOAT, ir.AttributeType.STRING)


@dataclass(frozen=True)
class NodeInfo:
    """What a snapshot keeps of a node (no references to the IR, so the graph may change)."""

    op: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: str

    @property
    def signature(self) -> tuple:
        return (self.op, self.inputs, self.outputs, self.attrs)


def _key(v: ir.Value | None) -> str:
    if v is None:
        return ""
    return v.name if v.name else f"#{id(v)}"


def _op(node: ir.Node) -> str:
    if node.domain in ("", "ai.onnx"):
        return node.op_type
    return f"{node.domain.replace('com.microsoft', 'ms')}::{node.op_type}"


def snapshot(model: ir.Model) -> list[NodeInfo]:
    """Every node of the model (subgraphs included), in graph order."""
    out = []
    for node in model.graph.all_nodes():
        attrs = ",".join(
            f"{k}={a.value!r}" if a.type in _SIMPLE else f"{k}:{a.type.name}"
            for k, a in sorted(node.attributes.items())
        )
        out.append(
            NodeInfo(
                _op(node),
                node.name or "",
                tuple(_key(v) for v in node.inputs),
                tuple(_key(v) for v in node.outputs),
                attrs,
            )
        )
    return out


def _changed(a: list[NodeInfo], b: list[NodeInfo]) -> list[int]:
    """Indices of the nodes of ``a`` whose signature is not in ``b``."""
    there = {n.signature for n in b}
    return [i for i, n in enumerate(a) if n.signature not in there]


def _sites(before: list[NodeInfo], after: list[NodeInfo], gone: list[int], new: list[int]):
    """Group changed nodes of both sides that share a value (union-find). Values touched by more
    than ``HUB`` changed nodes (a shared epsilon, a cos/sin cache) do not join sites, or every
    RMSNorm of a decoder would be one site."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    items = [("b", i, before[i]) for i in gone] + [("a", i, after[i]) for i in new]
    touching: dict[str, list[str]] = {}
    for side, i, n in items:
        for v in {*n.inputs, *n.outputs}:
            if v:
                touching.setdefault(v, []).append(f"{side}{i}")
    for members in touching.values():
        if len(members) <= HUB:
            for m in members[1:]:
                parent[find(m)] = find(members[0])
    groups: dict[str, dict[str, list[int]]] = {}
    for side, i, _ in items:
        groups.setdefault(find(f"{side}{i}"), {"b": [], "a": []})[side].append(i)
    # sites with added nodes first, in graph order (that is what the pass produced)
    return sorted(
        groups.values(), key=lambda g: (min(g["a"]) if g["a"] else 1 << 30, min(g["b"] or [0]))
    )


def _picture(nodes: list[NodeInfo], changed: list[int], max_changed: int, max_context: int):
    changed = changed[:max_changed]
    chosen = set(changed)
    users: dict[str, int] = {}
    for n in nodes:
        for v in {*n.inputs, *n.outputs}:
            users[v] = users.get(v, 0) + 1
    values = {
        v
        for i in changed
        for v in (*nodes[i].inputs, *nodes[i].outputs)
        if v and users[v] <= HUB + 1  # not through a shared constant
    }
    context = []
    for i, n in enumerate(nodes):
        if i in chosen:
            continue
        if values.intersection(n.outputs) or values.intersection(n.inputs):
            context.append(i)
            if len(context) >= max_context:
                break
    keep = sorted(chosen | set(context))
    index = {i: k for k, i in enumerate(keep)}
    producer = {v: i for i in keep for v in nodes[i].outputs if v}
    edges = sorted(
        {
            (index[producer[v]], index[i])
            for i in keep
            for v in nodes[i].inputs
            if v in producer and producer[v] != i
        }
    )
    return {
        "nodes": [[nodes[i].op, nodes[i].name, i in chosen] for i in keep],
        "edges": [list(e) for e in edges],
    }


def changed_sites(
    before: list[NodeInfo],
    after: list[NodeInfo],
    *,
    max_sites: int = 2,
    max_changed: int = 14,
    max_context: int = 10,
) -> dict:
    """``{"count": sites, "sites": [{"before": picture, "after": picture}, ...]}``."""
    gone, new = _changed(before, after), _changed(after, before)
    sites = _sites(before, after, gone, new)
    out = []
    for site in sites[:max_sites]:
        out.append(
            {
                "before": _picture(before, site["b"], max_changed, max_context),
                "after": _picture(after, site["a"], max_changed, max_context),
                "removed": len(site["b"]),
                "added": len(site["a"]),
            }
        )
    return {"count": len(sites), "sites": out}
