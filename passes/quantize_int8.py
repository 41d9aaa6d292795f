"""MatMul(x, W) with a constant ``W[K, N]`` -> dynamic INT8: int8 weights with one scale per
output channel, activations quantized per call.

Rewrite::

    y = MatMul(x, W)
  ->
    xq, xs, xz = DynamicQuantizeLinear(x)                       uint8 activations, per tensor
    acc = MatMulInteger(xq, W_i8, xz)                           W_i8: int8 [K, N], zero point 0
    y = Mul(Cast(acc, to=FLOAT), Mul(xs, W_scale))              W_scale: float [N]

``W_i8``/``W_scale`` are named ``<W>_quantized``/``<W>_scale`` after the weight, whose name
is its module's (``...mlp.fc1.weight``; ``fold-constants`` and ``fuse-sibling-matmuls`` keep
it so), so ``exclude`` patterns, diffs and ``--stats`` read module names.
This is the structure ``onnxruntime.quantization.quantize_dynamic`` emits; ONNX Runtime fuses it
into ``DynamicQuantizeMatMul`` when it loads the model. The weights are ``ir.LazyTensor``
objects computed from the memory-mapped source when the bundle is hashed or saved (a source
already in memory is quantized at once and let go).

The public tool's trap, avoided: ``quantize_dynamic`` with its defaults quantizes every MatMul
weight *per tensor* and also the embedding ``Gather``. On 1.7B the 151936-column lm_head then
shares one scale with its outlier columns, the ``<asr_text>`` logit margin collapses and ~12 %
of clips spell "language English asr text" instead of emitting the special token. Here every
output channel (every vocabulary column of the lm_head) has its own scale, and no ``Gather`` is
ever quantized (decoder_init's embedding keeps reading the FP32 ``lm_head.weight``; counted as
``skipped:FP32 weight kept for other users``). ``per_channel=false`` reproduces the per-tensor
trap for comparison only. Weights are 7-bit by default (``reduce_range=true``): ONNX Runtime's
U8S8 kernels on x86 CPUs without VNNI (AVX2 only) add pairs of u8*s8 products in 16 bits, which
saturate with 8-bit weights: on an AVX2-only AMD EPYC the tiny decoder's logits measured cosine
0.978 and top-1 0.75 with 8-bit weights (below the budget), and pass it with 7-bit ones. A
bundle runs wherever it is copied, so the portable choice is the default; ``reduce_range=false``
keeps 8-bit weights for machines known to have VNNI (cosine 0.99955 vs 0.99880 there, README).

Selection: ``roles`` and ``exclude`` as in ``quantize-int4`` (``_roles``); the encoder is left
alone by default (INT8 encoder: +1 pp WER in the public tool's experiment [100]).
Does not fire (``skipped:<reason>``): the weight is not a constant FLOAT 2-D initializer; its
role is not selected; it is excluded.
Lossy: int8 weights and activations. Error budget (``--verify-each``): cosine >= 0.995 and top-1
agreement >= 0.9 on every output; the tiny model measures >= 0.999.
Scope: every component (``on=`` to choose), the main graph and its subgraphs: a MatMul inside an
``If`` branch whose weight is an initializer of an enclosing graph is rewritten in its branch,
with the int8 weight and scales stored beside the FP32 weight (once for all branches that read
it). MatMuls share a ``DynamicQuantizeLinear`` only within one graph.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from qgraph.pass_api import GraphPass, Tolerance, option
from qgraph.passes._blockquant import CHUNK_BYTES
from qgraph.passes._lazy import LazyParts, SourceCache, add_initializer, release
from qgraph.passes._roles import DECODER_ROLES, ROLES, graph_role, refusal
from qgraph.passes.quantize_int4 import QuantizeMatMulNBits

logger = logging.getLogger(__name__)


def quantize_per_channel(
    w: np.ndarray, per_channel: bool, reduce_range: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``W[K, N]`` -> (int8 ``[K, N]``, float32 scales ``[N]``), symmetric; a slice of columns
    at a time (``CHUNK_BYTES``), so a transposed or huge weight is never copied whole."""
    qmax = 63.0 if reduce_range else 127.0
    rows, cols = w.shape
    step = max(1, CHUNK_BYTES // max(1, rows * 4))
    slices = [slice(i, min(cols, i + step)) for i in range(0, cols, step)]
    amax = np.concatenate([np.abs(w[:, c]).max(axis=0) for c in slices]).astype(np.float32)
    if not per_channel:
        amax[:] = amax.max(initial=0.0)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    q = np.empty((rows, cols), dtype=np.int8)
    for c in slices:
        q[:, c] = np.clip(np.rint(w[:, c] / scale[c]), -qmax, qmax)
    return q, scale


class QuantizeInt8(GraphPass):
    """MatMul with a constant weight -> dynamic INT8 (per-channel int8 weights, no Gather)."""

    name = "quantize-int8"
    category = "quantization"
    must_follow = QuantizeMatMulNBits.must_follow
    tolerance = Tolerance(atol=None, rtol=None, min_cosine=0.995, min_top1=0.9)
    roles: tuple[str, ...] = option(DECODER_ROLES, "layer roles to quantize", choices=ROLES)
    exclude: tuple[str, ...] = option((), "fnmatch patterns: node, weight or module names")
    per_channel: bool = option(True, "one scale per output channel (false: per tensor, the trap)")
    reduce_range: bool = option(
        True, "7-bit weights: no U8S8 saturation on x86 CPUs without VNNI (false: 8-bit)"
    )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        done: set[ir.Value] = set()
        quantized_inputs: dict[tuple[ir.Graph, ir.Value], ir.Node] = {}
        fallback = graph_role(model.graph)
        for node in list(model.graph.all_nodes()):
            if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
                continue
            weight = node.inputs[1]
            reason = refusal(
                node,
                weight,
                self.roles,
                self.exclude,
                (ir.DataType.FLOAT,),
                fallback,
                self.component_role,
            )
            if reason:
                self.count(f"skipped:{reason}", where=node)
                continue
            self._rewrite(node, weight, quantized_inputs)
            done.add(weight)
            self.count("quantized")
        self.__dict__.setdefault("_cache", SourceCache()).end_component()
        for weight in done:
            if weight.uses():
                self.count("skipped:FP32 weight kept for other users")
            else:
                weight.graph.initializers.pop(weight.name)
        return ir.passes.PassResult(model, bool(done))

    def _tensors(self, t: ir.TensorProtocol, name: str) -> tuple[ir.LazyTensor, ir.LazyTensor]:
        per_channel, reduce_range = self.per_channel, self.reduce_range
        rows, cols = (int(d) for d in t.shape)

        def compute() -> dict[str, np.ndarray]:
            w = t.numpy()
            q, scale = quantize_per_channel(w, per_channel, reduce_range)
            del w
            release(t)
            return {"weight": q, "scale": scale}

        def make(eager: bool) -> tuple:
            parts = LazyParts(compute, eager)
            return (
                parts.tensor("weight", ir.DataType.INT8, (rows, cols), f"{name}_quantized"),
                parts.tensor("scale", ir.DataType.FLOAT, (cols,), f"{name}_scale"),
            )

        return self.__dict__.setdefault("_cache", SourceCache()).get(t, make)

    def _rewrite(
        self,
        node: ir.Node,
        weight: ir.Value,
        quantized: dict[tuple[ir.Graph, ir.Value], ir.Node],
    ) -> None:
        """Replace ``node`` in its graph; MatMuls of that graph reading one activation share its
        DynamicQuantizeLinear; the int8 tensors go where ``weight`` lives."""
        q, scale = self._tensors(weight.const_value, weight.name or node.name or "W")

        def name(suffix: str) -> str | None:
            return f"{node.name}_{suffix}" if node.name else None

        graph, home, x = node.graph, weight.graph, node.inputs[0]
        dq = quantized.get((graph, x))
        new = []
        if dq is None:
            dq = ir.node("DynamicQuantizeLinear", [x], num_outputs=3, name=name("dq"))
            quantized[(graph, x)] = dq
            new.append(dq)
        xq, xs, xz = dq.outputs
        mm = ir.node("MatMulInteger", [xq, add_initializer(home, q), xz], name=name("int"))
        cast = ir.node("Cast", mm.outputs, {"to": ir.DataType.FLOAT}, name=name("cast"))
        s = ir.node("Mul", [xs, add_initializer(home, scale)], name=name("scale"))
        out = ir.node("Mul", [cast.outputs[0], s.outputs[0]], name=name("rescale"))
        new += [mm, cast, s, out]
        for n in new:
            n.metadata_props.update(node.metadata_props)
        ir.convenience.replace_nodes_and_values(
            graph, node, [node], new, [node.outputs[0]], [out.outputs[0]]
        )
