"""FP32 weight W -> FP16 initializer W16 + Cast(W16, to=FLOAT): half the bytes on disk, FP32
compute, I/O unchanged.

Every FLOAT initializer of at least ``min_elements`` elements is stored as FLOAT16 and cast
back at run time (ONNX Runtime folds the Cast when it loads the model, so compute and the
component's inputs and outputs stay FP32). Values beyond the FP16 range are clamped to
+-65504 first: a mask built as ``bool * finfo(float32).min`` would otherwise turn into -inf and
``0 * -inf`` into NaN on every valid position (the seed's 100 %-WER FP16 encoder). Clamped
tensors are counted (``clamped``); an additive mask of -65504 still zeroes its softmax
entries.

Does not fire: no FLOAT initializer that large (``skipped:nothing to convert``). Graph inputs
and outputs are never converted.
Lossy: FP16 rounding (relative 2^-11) of the weights; the declared tolerance is atol/rtol 1e-2
and cosine >= 0.9999.
Scope: every component by default (``on=`` to choose); the initializers of the main graph and
of its subgraphs. A top-level weight read inside ``If`` branches (Whisper's merged decoder) gets
one top-level Cast that every branch reads; an initializer of a subgraph gets its Cast in that
subgraph.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qgraph.pass_api import GraphPass, Tolerance, option

FP16_MAX = float(np.finfo(np.float16).max)


def _half(t: ir.TensorProtocol, name: str) -> ir.LazyTensor:
    def compute() -> ir.TensorProtocol:
        values = np.clip(t.numpy(), -FP16_MAX, FP16_MAX)
        return ir.tensor(values.astype(np.float16), name=name)

    return ir.LazyTensor(compute, dtype=ir.DataType.FLOAT16, shape=t.shape, name=name)


class ToFp16(GraphPass):
    """FP32 weights -> FP16 storage with a Cast back to FP32 (masks clamped, never inf)."""

    name = "to-fp16"
    category = "precision"
    tolerance = Tolerance(atol=1e-2, rtol=1e-2, min_cosine=0.9999)
    min_elements: int = option(1024, "convert initializers with at least this many elements")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for graph in list(model.graphs()):
            modified |= self._convert(graph)
        if not modified:
            self.count("skipped:nothing to convert")
        return ir.passes.PassResult(model, modified)

    def _convert(self, graph: ir.Graph) -> bool:
        """Convert ``graph``'s own initializers (all their uses, in subgraphs too)."""
        first = next(iter(graph), None)
        modified = False
        for value in list(graph.initializers.values()):
            t = value.const_value
            if (
                t is None
                or t.dtype != ir.DataType.FLOAT
                or t.size < self.min_elements
                or value.is_graph_output()
                or value.is_graph_input()
            ):
                continue
            if np.abs(t.numpy()).max(initial=0.0) > FP16_MAX:
                self.count("clamped")
            half = ir.Value(name=f"{value.name}_fp16", const_value=_half(t, f"{value.name}_fp16"))
            cast = ir.node("Cast", [half], {"to": ir.DataType.FLOAT}, name=f"{value.name}_to_fp32")
            cast.outputs[0].name = f"{value.name}_fp32"
            cast.outputs[0].type = value.type
            cast.outputs[0].shape = value.shape
            ir.convenience.replace_all_uses_with(value, cast.outputs[0])
            del graph.initializers[value.name]
            graph.register_initializer(half)
            if first is None:
                graph.append(cast)
            else:
                graph.insert_before(first, cast)
            self.count("converted")
            self.count("bytes saved", t.nbytes // 2)
            modified = True
        return modified
