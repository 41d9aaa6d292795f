"""MatMul(x, W) with a constant ``W[K, N]`` -> ``com.microsoft:MatMulNBits`` (4- or 8-bit
blocks along K, round to nearest; ONNX Runtime's own packing, byte for byte).

Rewrite::

    y = MatMul(x, W)                                  W: FLOAT/FLOAT16 initializer [K, N]
  ->
    y = MatMulNBits(x, W_Q4, W_scales[, W_zero_points], K, N, bits, block_size[, accuracy_level])

``W_Q4`` is uint8 ``[N, ceil(K/block_size), block_size*bits/8]``, ``W_scales``
``[N, k_blocks]``, ``W_zero_points`` packed uint8 (asymmetric only; symmetric uses the implicit
zero point ``2^(bits-1)``). They are named after the weight (``<W>_Q4`` or ``<W>_Q8``,
``<W>_scales``, ``<W>_zero_points``), whose name is its module's
(``...self_attn.qkv_proj.weight``; ``fold-constants`` and ``fuse-sibling-matmuls`` keep it so),
unique within the graph that holds them. The bytes are those of ``onnxruntime.quantization``'s
``MatMulNBitsQuantizer`` with ``DefaultWeightOnlyQuantConfig`` (the same C++ kernel; a test
compares them). From a memory-mapped (or lazily computed) weight they are ``ir.LazyTensor``
objects computed when the bundle is hashed or saved, one weight at a time, and the weight's
pages are unmapped after each read, so a quantized decoder never sits in memory; a weight an
earlier pass already materialised in memory (e.g. a packed q/k/v concatenation) is quantized at
once and let go, which leaves a seventh of it. The same source tensor in several components gets
the same packed tensors, and equal packed tensors of decoder_init and decoder_step are shared by
``share-weights`` (by content).

Mixed precision: ``overrides=[PATTERN:BITS[/BLOCK],...]`` gives the MatMuls a pattern matches
their own bits (4 or 8) and block size (default: the pass's); the first matching override wins. A
pattern is a role (``lm_head``, ``q``, ...) or an fnmatch pattern on the node, weight or module
names, as for ``exclude`` (``*.layers.0.*``, ``*encoder_attn*`` for Whisper's cross-attention),
e.g. ``quantize-int4{block_size=32,overrides=[lm_head:8,*.layers.3.*:8/64]}``. A weight read by
several MatMuls (both ``If`` branches) is packed once, with the precision of its first match; the
tied embedding's GatherBlockQuantized reads the same packed tensor with its bits and block size.
The options are recorded in the manifest's pipeline; with overrides the statistics also count
``quantized:<bits>bit/b<block>``.

Selection: ``roles`` (q, k, v, o, gate, up, down, lm_head, encoder, other; see ``_roles``)
and ``exclude`` (fnmatch patterns on the node name, the weight name or the exporter's module
scope, e.g. ``*.layers.0.*``). The encoder is left alone by default (an int4 encoder cost
+0.17 pp WER in the public release).

Tied embedding: decoder_init reads its prompt embeddings from the lm_head weight
(``Transpose(Gather(lm_head.weight, ids, axis=1))``). With ``tied_gather=block-quantized``
(default) that becomes ``Reshape(GatherBlockQuantized(W_Q4, ids, ...))`` on the *same* packed
tensor, so no FP32 table is left (0.6B: -622 MB, the embedding rows are int4 like the lm_head).
With ``tied_gather=fp32`` the Gather keeps the FP32 weight beside the packed one. A weight with
any other non-MatMul use keeps its FP32 copy for that use (counted).

Does not fire (``skipped:<reason>``): the weight is not a constant initializer (attention
products), not FLOAT/FLOAT16, not 2-D; its role is not selected; it is excluded.
Lossy: round to nearest. Error budget (``tolerance``, checked by ``--verify-each`` on every
output, logits and KV cache): 4-bit cosine >= 0.95; 8-bit cosine >= 0.999 and top-1 agreement
>= 0.9. The tiny random-weight model measures 0.956-0.978 (4-bit, logits) and >= 0.9996
(8-bit). 4-bit declares no top-1 floor: generated inputs give decoder_step one logits row, and
the tiny model's near-flat logits make its argmax a coin flip under 4-bit noise (its top-1 and
greedy-token agreement are in ``benchmarks/results/accuracy.md``).
Scope: every component (``on=`` to choose), the main graph and its subgraphs. A MatMul inside
an ``If`` branch (Whisper's ``decoder_model_merged``) whose weight is an initializer of an
enclosing graph is rewritten in its branch; the packed weight, scales and zero points are
initializers of the graph that held the weight, so a weight both branches read is packed once
and both MatMulNBits read the same packed tensors (the FP32 weight is dropped when no use is
left in any branch).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from qgraph.errors import PipelineError
from qgraph.pass_api import GraphPass, Tolerance, option
from qgraph.passes._blockquant import block_quantize, unpacked_zero_points
from qgraph.passes._lazy import LazyParts, SourceCache, add_initializer, release
from qgraph.passes._rewrite import MS
from qgraph.passes._roles import DECODER_ROLES, ROLES, excluded, graph_role, refusal, role_of

logger = logging.getLogger(__name__)

FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16)
INT4_BUDGET = Tolerance(atol=None, rtol=None, min_cosine=0.95)
INT8_BUDGET = Tolerance(atol=None, rtol=None, min_cosine=0.999, min_top1=0.9)


class _Packed:
    """The packed weight, scales and zero points of one source tensor, as lazy tensors."""

    def __init__(
        self, t: ir.TensorProtocol, name: str, bits: int, block: int, sym: bool, eager: bool
    ) -> None:
        rows, cols = (int(d) for d in t.shape)
        k_blocks = (rows + block - 1) // block
        self.bits, self.block_size = bits, block

        def compute() -> dict[str, np.ndarray]:
            w = t.numpy()
            packed, scales, zp = block_quantize(w, bits, block, sym)
            del w
            release(t)
            logger.debug("quantized %s [%d, %d]", name, rows, cols)
            return {
                "packed": packed,
                "scales": scales,
                "zero_points": zp,
                "gather_scales": scales[..., None],
                "gather_zero_points": unpacked_zero_points(zp, k_blocks, bits)[..., None],
            }

        u8 = ir.DataType.UINT8
        self._specs = {
            "packed": (u8, (cols, k_blocks, block * bits // 8), f"{name}_Q{bits}"),
            "scales": (t.dtype, (cols, k_blocks), f"{name}_scales"),
            "zero_points": (u8, (cols, (k_blocks * bits + 7) // 8), f"{name}_zero_points"),
            "gather_scales": (t.dtype, (cols, k_blocks, 1), f"{name}_gather_scales"),
            "gather_zero_points": (u8, (cols, k_blocks, 1), f"{name}_gather_zero_points"),
        }
        self._parts = LazyParts(compute, eager)
        self._tensors: dict[str, ir.LazyTensor] = {}

    def __getitem__(self, part: str) -> ir.LazyTensor:
        if part not in self._tensors:
            self._tensors[part] = self._parts.tensor(part, *self._specs[part])
        return self._tensors[part]


class QuantizeMatMulNBits(GraphPass):
    """MatMul with a constant weight -> com.microsoft MatMulNBits (4/8-bit blocks, ORT packing)."""

    name = "quantize-int4"
    category = "quantization"
    must_follow = {
        "awq-smooth": "awq-smooth rescales the FP32 weights that quantization rounds",
        "inline-lm-head": "the lm_head is only a constant weight once inline-lm-head made it one",
    }
    bits: int = option(4, "bits per weight", choices=(4, 8))
    block_size: int = option(64, "weights per scale along K", choices=(16, 32, 64, 128, 256))
    symmetric: bool = option(False, "symmetric blocks (no zero points)")
    accuracy_level: int = option(
        4,
        "MatMulNBits accuracy_level (4: int8 activations, fastest on CPU; 0: unset)",
        choices=(0, 1, 2, 3, 4),
    )
    roles: tuple[str, ...] = option(DECODER_ROLES, "layer roles to quantize", choices=ROLES)
    exclude: tuple[str, ...] = option((), "fnmatch patterns: node, weight or module names")
    tied_gather: str = option(
        "block-quantized",
        "a Gather reading a quantized weight: GatherBlockQuantized on the packed weight, or fp32",
        choices=("block-quantized", "fp32"),
    )
    overrides: tuple[str, ...] = option(
        (),
        "mixed precision: PATTERN:BITS[/BLOCK] (a role or fnmatch on node/weight/module names; "
        "first match wins), e.g. [lm_head:8,*.layers.0.*:8/32]",
    )

    def validate(self) -> None:
        super().validate()
        self.precisions()

    def precisions(self) -> list[tuple[str, int, int]]:
        """``overrides`` parsed: ``(pattern, bits, block_size)`` in order."""
        out = []
        for text in self.overrides:
            pattern, _, spec = text.rpartition(":")
            bits, _, block = spec.partition("/")
            try:
                b, k = int(bits), int(block or self.block_size)
            except ValueError:
                b = k = 0
            if not pattern or b not in (4, 8) or k not in (16, 32, 64, 128, 256):
                raise PipelineError(
                    f"pass '{self.name}': override {text!r}: expected PATTERN:BITS[/BLOCK] with "
                    "BITS 4 or 8 and BLOCK 16, 32, 64, 128 or 256"
                )
            out.append((pattern, b, k))
        return out

    def precision(self, node: ir.Node, weight: ir.Value, fallback: str) -> tuple[int, int]:
        """``(bits, block_size)`` of one MatMul: its first matching override, else the pass's."""
        role = role_of(node, weight, fallback, self.component_role).split("+")
        for pattern, bits, block in self.precisions():
            if pattern in role or excluded((pattern,), node, weight):
                return bits, block
        return self.bits, self.block_size

    @property
    def tolerance(self) -> Tolerance:  # type: ignore[override]
        """The error budget ``--verify-each`` checks (see the module docstring)."""
        bits = {self.bits, *(b for _, b, _ in self.precisions())}
        return INT8_BUDGET if bits == {8} else INT4_BUDGET

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        done: dict[ir.Value, ir.Value] = {}
        fallback = graph_role(model.graph)
        for node in list(model.graph.all_nodes()):
            if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
                continue
            weight = node.inputs[1]
            reason = refusal(
                node, weight, self.roles, self.exclude, FLOATS, fallback, self.component_role
            )
            if reason:
                self.count(f"skipped:{reason}", where=node)
                continue
            done[weight] = self._rewrite(node, weight, *self.precision(node, weight, fallback))
            self.count("quantized")
        for weight, packed in done.items():
            self._other_uses(weight, packed)
        self.__dict__.setdefault("_cache", SourceCache()).end_component()
        if done:
            model.opset_imports.setdefault(MS, 1)
        return ir.passes.PassResult(model, bool(done))

    # -- selection --------------------------------------------------------------------------------
    def _tensors(
        self, t: ir.TensorProtocol, name: str, bits: int | None = None, block: int | None = None
    ) -> _Packed:
        """The lazy results for source ``t`` (one set per source tensor, shared by components;
        the first request's ``bits`` and ``block`` win)."""
        cache = self.__dict__.setdefault("_cache", SourceCache())
        bits, block = bits or self.bits, block or self.block_size
        return cache.get(t, lambda eager: _Packed(t, name, bits, block, self.symmetric, eager))

    def _rewrite(self, node: ir.Node, weight: ir.Value, bits: int, block: int) -> ir.Value:
        """Replace ``node`` in its own graph; the packed tensors go where ``weight`` lives."""
        t = weight.const_value
        rows, cols = (int(d) for d in t.shape)
        tensors = self._tensors(t, weight.name or node.name or "W", bits, block)
        if self.overrides:
            self.count(f"quantized:{tensors.bits}bit/b{tensors.block_size}")
        home = weight.graph
        packed = add_initializer(home, tensors["packed"])
        inputs = [node.inputs[0], packed, add_initializer(home, tensors["scales"])]
        if not self.symmetric:
            inputs.append(add_initializer(home, tensors["zero_points"]))
        attrs = {"K": rows, "N": cols, "bits": tensors.bits, "block_size": tensors.block_size}
        if self.accuracy_level:
            attrs["accuracy_level"] = self.accuracy_level
        name = f"{node.name}_Q{tensors.bits}" if node.name else None
        new = ir.node("MatMulNBits", inputs, attrs, domain=MS, name=name)
        new.metadata_props.update(node.metadata_props)
        ir.convenience.replace_nodes_and_values(
            node.graph, node, [node], [new], [node.outputs[0]], [new.outputs[0]]
        )
        return packed

    def _other_uses(self, weight: ir.Value, packed: ir.Value) -> None:
        """Tied embedding Gathers -> GatherBlockQuantized; drop the FP32 weight if unused (uses
        in subgraphs count)."""
        for use in list(weight.uses()):
            gather = use.node
            transpose = self._tied_gather(gather, weight)
            if transpose is None:
                continue
            self._quantized_gather(gather, transpose, weight, packed)
            self.count("embedding gather quantized")
        if weight.uses():
            self.count("skipped:FP32 weight kept for other users")
        else:
            weight.graph.initializers.pop(weight.name)

    def _tied_gather(self, gather: ir.Node, weight: ir.Value) -> ir.Node | None:
        """The Transpose of ``Transpose(Gather(W, ids, axis=1), perm=[1..r, 0])``, else None."""
        if self.tied_gather != "block-quantized" or gather.op_type != "Gather":
            return None
        axis = gather.attributes.get("axis")
        rows = int(weight.const_value.shape[0])
        if gather.inputs[0] is not weight or axis is None or axis.as_int() != 1:
            return None
        block = self._tensors(weight.const_value, weight.name).block_size
        if rows % block or len(gather.outputs[0].uses()) != 1:
            return None
        transpose = next(iter(gather.outputs[0].uses())).node
        perm = transpose.attributes.get("perm")
        if transpose.op_type != "Transpose" or perm is None or transpose.graph is not gather.graph:
            return None
        rank = len(perm.as_ints()) - 1
        return transpose if list(perm.as_ints()) == [*range(1, rank + 1), 0] else None

    def _quantized_gather(
        self, gather: ir.Node, transpose: ir.Node, weight: ir.Value, packed: ir.Value
    ) -> None:
        tensors = self._tensors(weight.const_value, weight.name)
        home = weight.graph
        inputs = [packed, gather.inputs[1], add_initializer(home, tensors["gather_scales"])]
        if not self.symmetric:
            inputs.append(add_initializer(home, tensors["gather_zero_points"]))
        attrs = {
            "gather_axis": 0,
            "quantize_axis": 2,
            "block_size": tensors.block_size,
            "bits": tensors.bits,
        }
        gbq = ir.node(
            "GatherBlockQuantized",
            inputs,
            attrs,
            domain=MS,
            name=gather.name and f"{gather.name}_Q",
        )
        rank = len(transpose.attributes["perm"].as_ints()) - 1
        rows = np.array([0] * rank + [int(weight.const_value.shape[0])], dtype=np.int64)
        shape = add_initializer(home, ir.tensor(rows, name=f"{weight.name}_rows_shape"))
        reshape = ir.node(
            "Reshape", [gbq.outputs[0], shape], name=gather.name and f"{gather.name}_rows"
        )
        ir.convenience.replace_nodes_and_values(
            gather.graph,
            transpose,
            [gather, transpose],
            [gbq, reshape],
            [transpose.outputs[0]],
            [reshape.outputs[0]],
        )
