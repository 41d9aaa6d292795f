"""Shared part of the attention fusions (``fuse-gqa``, ``fuse-mha``).

``find_sites`` anchors on every Softmax and recognises scaled-dot-product attention around it::

    p = Softmax(scale * (q @ kT) [+ mask])                 [-> Where(IsNaN(p), 0, p)]
    o = Transpose(p @ repeat_kv([Concat(past_v, v)]) [-> identity Reshape], [0,2,1,3])
        [-> Reshape to [B,S,H*D]]
    kT = Transpose(repeat_kv([Concat(past_k, k)]), [0,1,3,2])
       | Transpose(k4, [0,2,3,1])            k4 = [B,L,H,D] (TorchScript BERT / Whisper encoder)
       | Reshape(Transpose(Reshape(k, [B*H,L,D]), [0,2,1]), [B,H,D,L])       (dynamo SDPA)

returning an ``Attention`` record (or counting ``skipped:<reason>`` on the pass). The scale may be
spread over the scores, q and the transposed keys (Mul by a constant or Div by one; dynamo's SDPA
puts sqrt(scale) on q and on kT); identity Slices around ``repeat_kv`` are skipped. The reshape
spelling of kT is proven from shapes: the flattening keeps k's [L,D] whole and the result is
[B,H,D,L] with k's dims. The identity Reshape (TorchScript's SDPA lowering at opset 17 reshapes
p @ v to its own shape, read through Shape nodes) must provably keep the shape; Shape nodes
that read the site's values and feed only the site are part of it. The ``Where(IsNaN(p), 0, p)``
guard (SDPA lowerings; a fully masked row, all -inf, gives NaN probabilities) is re-applied to
the fused output as ``Where(IsNaN(o), 0, o)``: for finite q, k, v a NaN output row is exactly a
fully masked row, so the result is the same (0 there) for any mask.

Sizes computed at run time (TorchScript reads them through Shape nodes): the one unknown dim of
a head split ``Reshape(x, [B, S, -1, D])`` is solved from the element count when the others are
ints or symbols of ``x`` (``qgraph.shapes``); the head merge ``Reshape(o, [B, S, -1])`` is [B,S,H*D]
when every reader is ``MatMul(o, w)`` with H*D rows, else the merge stays in the graph after
the fused op (its output is then split back to [B,S,H,D]).

``fuse_site`` puts a fused op in place of the site: its output replaces ``o``, its present
outputs replace the concatenated caches for every consumer outside the attention (renaming
graph outputs so that the I/O stays identical), and ``finish`` sorts the graph and drops the
dead nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from qgraph.pass_api import QPass
from qgraph.passes._rewrite import (
    MS,
    Builder,
    const_ints,
    int_attr,
    ints_attr,
    is_last_axis,
    producer,
    rank,
    remove_dead,
    same_dim,
    same_shape,
    scalar,
    static_dim,
    take_over,
)

_ENDLESS = 2**31 - 1
INT32 = ir.DataType.INT32


@dataclass
class Attention:
    q: ir.Value
    k_new: ir.Value
    v_new: ir.Value
    past_k: ir.Value | None
    past_v: ir.Value | None
    k_total: ir.Value
    v_total: ir.Value
    heads: int
    kv_heads: int
    head_dim: int
    scale: float
    mask: ir.Value | None
    out: ir.Value
    out_bsd: bool
    core: set[ir.Node] = field(default_factory=set)
    k_bshd: ir.Value | None = None
    """The [B,S,H,D] keys when they reach attention through one Transpose(perm=[0,2,3,1])
    (``k_new``/``k_total`` are then a shape-only [B,H,S,D] stand-in)."""
    k_bnsh: ir.Value | None = None
    """Keys as attention reads them, [B,H,L,D] after any repeat_kv (None for ``k_bshd``)."""
    v_bnsh: ir.Value | None = None
    nan_zero: ir.Value | None = None
    """The 0 of a ``Where(IsNaN(p), 0, p)`` guard after the Softmax, re-applied to the output."""
    _bsd: tuple[ir.Value, ir.Value, ir.Value] | None = None

    @property
    def graph(self) -> ir.Graph:
        """The graph the site is in (the main graph or a subgraph, e.g. an If branch)."""
        return self.out.producer().graph

    def batch1_only(self) -> bool:
        """True when the site has several queries and a batch that is not provably 1."""
        return static_dim(self.q, 2) != 1 and static_dim(self.q, 0) != 1

    def bsd_inputs(self, b: Builder) -> tuple[ir.Value, ir.Value, ir.Value]:
        """q, k, v as [B,S,H*D] (built once)."""
        if self._bsd is None:
            k = self.k_bshd
            self._bsd = (
                to_bsd(b, self.q, self.heads),
                _merge_heads(b, k, self.kv_heads * self.head_dim)
                if k is not None
                else to_bsd(b, self.k_new, self.kv_heads),
                to_bsd(b, self.v_new, self.kv_heads),
            )
        return self._bsd


def _identity_slice(node: ir.Node) -> bool:
    if node.op_type != "Slice" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 3:
        return False
    ins = [*node.inputs[1:], None, None]
    starts, ends = const_ints(ins[0]), const_ints(ins[1])
    steps = const_ints(ins[3]) if ins[3] is not None else None
    if starts is None or ends is None or (ins[3] is not None and steps != [1] * len(starts)):
        return False
    return all(s == 0 for s in starts) and all(e >= _ENDLESS for e in ends)


def _skip_slices(v: ir.Value, core: set[ir.Node]) -> ir.Value:
    while (node := v.producer()) is not None and _identity_slice(node):
        core.add(node)
        v = node.inputs[0]
    return v


def _scale(v: ir.Value, core: set[ir.Node]) -> tuple[ir.Value, float]:
    """Peel Mul-by-constant / Div-by-constant nodes: (value before them, product of factors)."""
    factor = 1.0
    while (node := v.producer()) is not None and node.domain in ("", "ai.onnx"):
        right = scalar(node.inputs[1]) if len(node.inputs) == 2 else None
        if node.op_type == "Div" and right:
            factor, v = factor / right, node.inputs[0]
        elif node.op_type == "Mul" and right is not None:
            factor, v = factor * right, node.inputs[0]
        elif node.op_type == "Mul" and (left := scalar(node.inputs[0])) is not None:
            factor, v = factor * left, node.inputs[1]
        else:
            break
        core.add(node)
    return v, factor


def _unrepeat(v: ir.Value, core: set[ir.Node]) -> tuple[ir.Value, int]:
    """(cache, n_rep) for ``Reshape(Expand(Unsqueeze(cache, 2)))`` (repeat_kv), else (v, 1)."""
    v = _skip_slices(v, core)
    reshape = producer(v, "Reshape")
    expand = producer(_skip_slices(reshape.inputs[0], set()), "Expand") if reshape else None
    unsq = producer(_skip_slices(expand.inputs[0], set()), "Unsqueeze") if expand else None
    if unsq is None:
        return v, 1
    axes = const_ints(unsq.inputs[1]) if len(unsq.inputs) > 1 else ints_attr(unsq, "axes")
    n_rep = static_dim(expand.outputs[0], 2)
    if axes != [2] or rank(expand.outputs[0]) != 5 or rank(v) != 4 or n_rep is None:
        return v, 1
    core.update((reshape, expand, unsq))
    _skip_slices(reshape.inputs[0], core)
    _skip_slices(expand.inputs[0], core)
    return _skip_slices(unsq.inputs[0], core), n_rep


def _sole_user(v: ir.Value, op_type: str) -> ir.Node | None:
    users = list(v.uses())
    if len(users) != 1 or v.is_graph_output():
        return None
    node = users[0][0]
    return node if node.op_type == op_type and node.domain in ("", "ai.onnx") else None


def _split_past(total: ir.Value) -> tuple[ir.Value | None, ir.Value]:
    cat = producer(total, "Concat")
    if cat is None or len(cat.inputs) != 2 or int_attr(cat, "axis", 0) not in (2, -2):
        return None, total
    return cat.inputs[0], cat.inputs[1]


def _same_dims(a: ir.Value, b: ir.Value, pairs: list[tuple[int, int]]) -> bool:
    return all(same_dim(a, i, b, j) for i, j in pairs)


def _stand_in(x: ir.Value, perm: list[int]) -> ir.Value:
    """A shape-only value: ``x``'s shape permuted by ``perm``."""
    return ir.Value(shape=ir.Shape([x.shape[i] for i in perm]), type=x.type)


def _keys(kt: ir.Value, core: set[ir.Node]) -> tuple[ir.Value, ir.Value | None, float] | str:
    """The keys ([B,H,L,D]) behind ``kt`` = k^T ([B,H,D,L]), spelled as one of::

        Transpose(k, [0,1,3,2])
        Transpose(k4, [0,2,3,1])                          k4 = [B,L,H,D] (TorchScript BERT)
        Reshape(Transpose(Reshape(k, [B*H,L,D]), [0,2,1]), [B,H,D,L])    (dynamo SDPA)

    Returns (k, k4 or None, scale factor peeled below the transpose): k is a shape-only
    stand-in for the second spelling. The reshapes are proven by their output shapes: the
    flattening keeps k's [L,D] as its last two dims, and the result's first three dims are k's
    B, H, D -- its last is then L, as reshapes and transposes keep the element count (the
    TorchScript / hand-written lowering reshapes back to ``Concat(Shape(k)[:2], [D], [-1])``).
    """
    tr = producer(kt, "Transpose")
    if tr is not None and ints_attr(tr, "perm") == [0, 1, 3, 2]:
        core.add(tr)
        k, f = _scale(tr.inputs[0], core)
        return k, None, f
    if tr is not None and ints_attr(tr, "perm") == [0, 2, 3, 1] and rank(tr.inputs[0]) == 4:
        core.add(tr)
        k4, f = _scale(tr.inputs[0], core)
        if rank(k4) != 4:
            return "keys are not transposed on the last two axes"
        return _stand_in(k4, [0, 2, 1, 3]), k4, f
    r2 = producer(kt, "Reshape")
    t = producer(r2.inputs[0], "Transpose") if r2 is not None else None
    r1 = (
        producer(t.inputs[0], "Reshape")
        if t is not None and ints_attr(t, "perm") == [0, 2, 1]
        else None
    )
    if r1 is None:
        return "keys are not transposed on the last two axes"
    k, f = _scale(r1.inputs[0], set())
    flat, back = r1.outputs[0], r2.outputs[0]
    if not (
        rank(k) == 4
        and rank(flat) == 3
        and rank(back) == 4
        and _same_dims(flat, k, [(1, 2), (2, 3)])
        and _same_dims(back, k, [(0, 0), (1, 1), (2, 3)])
    ):
        return "keys are not provably transposed through reshapes"
    core.update((r2, t, r1))
    _scale(r1.inputs[0], core)
    return k, None, f


def _nan_guard(sm: ir.Node) -> tuple[ir.Node, ir.Node, ir.Value] | None:
    """``Where(IsNaN(p), 0, p)`` on the probabilities (TorchScript and dynamo SDPA):
    (IsNaN, Where, the 0) when the Softmax output feeds exactly that."""
    p = sm.outputs[0]
    users = {u.op_type: u for u, _ in p.uses() if u.domain in ("", "ai.onnx")}
    isnan, where = users.get("IsNaN"), users.get("Where")
    if len(p.uses()) != 2 or isnan is None or where is None or p.is_graph_output():
        return None
    zero = where.inputs[1]
    if list(where.inputs) != [isnan.outputs[0], zero, p] or scalar(zero) != 0.0:
        return None
    if len(isnan.outputs[0].uses()) != 1 or isnan.outputs[0].is_graph_output():
        return None
    return isnan, where, zero


def _absorb_shape_reads(core: set[ir.Node], limit: int = 16) -> None:
    """Add to ``core`` the Shape nodes reading its values whose results flow only into ``core``
    (TorchScript's SDPA lowering reads q/v/p@v shapes to build an identity Reshape): they die
    with the site."""
    for node in list(core):
        for o in node.outputs:
            for user, _ in list(o.uses()):
                if user in core or user.op_type != "Shape":
                    continue
                cone, stack = set(), [user]
                while stack and len(cone) <= limit:
                    n = stack.pop()
                    if n in cone or n in core:
                        continue
                    cone.add(n)
                    if any(v.is_graph_output() for v in n.outputs):
                        cone.add(node)  # poison: a graph output is not core
                        break
                    stack.extend(u for v in n.outputs for u, _ in v.uses())
                if len(cone) <= limit and node not in cone:
                    core |= cone


def _skip_identity_reshape(v: ir.Value, core: set[ir.Node]) -> ir.Value:
    """``v`` through a Reshape whose output provably has ``v``'s shape (TorchScript's SDPA
    lowering reshapes p @ v to [B,-1,S,D] from shapes it reads); ``v``'s other readers must be
    Shape nodes (``_absorb_shape_reads`` checks where they lead)."""
    users = [u for u, _ in v.uses()]
    reshapes = [u for u in users if u.op_type == "Reshape" and u.inputs[0] is v]
    if len(reshapes) != 1 or v.is_graph_output() or not same_shape(reshapes[0].outputs[0], v):
        return v
    if any(u is not reshapes[0] and u.op_type != "Shape" for u in users):
        return v
    core.add(reshapes[0])
    return reshapes[0].outputs[0]


def _projected_width(o: ir.Value) -> int | None:
    """The last dim of ``o`` proven by its readers: every one is ``MatMul(o, w)`` with a 2-D
    ``w`` of static rows, which only runs when ``o``'s last dim is that (TorchScript merges
    heads with ``Reshape([B, S, -1])`` read through Shape nodes, then projects)."""
    rows = set()
    for user, index in o.uses():
        w = user.inputs[1] if len(user.inputs) == 2 else None
        if user.op_type != "MatMul" or user.domain not in ("", "ai.onnx") or index != 0:
            return None
        if w is None or rank(w) != 2 or static_dim(w, 0) is None:
            return None
        rows.add(static_dim(w, 0))
    return rows.pop() if len(rows) == 1 and not o.is_graph_output() else None


def match(sm: ir.Node) -> Attention | str:
    """The attention site around Softmax ``sm``, or why there is none."""
    if not is_last_axis(int_attr(sm, "axis", -1), rank(sm.inputs[0])):
        return "softmax is not over the last axis"
    core, x, mask = {sm}, sm.inputs[0], None
    if (add := producer(x, "Add")) is not None:
        for i in (0, 1):
            if producer(_scale(add.inputs[i], set())[0], "MatMul") is not None:
                x, mask = add.inputs[i], add.inputs[1 - i]
                core.add(add)
                break
    x, scale = _scale(x, core)
    mm = producer(x, "MatMul")
    if mm is None:
        return "softmax input is not q @ k^T"
    core.add(mm)
    q, f1 = _scale(mm.inputs[0], core)
    kt, f2 = _scale(mm.inputs[1], core)
    keys = _keys(kt, core)
    if isinstance(keys, str):
        return keys
    kr, k_bshd, f3 = keys
    k_total, n_rep = _unrepeat(kr, core) if k_bshd is None else (kr, 1)
    p, nan_zero = sm.outputs[0], None
    if (guard := _nan_guard(sm)) is not None:
        core.update(guard[:2])
        p, nan_zero = guard[1].outputs[0], guard[2]
    pv = _sole_user(p, "MatMul")
    if pv is None or pv.inputs[0] is not p:
        return "probabilities do not feed a single p @ v"
    core.add(pv)
    v_total, n_rep_v = _unrepeat(pv.inputs[1], core)
    back = _sole_user(_skip_identity_reshape(pv.outputs[0], core), "Transpose")
    if back is None or ints_attr(back, "perm") != [0, 2, 1, 3]:
        return "output is not transposed back to [B,S,H,D]"
    core.add(back)
    out, out_bsd = back.outputs[0], False
    merge = _sole_user(out, "Reshape")
    if merge is not None:
        o = merge.outputs[0]
        if rank(o) == 3 and same_dim(o, 0, q, 0) and same_dim(o, 1, q, 2):
            core.add(merge)
            out, out_bsd = o, True
    past_k, k_new = _split_past(k_total)
    past_v, v_new = _split_past(v_total)
    heads, head_dim, kv_heads = static_dim(q, 1), static_dim(q, 3), static_dim(k_new, 1)
    if None in (heads, head_dim, kv_heads) or any(rank(t) != 4 for t in (q, k_new, v_new)):
        return "heads or head size not static"
    if (past_k is None) != (past_v is None) or n_rep != n_rep_v or heads != kv_heads * n_rep:
        return "keys and values are not cached and repeated alike"
    if out_bsd and static_dim(out, 2) is None and _projected_width(out) == heads * head_dim:
        out.shape = ir.Shape([out.shape[0], out.shape[1], heads * head_dim])
    if out_bsd and static_dim(out, 2) is None:  # keep the graph's merge Reshape after the op
        core.discard(merge)
        out, out_bsd = back.outputs[0], False
    if out_bsd and static_dim(out, 2) != heads * head_dim:
        return "output is not reshaped to [B,S,H*D]"
    if not all(static_dim(t, -1) == head_dim for t in (k_new, v_new)):
        return "head sizes of q, k and v differ"
    if not all(static_dim(t, 1) == kv_heads for t in (v_new, past_k, past_v) if t is not None):
        return "head counts of the caches differ"
    _absorb_shape_reads(core)
    for node in core:
        for o in node.outputs:
            if o is not out and (o.is_graph_output() or any(u not in core for u, _ in o.uses())):
                return "attention internals are used elsewhere"
    scale *= f1 * f2 * f3
    return Attention(
        q, k_new, v_new, past_k, past_v, k_total, v_total, heads, kv_heads, head_dim, scale,
        mask, out, out_bsd, core, k_bshd, kr if k_bshd is None else None, pv.inputs[1], nan_zero,
    )  # fmt: skip


def find_sites(p: QPass, model: ir.Model) -> list[Attention]:
    """Every attention site of the model's graphs (subgraphs included: If branches of a merged
    decoder); counts near misses on ``p``."""
    sites = []
    for graph in model.graphs():
        for node in graph:
            if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
                continue
            site = match(node)
            if isinstance(site, str):
                p.count(f"skipped:{site}", where=node)
            else:
                sites.append(site)
    return sites


# -- rewriting ------------------------------------------------------------------------------------
def _merge_heads(b: Builder, y: ir.Value, width: int) -> ir.Value:
    """[B,S,H,D] -> [B,S,H*D], reusing the [B,S,H*D] tensor a head-split Reshape came from."""
    split = producer(y, "Reshape")
    if split is not None:
        x = split.inputs[0]
        same_lead = same_dim(x, 0, y, 0) and same_dim(x, 1, y, 1)
        if rank(x) == 3 and static_dim(x, 2) == width and same_lead:
            return x
    return b.one("Reshape", [y, b.ints([0, 0, -1])])


def to_bsd(b: Builder, v: ir.Value, heads: int) -> ir.Value:
    """A [B,H,S,D] value as [B,S,H*D] with the fewest new nodes."""
    width = heads * static_dim(v, 3)
    node = v.producer()
    if node is not None and node.op_type == "Transpose" and ints_attr(node, "perm") == [0, 2, 1, 3]:
        return _merge_heads(b, node.inputs[0], width)
    inner = node.inputs[0].producer() if node is not None and node.inputs else None
    if (
        node is not None
        and (node.domain, node.op_type) == (MS, "RotaryEmbedding")
        and inner is not None
        and inner.op_type == "Transpose"
        and ints_attr(inner, "perm") == [0, 2, 1, 3]
    ):
        attrs = {k: a for k, a in node.attributes.items() if k != "num_heads"}
        x3 = _merge_heads(b, inner.inputs[0], width)
        return b.one("RotaryEmbedding", [x3, *node.inputs[1:]], domain=MS, num_heads=heads, **attrs)
    t = b.one("Transpose", [v], perm=[0, 2, 1, 3])
    return b.one("Reshape", [t, b.ints([0, 0, -1])])


def lengths(b: Builder, site: Attention, cache: dict) -> tuple[ir.Value, ir.Value]:
    """GQA's seqlens_k (int32 [B], total - 1) and total_sequence_length (int32 scalar)."""
    dims = (ir_dim(site.q, 0), ir_dim(site.k_new, 2), ir_dim(site.past_k, 2))
    key = dims if None not in dims[:2] and (site.past_k is None or dims[2] is not None) else None
    if key is not None and key in cache:
        return cache[key]
    q, k, _ = site.bsd_inputs(b)
    fixed = (static_dim(site.k_new, 2), static_dim(site.past_k, 2) if site.past_k else 0)
    batch = static_dim(site.q, 0)
    if None not in fixed and batch is not None:
        t = sum(fixed)
        seqlens = b.one("Constant", [], value=ir.tensor(np.full(batch, t - 1, np.int32)))
        total32 = b.one("Constant", [], value=ir.tensor(np.int32(t)))
    else:
        total = b.shape(k, 1, 2, known=_bsd_shape(site.k_new))
        if site.past_k is not None:
            total = b.one("Add", [b.shape(site.past_k, 2, 3), total])
        last = b.one("Sub", [total, b.ints([1])])
        rows = b.shape(q, 0, 1, known=site.q)
        seqlens = b.one("Cast", [b.one("Expand", [last, rows])], to=INT32)
        total32 = b.one("Cast", [b.one("Reshape", [total, b.ints([])])], to=INT32)
    if key is not None:
        cache[key] = (seqlens, total32)
    return seqlens, total32


def _bsd_shape(v: ir.Value) -> ir.Value:
    """A shape-only stand-in for the [B,S,H*D] view of a [B,H,S,D] value."""
    dims = list(v.shape) if v.shape is not None and v.shape.rank() == 4 else None
    shape = None if dims is None else ir.Shape([dims[0], dims[2], None])
    return ir.Value(shape=shape)


def ir_dim(v: ir.Value | None, axis: int) -> str | None:
    """A hashable name for a dimension that is provably shared (int or named symbol)."""
    if v is None or v.shape is None or axis >= v.shape.rank():
        return None
    d = v.shape[axis]
    return str(d) if isinstance(d, int) or d.value is not None else None


def fuse_site(
    graph: ir.Graph,
    b: Builder,
    site: Attention,
    out: ir.Value,
    presents: tuple[ir.Value, ir.Value] | None = None,
) -> None:
    """Insert ``b``'s nodes before the site's output and rewire consumers to the fused op."""
    if site.nan_zero is not None:
        out = b.one("Where", [b.one("IsNaN", [out]), site.nan_zero, out])
    if not site.out_bsd:
        out = b.one("Reshape", [out, b.ints([0, 0, site.heads, site.head_dim])])
    keep = site.core | set(b.nodes)
    b.commit(graph, site.out.producer())
    take_over(graph, site.out, out, keep)
    for old, new in zip((site.k_total, site.v_total), presents or (), strict=False):
        take_over(graph, old, new, keep)


def finish(model: ir.Model) -> None:
    for graph in model.graphs():
        graph.sort()
    remove_dead(model)
