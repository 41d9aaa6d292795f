"""``static-kv-cache`` on a merged decoder (Whisper's ``decoder_model_merged``): the rewrite.

The pass module (``static_kv_cache.py``) documents the layout; this module holds the If-branch
surgery. Names follow optimum's Whisper export: self-attention caches
``past_key_values.{i}.decoder.{key,value}`` / ``present.{i}.decoder.{key,value}``; the
cross-attention caches (``.encoder.``) are not touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import onnx_ir as ir

from qgraph.passes._attention import finish, to_bsd
from qgraph.passes._rewrite import MS, Builder, fresh_name, scalar, static_dim, value_names

USE_CACHE = "use_cache_branch"
SELF_PAST = re.compile(r"past_key_values\.(\d+)\.decoder\.(key|value)")
KINDS = ("key", "value")
POSITIONS = "position_ids"


@dataclass
class _Layer:
    index: int
    past: tuple[ir.Value, ir.Value]
    """The graph inputs past_key_values.{i}.decoder.key / .value."""
    slot: tuple[int, int]
    """Their presents' output index on the If (and in each branch)."""
    cached: ir.Node
    """The cached branch's MultiHeadAttention."""
    concats: tuple[ir.Node, ir.Node]
    """The cached branch's Concat(past, new, axis=2) of keys and values."""
    prompt: ir.Node
    """The prompt branch's GroupQueryAttention."""


def cache_if(graph: ir.Graph) -> ir.Node | None:
    """The main graph's ``If`` on the ``use_cache_branch`` input, if any."""
    for node in graph:
        cond = node.inputs[0] if node.op_type == "If" and node.inputs else None
        if cond is not None and cond.name == USE_CACHE and cond.is_graph_input():
            return node
    return None


def self_pasts(graph: ir.Graph) -> dict[tuple[int, str], ir.Value]:
    """``(layer, kind) -> past_key_values.{layer}.decoder.{kind}`` graph inputs."""
    out = {}
    for v in graph.inputs:
        m = SELF_PAST.fullmatch(v.name or "")
        if m:
            out[int(m.group(1)), m.group(2)] = v
    return out


def _reads(graph: ir.Graph, values: set[ir.Value]) -> bool:
    return any(i in values for n in graph for i in n.inputs if i is not None)


def _q_and_scale(q: ir.Value, scale: float) -> tuple[ir.Value, float]:
    """Fold a ``Mul(x, c)`` on the query (Whisper scales q by head_dim**-0.5 after the
    projection) into the op's scale: ``(x, scale * c)`` when only the op reads it."""
    node = q.producer()
    if node is None or node.op_type != "Mul" or len(list(q.uses())) != 1:
        return q, scale
    for a, b in ((0, 1), (1, 0)):
        c = scalar(node.inputs[b])
        if c is not None and c > 0 and node.inputs[a] is not None:
            return node.inputs[a], scale * c
    return q, scale


def _gqa_scale(node: ir.Node, head_dim: int) -> float:
    attr = node.attributes.get("scale")
    value = attr.as_float() if attr is not None else 0.0
    return value if value != 0.0 else float(head_dim) ** -0.5


def find_layers(model: ir.Model, iff: ir.Node) -> list[_Layer] | str:
    """Per layer: the cached branch's self-attention and the prompt branch's, or a reason."""
    from qgraph.passes.fuse_gqa import causal_reason

    graph = model.graph
    pasts = self_pasts(graph)
    if not pasts:
        return "no past_key_values.{i}.decoder.* inputs"
    branches = [iff.attributes[k].as_graph() for k in ("then_branch", "else_branch")]
    values = set(pasts.values())
    reading = [g for g in branches if _reads(g, values)]
    if len(reading) != 1:
        return "not exactly one If branch reads the self-attention past"
    cached = reading[0]
    prompt = branches[1] if cached is branches[0] else branches[0]
    outputs = [v.name for v in iff.outputs]
    layers: list[_Layer] = []
    checked: dict[ir.Value | None, str | None] = {}
    for i in sorted({i for i, _ in pasts}):
        past = (pasts.get((i, "key")), pasts.get((i, "value")))
        if past[0] is None or past[1] is None:
            return f"layer {i} lacks a key or value past"
        try:
            slot = tuple(outputs.index(f"present.{i}.decoder.{kind}") for kind in KINDS)
        except ValueError:
            return f"no output present.{i}.decoder.*"
        concats = []
        for k, value in enumerate(past):
            users = [(n, j) for n, j in value.uses() if n.op_type != "Shape"]
            if len(users) != 1 or users[0][1] != 0 or users[0][0].op_type != "Concat":
                return "past not read by one Concat (and Shape nodes)"
            concat = users[0][0]
            axis = concat.attributes.get("axis")
            if axis is None or axis.as_int() != 2 or len(concat.inputs) != 2:
                return "past not concatenated on axis 2"
            if cached.outputs[slot[k]] is not concat.outputs[0]:
                return "concatenated cache is not the branch's present"
            concats.append(concat)
        mha = [
            n
            for n, _ in concats[0].outputs[0].uses()
            if n.op_type == "MultiHeadAttention" and n.domain == MS
        ]
        if len(mha) != 1:
            return "cached self-attention is not one MultiHeadAttention"
        node = mha[0]
        extra = [node.inputs[j] for j in (3, 4, 6, 7) if j < len(node.inputs)]
        if (
            len(node.inputs) < 3
            or node.inputs[1] is not concats[0].outputs[0]
            or node.inputs[2] is not concats[1].outputs[0]
            or any(v is not None for v in extra)
            or len(node.outputs) != 1
        ):
            return "cached MultiHeadAttention reads other inputs than q, the caches and a mask"
        for concat in concats:
            if len(list(concat.outputs[0].uses())) != 1:
                return "concatenated cache read by other nodes"
        heads = node.attributes.get("num_heads")
        head_dim = static_dim(past[0], 3)
        if heads is None or static_dim(past[0], 1) != heads.as_int() or head_dim is None:
            return "heads or head size not static"
        mask = node.inputs[5] if len(node.inputs) > 5 else None
        if mask not in checked:
            seq = concats[0].inputs[1]  # [B,H,S,D]: dim 2 is the query length
            site = SimpleNamespace(mask=mask, q=seq, k_total=concats[0].outputs[0], graph=cached)
            checked[mask] = causal_reason(site, model)  # type: ignore[arg-type]
        if checked[mask] is not None:
            return f"cached self-attention: {checked[mask]}"
        producers = [prompt.outputs[s].producer() for s in slot]
        gqa = producers[0]
        if (
            gqa is None
            or gqa is not producers[1]
            or (gqa.domain, gqa.op_type) != (MS, "GroupQueryAttention")
            or gqa.outputs[1] is not prompt.outputs[slot[0]]
            or gqa.outputs[2] is not prompt.outputs[slot[1]]
            or len(gqa.inputs) != 7
            or gqa.inputs[3] is not None
            or gqa.inputs[4] is not None
        ):
            return "prompt self-attention is not a GroupQueryAttention without past"
        layers.append(_Layer(i, past, slot, node, tuple(concats), gqa))  # type: ignore[arg-type]
    return layers


def rewrite(model: ir.Model, iff: ir.Node, layers: list[_Layer], max_len: int) -> None:
    """Both branches' self-attention -> GroupQueryAttention on shared static buffers."""
    graph = model.graph
    ids = next(v for v in graph.inputs if v.name == "input_ids")
    positions = ir.Value(
        name=POSITIONS, type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape(list(ids.shape))
    )
    graph.inputs.insert(list(graph.inputs).index(ids) + 1, positions)

    b = Builder()
    last = b.one("ReduceMax", [positions, b.ints([1])], keepdims=0)
    seqlens = b.one("Cast", [last], to=ir.DataType.INT32)
    top = b.one("ReduceMax", [positions], keepdims=0)
    total = b.one("Cast", [b.one("Add", [top, b.ints([1])])], to=ir.DataType.INT32)
    first = b.one("ReduceMin", [positions], keepdims=0)
    past_len = b.one("Reshape", [first, b.ints([1])])
    seqlens.name, total.name = "kv_seqlens_k", "kv_total_sequence_length"
    past_len.name = "kv_past_length"
    keep = {seqlens.name, total.name, past_len.name}
    new = list(b.nodes)
    b.commit(graph, iff)

    for layer in layers:
        new += _replace_shapes(layer, past_len)
        mha = layer.cached
        cached = mha.graph
        assert cached is not None
        heads = mha.attributes["num_heads"].as_int()
        head_dim = static_dim(layer.past[0], 3)
        assert head_dim is not None
        q, scale = _q_and_scale(mha.inputs[0], _gqa_scale(mha, head_dim))
        b = Builder()
        k, v = (to_bsd(b, c.inputs[1], heads) for c in layer.concats)
        out, pk, pv = b.op(
            "GroupQueryAttention",
            [q, k, v, *layer.past, seqlens, total],
            domain=MS,
            outputs=3,
            num_heads=heads,
            kv_num_heads=heads,
            scale=scale,
        )
        new += b.nodes
        b.commit(cached, mha)
        out.shape, out.type = mha.outputs[0].shape, mha.outputs[0].type
        ir.convenience.replace_all_uses_with(mha.outputs[0], out)
        for present, concat, s in zip((pk, pv), layer.concats, layer.slot, strict=True):
            old = concat.outputs[0]
            name, old.name = old.name, None
            present.name, present.type = name, old.type
            cached.outputs[s] = present
            keep.add(name)

        gqa = layer.prompt
        q, scale = _q_and_scale(gqa.inputs[0], _gqa_scale(gqa, head_dim))
        for j, value in ((0, q), (3, layer.past[0]), (4, layer.past[1]), (5, seqlens), (6, total)):
            gqa.replace_input_with(j, value)
        gqa.attributes["scale"] = ir.AttrFloat32("scale", scale)

    batch = ids.shape[0]
    length: int | str = max_len if max_len > 0 else "max_len"
    branches = [iff.attributes[k].as_graph() for k in ("then_branch", "else_branch")]
    for layer in layers:
        for k in range(2):
            heads, head_dim = static_dim(layer.past[k], 1), static_dim(layer.past[k], 3)
            shape = ir.Shape([batch, heads, length, head_dim])
            layer.past[k].shape = shape
            iff.outputs[layer.slot[k]].shape = shape
            for branch in branches:
                branch.outputs[layer.slot[k]].shape = shape
    finish(model)
    taken = value_names(model)
    for node in new:  # unique across scopes: a branch may not shadow an outer name
        for value in node.outputs:
            if value.name not in keep:
                taken.discard(value.name)
                value.name = fresh_name(f"static_kv/{value.name}", taken)


def _replace_shapes(layer: _Layer, past_len: ir.Value) -> list[ir.Node]:
    """Shape(past) -> the logical past shape [B, H, past_len, D] (sliced as the Shape was):
    the buffers' length is their capacity, the past length comes from the positions.
    Returns the new nodes."""
    new: list[ir.Node] = []
    for value in layer.past:
        for node, _ in list(value.uses()):
            if node.op_type != "Shape":
                continue
            start = node.attributes.get("start")
            end = node.attributes.get("end")
            lo = start.as_int() if start is not None else 0
            hi = end.as_int() if end is not None else 4
            lo, hi = (lo + 4 if lo < 0 else lo), (hi + 4 if hi < 0 else hi)
            lo, hi = max(0, min(lo, 4)), max(0, min(hi, 4))
            if not lo <= 2 < hi:
                continue  # batch, heads, head size: as they were
            b = Builder()
            parts = []
            if lo < 2:
                parts.append(b.one("Shape", [value], start=lo, end=2))
            parts.append(past_len)
            if hi > 3:
                parts.append(b.one("Shape", [value], start=3, end=hi))
            graph = node.graph
            assert graph is not None
            new_value = parts[0] if len(parts) == 1 else b.one("Concat", parts, axis=0)
            new += b.nodes
            if b.nodes:
                b.commit(graph, node)
            ir.convenience.replace_all_uses_with(node.outputs[0], new_value)
    return new


def merged_feeds(model: ir.Model, feeds: dict, max_len: int = 0) -> dict:
    """Feeds of the dynamic-cache merged decoder -> feeds of ``model`` after the pass:
    ``position_ids`` continuing the past (``arange(S)`` on the prompt branch) and the
    self-attention pasts in buffers of ``max_len`` positions (0: past + new; the new tokens'
    count on the prompt branch), zeros beyond the past."""
    names = {v.name for v in model.graph.inputs}
    if POSITIONS not in names or POSITIONS in feeds or "input_ids" not in feeds:
        return feeds
    batch, new = np.asarray(feeds["input_ids"]).shape
    use_cache = bool(np.asarray(feeds.get(USE_CACHE, [True])).reshape(-1)[0])
    out = dict(feeds)
    past = 0
    for name, value in feeds.items():
        if SELF_PAST.fullmatch(name):
            past = value.shape[2] if use_cache else 0
            length = max_len or past + new
            buf = np.zeros((*value.shape[:2], length, value.shape[3]), value.dtype)
            buf[:, :, :past] = value[:, :, :past]
            out[name] = buf
    out[POSITIONS] = np.broadcast_to(np.arange(past, past + new), (batch, new)).copy()
    return out
