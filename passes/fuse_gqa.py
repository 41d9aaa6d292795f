"""Causal self-attention with a KV cache -> ``com.microsoft:GroupQueryAttention``.

Rewrite (per Softmax; q, k, v in [B,H,S,D] / [B,Hkv,S,D])::

    kt = [Concat(past_k, k, axis=2)] | k            vt likewise with past_v, v
    kr = repeat_kv(kt) | kt                           Unsqueeze(2) -> Expand(n) -> Reshape, with
                                                      identity Slices anywhere in between
    p  = Softmax(scale * (q @ Transpose(kr, [0,1,3,2])) [+ causal_mask], axis=-1)
    o  = Reshape(Transpose(p @ vr, [0,2,1,3]), [B,S,H*D])
  ->
    o, kt', vt' = GroupQueryAttention(q', k', v', past_k, past_v, seqlens_k, total_len,
                                      num_heads=H, kv_num_heads=Hkv, scale)

``q'``/``k'``/``v'`` are the [B,S,H*D] views the graph already has before its head Transpose
(a rotary embedding on the [B,H,S,D] tensor is re-applied on the [B,S,H*D] view), so no copy
is added. The scale may sit on the scores (Mul/Div) or on q and k (sqrt-scale spelling).
``seqlens_k``/``total_len`` come from the shapes (past + new - 1, for every batch row) and are
computed once per graph when the dims are named. Consumers of ``kt``/``vt`` outside attention
(the stacked ``present_keys``/``present_values`` or per-layer present outputs) read the op's
present outputs, so the component's inputs and outputs keep their names, types and shapes.

The mask must be causal (bottom-right aligned): it is evaluated (once per mask tensor) with
ONNX's reference evaluator for two sets of dimension sizes, and may depend on input shapes
only. Without a mask, the site must have exactly one query (a decode step).

Does not fire (``skipped:<reason>``): non-causal or value-dependent masks (padding masks: a
2-D ``attention_mask`` could map to ``seqlens_k`` only if its ones were a prefix of each row,
i.e. right padding, which the graph cannot prove for arbitrary input values; ``fuse-mha``
takes these sites exactly, with the mask as ``attention_bias``);
no mask with several queries; query/key lengths differ (cross-attention); a past cache with
several queries unless batch is 1 (an ORT kernel limit); heads or head size not static;
attention internals used elsewhere; softmax not on the last axis.
Scope: the main graph and its subgraphs (If branches).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator

from qgraph.pass_api import GraphPass, Tolerance
from qgraph.passes._attention import Attention, find_sites, finish, fuse_site, ir_dim, lengths
from qgraph.passes._rewrite import MS, Builder, dim, same_dim, static_dim

_MAX_MASK_NODES = 300


def _dim_value(d: int | ir.SymbolicDim | None, sizes: dict[str, int]) -> int | None:
    if isinstance(d, int):
        return d
    return sizes.get(str(d)) if d is not None else None


def _mask_cone(mask: ir.Value) -> tuple[list[ir.Node], list[ir.Value]] | str:
    """Nodes computing ``mask`` back to constants and Shape/Size nodes, and the constants."""
    nodes: list[ir.Node] = []
    consts: list[ir.Value] = []
    seen: set[ir.Value] = set()
    stack = [mask]
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        if ir.convenience.get_const_tensor(v) is not None:
            consts.append(v)
            continue
        node = v.producer()
        if node is None:
            return "mask depends on input values"
        if node.domain not in ("", "ai.onnx"):
            return "mask uses non-ONNX ops"
        nodes.append(node)
        if len(nodes) > _MAX_MASK_NODES:
            return "mask computation too large to check"
        if node.op_type in ("Shape", "Size"):
            src = node.inputs[0]
            if src.shape is None or any(dim(src, i) is None for i in range(src.shape.rank())):
                return "mask depends on an unknown shape"
            continue
        stack.extend(i for i in node.inputs if i is not None)
    return nodes, consts


def _evaluate(mask: ir.Value, cone, graphs: list[ir.Graph], opset: int, sizes: dict[str, int]):
    nodes, consts = cone
    chosen = set(nodes)
    protos = []
    for node in (n for graph in graphs for n in graph):
        if node not in chosen:
            continue
        if node.op_type in ("Shape", "Size"):
            src = node.inputs[0]
            shape = [_dim_value(dim(src, i), sizes) for i in range(src.shape.rank())]
            if node.op_type == "Size":
                value = np.array(int(np.prod(shape)), dtype=np.int64)
            else:
                start = node.attributes.get("start")
                end = node.attributes.get("end")
                lo = start.as_int() if start is not None else 0
                hi = end.as_int() if end is not None else len(shape)
                value = np.array(shape[slice(lo, hi)], dtype=np.int64)
            tensor = onnx.numpy_helper.from_array(value)
            protos.append(
                onnx.helper.make_node("Constant", [], [node.outputs[0].name], value=tensor)
            )
        else:
            protos.append(ir.serde.serialize_node(node))
    inits = [ir.serde.serialize_tensor(ir.convenience.get_const_tensor(v)) for v in consts]
    for proto, v in zip(inits, consts, strict=True):
        proto.name = v.name
    out = onnx.helper.make_tensor_value_info(mask.name, onnx.TensorProto.UNDEFINED, None)
    g = onnx.helper.make_graph(protos, "mask", [], [out], initializer=inits)
    model = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", opset)])
    return np.asarray(ReferenceEvaluator(model).run(None, {})[0], dtype=np.float64)


def _is_causal(m: np.ndarray, s: int | None, t: int | None) -> bool:
    if m.ndim < 2:
        return False
    s, t = s or m.shape[-2], t or m.shape[-1]
    if t < s:
        return False
    try:
        rows = np.broadcast_to(m, (*m.shape[:-2], s, t)).reshape(-1, s, t)
    except ValueError:
        return False
    if not (rows == rows[0]).all():
        return False
    allowed = np.arange(t)[None, :] <= np.arange(s)[:, None] + (t - s)
    return bool((rows[0][allowed] == 0).all() and (rows[0][~allowed] <= -1e4).all())


def causal_reason(site: Attention, model: ir.Model) -> str | None:
    """None when the site's masking is causal attention; else why not."""
    if site.mask is None:
        return None if static_dim(site.q, 2) == 1 else "no mask and several queries"
    cone = _mask_cone(site.mask)
    if isinstance(cone, str):
        return cone
    shapes = [n.inputs[0].shape for n in cone[0] if n.op_type in ("Shape", "Size")]
    symbols = sorted({str(d) for shape in shapes for d in shape if not isinstance(d, int)})
    opset = model.opset_imports.get("", 18)
    for base in (5, 8):
        sizes = {name: base + 3 * i for i, name in enumerate(symbols)}
        try:
            graphs = [model.graph] if site.graph is model.graph else [model.graph, site.graph]
            m = _evaluate(site.mask, cone, graphs, opset, sizes)
        except Exception:
            return "mask could not be evaluated"
        s = _dim_value(dim(site.q, 2), sizes)
        t = _dim_value(dim(site.k_total, 2), sizes)
        if not _is_causal(m, s, t):
            return "mask is not causal"
    return None


class FuseGroupQueryAttention(GraphPass):
    """Causal self-attention (repeat_kv, past concat, causal mask) -> GroupQueryAttention."""

    name = "fuse-gqa"
    category = "fusion"
    tolerance = Tolerance(atol=1e-4, rtol=1e-3)
    must_follow = {
        "fuse-rotary-embedding": "the rotary fusion's output lets GQA read q/k as [B,S,H*D] "
        "without transposes"
    }

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        sites = []
        checked: dict[tuple, str | None] = {}  # layers share one mask: evaluate it once
        for site in find_sites(self, model):
            key = (site.mask, ir_dim(site.q, 2), ir_dim(site.k_total, 2))
            if key not in checked:
                checked[key] = causal_reason(site, model)
            reason = checked[key]
            if reason is None and not same_dim(site.q, 2, site.k_new, 2):
                reason = "query and key lengths differ (cross-attention)"
            if reason is None and site.past_k is not None and site.batch1_only():
                reason = "past cache with several queries needs batch 1"
            if reason is not None:
                self.count(f"skipped:{reason}", where=site.out.producer())
                continue
            sites.append(site)
        caches: dict[ir.Graph, dict] = {}  # a value computed once serves one graph only
        for site in sites:
            b = Builder()
            seqlens, total = lengths(b, site, caches.setdefault(site.graph, {}))
            q, k, v = site.bsd_inputs(b)
            out, pk, pv = b.op(
                "GroupQueryAttention",
                [q, k, v, site.past_k, site.past_v, seqlens, total],
                domain=MS,
                outputs=3,
                num_heads=site.heads,
                kv_num_heads=site.kv_heads,
                scale=float(site.scale),
            )
            fuse_site(site.graph, b, site, out, (pk, pv))
            self.count("fused")
        if sites:
            finish(model)
        return ir.passes.PassResult(model, bool(sites))
