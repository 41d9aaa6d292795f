"""Scoring an optimized corpus graph: fused sites per kind, and the ONNX Runtime numeric check.

``fused_sites(model, self_attention)`` counts, over the main graph and every subgraph, the
nodes that stand for fused sites. The mapping treats every tool alike (ours, ORT's
``optimize_model``, onnxscript's ``optimize_for_ort``); a node counts wherever it came from:

====================  ===========================================================================
kind                  nodes (``com.microsoft`` unless said otherwise)
====================  ===========================================================================
``rms-norm``          ``SimplifiedLayerNormalization`` + ``SkipSimplifiedLayerNormalization``
                      (one RMSNorm each) + ONNX ``RMSNormalization``
``skip-rms-norm``     ``SkipSimplifiedLayerNormalization``
``skip-layer-norm``   ``SkipLayerNormalization`` + ``EmbedLayerNormalization`` (ORT's fused
                      embedding sum + LayerNorm covers the embedding site)
``gelu``              ``Gelu`` (ours, or ONNX ``Gelu`` without ``approximate="tanh"``) +
                      ``BiasGelu`` (erf, bias folded in)
``fast-gelu``         ``FastGelu`` (tanh, with or without its bias) + ONNX
                      ``Gelu(approximate="tanh")``
``rotary``            ``RotaryEmbedding`` + 2 per attention node with ``do_rotary=1`` (q and k)
``attention-*``       one per attention node: ``GroupQueryAttention``, ``MultiHeadAttention``,
                      ``Attention``, ``PackedAttention``, ``PackedMultiHeadAttention``,
                      ``DecoderMaskedMultiHeadAttention``, ``DecoderAttention``,
                      ``SparseAttention``, ``PagedAttention``, ONNX ``Attention``
====================  ===========================================================================

An attention node is a cross-attention when its ``key`` input does not depend on every graph
input its ``query`` depends on (the keys come from another sequence: encoder states or a
cross cache; a self-attention's keys are projected from the same hidden state as its queries,
possibly with a past concatenated); otherwise it is the case's self-attention kind
(``attention-decoder`` or ``attention-encoder``: a case holds one kind of self-attention).
Packed QKV (no ``key`` input; ORT's ``Attention`` with its packed weights) is self-attention.
Dependencies through ``Shape``/``Size`` do not count (a reshape of the encoder keys to the
batch size read off ``input_ids`` leaves them cross-attention keys).

``score(counts, expected)``: per kind ``min(fused, expected)`` (a tool cannot earn more than
the sites there are; ``over`` lists the kinds where it produced more nodes than sites).

``numeric_check(reference, optimized, feed_sets)``: both models in ONNX Runtime (CPU, graph
optimizations disabled, so what runs is what the tool wrote), the max abs difference over
all outputs with the same name and over all feed sets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx

from .cases import SITE_KINDS

ATTENTION_OPS = {
    "GroupQueryAttention",
    "MultiHeadAttention",
    "Attention",
    "PackedAttention",
    "PackedMultiHeadAttention",
    "DecoderMaskedMultiHeadAttention",
    "DecoderAttention",
    "SparseAttention",
    "PagedAttention",
}
PACKED_OPS = {"Attention", "PackedAttention"}
"""Attention ops whose second input is not the keys (weights, or q/k/v packed): self-attention
(ONNX's own ``Attention`` takes keys second, but ``opset 17/18`` graphs cannot hold it)."""
QUERY, KEY = 0, 1
SHAPE_OPS = {"Shape", "Size"}


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _graphs(graph: onnx.GraphProto) -> Iterable[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(a.g)
            for g in a.graphs:
                yield from _graphs(g)


class _Ancestry:
    """The graph inputs (of this graph, or outer-scope names) each value depends on; weights
    and constants (of any graph in the model) are no inputs."""

    def __init__(self, graph: onnx.GraphProto, constants: set[str]) -> None:
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.initializers = constants
        self.memo: dict[str, frozenset[str]] = {}

    def leaves(self, name: str) -> frozenset[str]:
        if not name or name in self.initializers:
            return frozenset()
        if name in self.memo:
            return self.memo[name]
        stack, seen, out = [name], set(), set()
        while stack:  # iterative: decoder graphs are deep
            v = stack.pop()
            if v in seen or not v or v in self.initializers:
                continue
            seen.add(v)
            if v in self.memo:
                out |= self.memo[v]
                continue
            node = self.producer.get(v)
            if node is None:
                out.add(v)
                continue
            if node.op_type in SHAPE_OPS:  # metadata, not data: a batch size read off ids
                continue
            stack.extend(node.input)
            for a in node.attribute:  # outer-scope names a subgraph reads
                if a.type == onnx.AttributeProto.GRAPH:
                    stack.extend(_free_names(a.g))
        self.memo[name] = frozenset(out)
        return self.memo[name]


def _free_names(graph: onnx.GraphProto) -> set[str]:
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    defined |= {o for n in graph.node for o in n.output}
    used = {i for n in graph.node for i in n.input if i}
    return used - defined


def _is_cross(node: onnx.NodeProto, ancestry: _Ancestry) -> bool:
    if node.op_type in PACKED_OPS or len(node.input) <= KEY or not node.input[KEY]:
        return False
    return not ancestry.leaves(node.input[QUERY]) <= ancestry.leaves(node.input[KEY])


def fused_sites(model: onnx.ModelProto, self_attention: str) -> Counter:
    """Fused-site counts per kind (``SITE_KINDS``), uncapped; ``self_attention`` is
    ``attention-decoder`` or ``attention-encoder``."""
    counts: Counter = Counter()
    graphs = list(_graphs(model.graph))
    # initializers of every graph: a branch reads the weights its parent holds (outer scope)
    constants = {i.name for g in graphs for i in g.initializer}
    constants |= {o for g in graphs for n in g.node if n.op_type == "Constant" for o in n.output}
    for graph in graphs:
        ancestry = _Ancestry(graph, constants)
        for node in graph.node:
            op = node.op_type
            if op == "SimplifiedLayerNormalization" or op == "RMSNormalization":
                counts["rms-norm"] += 1
            elif op == "SkipSimplifiedLayerNormalization":
                counts["rms-norm"] += 1
                counts["skip-rms-norm"] += 1
            elif op in ("SkipLayerNormalization", "EmbedLayerNormalization"):
                counts["skip-layer-norm"] += 1
            elif op == "BiasGelu":
                counts["gelu"] += 1
            elif op == "Gelu":
                tanh = _attr(node, "approximate", b"none") in (b"tanh", "tanh")
                counts["fast-gelu" if tanh else "gelu"] += 1
            elif op == "FastGelu":
                counts["fast-gelu"] += 1
            elif op == "RotaryEmbedding":
                counts["rotary"] += 1
            if op in ATTENTION_OPS:
                counts["attention-cross" if _is_cross(node, ancestry) else self_attention] += 1
                if _attr(node, "do_rotary", 0):
                    counts["rotary"] += 2
    return counts


def self_attention_kind(expected: dict[str, int]) -> str:
    return "attention-encoder" if expected.get("attention-encoder") else "attention-decoder"


def count_model(path: Path, expected: dict[str, int]) -> Counter:
    model = onnx.load(str(path), load_external_data=False)
    return fused_sites(model, self_attention_kind(expected))


def score(counts: Counter, expected: dict[str, int]) -> dict[str, dict[str, int]]:
    """``{kind: {"fused": min(counted, expected), "expected": n, "counted": counted}}`` for every
    kind that is expected or counted."""
    out = {}
    for kind in SITE_KINDS:
        n, got = expected.get(kind, 0), counts.get(kind, 0)
        if n or got:
            out[kind] = {"fused": min(got, n), "expected": n, "counted": got}
    return out


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = _session(path)
    wanted = {i.name for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    outputs = sess.run(None, {k: v for k, v in feeds.items() if k in wanted})
    return dict(zip(names, outputs, strict=True))


def max_abs_diff(reference: Path, optimized: Path, feed_sets: list[dict[str, np.ndarray]]) -> float:
    """Max abs difference over every output ``reference`` has, over all feed sets; raises
    if ``optimized`` lacks an output or changes a shape."""
    worst = 0.0
    for feeds in feed_sets:
        before, after = run(reference, feeds), run(optimized, feeds)
        for name, ref in before.items():
            if name not in after:
                raise AssertionError(f"output {name!r} is missing from the optimized graph")
            got = after[name]
            if got.shape != ref.shape:
                raise AssertionError(f"output {name!r}: shape {got.shape} != {ref.shape}")
            if ref.size:
                diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
                worst = max(worst, float(np.nanmax(diff)) if not np.isnan(diff).all() else 0.0)
                if np.isnan(got).sum() != np.isnan(ref).sum():
                    worst = float("inf")
    return worst
