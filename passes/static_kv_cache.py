"""Stacked KV cache -> per-layer static buffers that GroupQueryAttention updates in place.

Rewrite (per ``com.microsoft:GroupQueryAttention`` of a prefill or step decoder, after
``fuse-gqa``; ``L`` layers, ``i`` a layer)::

    past_keys [L,B,kv,P,hd] -> Gather(i, axis 0) -> GQA_i.past_key            (step only)
    GQA_i.present_key -> Unsqueeze(0) -> Concat(axis 0) -> present_keys [L,B,kv,P+S,hd]
    GQA_i(seqlens_k, total_sequence_length from the past and new shapes)
  ->
    past_key_values.{i}.key [B,kv,max_len,hd] -> GQA_i.past_key     (the prefill gains it too)
    GQA_i.present_key -> present.{i}.key [B,kv,max_len,hd]
    seqlens_k = int32(ReduceMax(position_ids, axis 1))        [B]: last position of each row
    total_sequence_length = int32(ReduceMax(position_ids) + 1)

values likewise (``past_key_values.{i}.value`` / ``present.{i}.value``). Positions ``[0, p)``
of a row's buffer hold its past; the ``S`` new keys go to ``p .. p+S-1`` where ``p`` is the
row's first position id (the runtime's contract: position ids continue the past, arange(S) in
the prefill). GroupQueryAttention's present then has the buffer's length (``max(total,
max_len)``), and when the runtime binds one buffer as both past input and present output
(ONNX Runtime's I/O binding), the CPU kernel sees equal pointers and takes its
``past_present_share_buffer`` path: it writes only the new positions and copies nothing, so a
step's cost no longer grows with a copy of the whole past. With separate buffers it copies the
past, with the same result. ``max_len`` 0 (default) leaves the buffer length a symbolic dim
``max_len`` (the runtime sizes the buffers per utterance: prompt + token budget); a positive
``max_len`` makes it static (the runtime's capacity; decoding stops with ``cache_full``).

Both decoders get the same I/O names, so the runtime still runs them as the branches of one
merged session (``qgraph.runtime.merged``). The prefill's positions must be ``arange(S)`` so
that GroupQueryAttention sees a first prompt (``total_sequence_length == S``).

**Merged decoder** (Whisper's ``decoder_model_merged``: an ``If`` on ``use_cache_branch``,
after ``fuse-gqa`` and ``fuse-mha``; ``H`` heads, layer ``i``)::

    cached branch:  k = Concat(past_key_values.{i}.decoder.key, k_new, axis 2) -> present
                    MultiHeadAttention(q * c, k, v, attention_bias=causal mask)
    prompt branch:  GroupQueryAttention(q * c, k, v, -, -, seqlens, total) -> present
    Shape(past_key_values.{i}.decoder.*)[2]: the past length (positions, causal mask)
  ->
    position_ids [batch_size, decoder_sequence_length] (new input, after input_ids)
    both branches:  GroupQueryAttention(q, k, v, past_key_values.{i}.decoder.key/value,
                        seqlens_k, total_sequence_length, num_heads=kv_num_heads=H,
                        scale=scale * c) -> present.{i}.decoder.key/value
    past length = ReduceMin(position_ids)  (Shape(past)[2] reads it; the buffer's dim 2 is
                  its capacity)

``past_key_values.{i}.decoder.*`` / ``present.{i}.decoder.*`` keep their names and become
``[batch_size, H, max_len, head_dim]`` buffers; the cross-attention caches
(``.encoder.``, computed once by the prompt branch, read by every cached call) and every other
input and output are unchanged. The query's scalar ``Mul`` (Whisper scales q by
``head_dim**-0.5`` after the projection) folds into the op's ``scale``; the causal mask of the
cached branch (checked causal, as ``fuse-gqa`` checks it) and the position arithmetic on the
past's shape become dead. Rows of a batch share one past length here (the learned position
embedding reads the one past length, as the exported graph did), and a cached call with
several new tokens needs batch 1 (ONNX Runtime's GroupQueryAttention). A client that feeds
the dynamic layout (onnx-asr, Transformers.js) fails on the missing ``position_ids`` input
instead of decoding wrongly: the default layout on disk stays the dynamic one.

Does not fire (``skipped:<reason>``): no GroupQueryAttention;
on a merged decoder: already static (a ``position_ids`` input), a self-attention that is not
the two fused forms above (e.g. ``fuse-mha`` not run), a past read by anything but its Concat
and Shape nodes, a mask that is not causal; no ``position_ids`` input of
rank 2; a present output not stacked by Unsqueeze(0) + Concat(axis 0) into a graph output
(``already per-layer`` when the graph already has ``present.{i}.key`` outputs); a past not read
by Gather(constant i, axis 0) from a stacked graph input; kv heads or head size not static;
the stacked tensors used by anything else.
Scope: the main graph of ``prefill`` and ``step`` components, the branches of a
``merged-decoder`` (``on=`` to change).
``--verify-each`` compares exactly when the generated position ids continue the generated past:
``--verify-dims past=0`` (the default past of 8 with positions from 0 is not a state the
runtime produces).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from qgraph.families import MERGED_DECODER, PREFILL, STEP
from qgraph.pass_api import GraphPass, option
from qgraph.passes._rewrite import MS, Builder, const_ints, remove_dead, static_dim
from qgraph.passes._static_merged import SELF_PAST, cache_if, find_layers, merged_feeds, rewrite

PAST = "past_key_values.{i}.{kind}"
PRESENT = "present.{i}.{kind}"
KINDS = ("key", "value")


@dataclass
class _Layer:
    gqa: ir.Node
    index: int
    stacks: tuple[ir.Node, ir.Node]
    """The Concat nodes that stack the present keys and values."""


def _stack_of(present: ir.Value) -> tuple[ir.Node, int] | str:
    """(Concat node, layer index) of a GQA present output stacked into a graph output."""
    uses = list(present.uses())
    if len(uses) != 1 or present.is_graph_output():
        return "present used elsewhere"
    unsq = uses[0][0]
    if unsq.op_type != "Unsqueeze" or const_ints(unsq.inputs[1]) != [0]:
        return "present not stacked by Unsqueeze(0)"
    users = list(unsq.outputs[0].uses())
    if len(users) != 1:
        return "present not stacked by Unsqueeze(0)"
    concat, index = users[0]
    axis = concat.attributes.get("axis")
    if concat.op_type != "Concat" or axis is None or axis.as_int() != 0:
        return "present not stacked by Concat(axis 0)"
    if not concat.outputs[0].is_graph_output():
        return "stacked present is not a graph output"
    return concat, index


def _past_of(past: ir.Value | None, index: int) -> ir.Value | None | str:
    """The stacked graph input that ``past`` is layer ``index`` of (None: no past)."""
    if past is None:
        return None
    gather = past.producer()
    if gather is None or gather.op_type != "Gather":
        return "past not read by Gather"
    axis = gather.attributes.get("axis")
    if (axis.as_int() if axis is not None else 0) != 0 or const_ints(gather.inputs[1]) != [index]:
        return "past not read by Gather(layer, axis 0)"
    source = gather.inputs[0]
    if not source.is_graph_input():
        return "past is not a stacked graph input"
    return source


class StaticKvCache(GraphPass):
    """Stacked KV cache -> per-layer static buffers, updated in place by GroupQueryAttention."""

    name = "static-kv-cache"
    category = "bundle"
    default_roles = (PREFILL, STEP, MERGED_DECODER)
    must_follow = {
        "fuse-gqa": "the rewrite reads GroupQueryAttention's past and present",
        "fuse-mha": "a merged decoder's cached self-attention is read as MultiHeadAttention",
    }
    max_len: int = option(
        0,
        "cache positions per buffer (0: a symbolic max_len dim, sized by the runtime per "
        "utterance)",
    )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        iff = cache_if(graph)
        if iff is not None:
            return self._merged(model, iff)
        gqas = [n for n in graph if n.op_type == "GroupQueryAttention" and n.domain == MS]
        names = {v.name for v in graph.outputs}
        if not gqas:
            self.count("skipped:no GroupQueryAttention")
            return ir.passes.PassResult(model, False)
        if PRESENT.format(i=0, kind="key") in names:
            self.count("skipped:already per-layer")
            return ir.passes.PassResult(model, False)
        positions = next((v for v in graph.inputs if v.name == "position_ids"), None)
        if positions is None or positions.shape is None or positions.shape.rank() != 2:
            self.count("skipped:no position_ids input of rank 2")
            return ir.passes.PassResult(model, False)
        layers = self._layers(gqas)
        if isinstance(layers, str):
            self.count(f"skipped:{layers}")
            return ir.passes.PassResult(model, False)
        self._rewrite(model, positions, layers)
        self.count("layers", len(layers))
        return ir.passes.PassResult(model, True)

    def _merged(self, model: ir.Model, iff: ir.Node) -> ir.passes.PassResult:
        if any(v.name == "position_ids" for v in model.graph.inputs):
            self.count("skipped:already static")
            return ir.passes.PassResult(model, False)
        layers = find_layers(model, iff)
        if isinstance(layers, str):
            self.count(f"skipped:{layers}")
            return ir.passes.PassResult(model, False)
        rewrite(model, iff, layers, self.max_len)
        self.count("layers", len(layers))
        return ir.passes.PassResult(model, True)

    def _layers(self, gqas: list[ir.Node]) -> list[_Layer] | str:
        layers: list[_Layer] = []
        stacked_inputs: set[ir.Value] = set()
        for gqa in gqas:
            if len(gqa.inputs) < 7 or len(gqa.outputs) < 3:
                return "GroupQueryAttention without past/present"
            stacks = [_stack_of(gqa.outputs[k]) for k in (1, 2)]
            reason = next((s for s in stacks if isinstance(s, str)), None)
            if reason is not None:
                return reason
            (key_stack, index), (value_stack, vindex) = stacks  # type: ignore[misc]
            if index != vindex:
                return "keys and values stacked in different orders"
            for k in (3, 4):
                source = _past_of(gqa.inputs[k], index)
                if isinstance(source, str):
                    return source
                if source is not None:
                    stacked_inputs.add(source)
            present = gqa.outputs[1]
            if static_dim(present, 1) is None or static_dim(present, 3) is None:
                return "kv heads or head size not static"
            layers.append(_Layer(gqa, index, (key_stack, value_stack)))
        stacks = {n for layer in layers for n in layer.stacks}
        if len(stacks) != 2 or sorted(layer.index for layer in layers) != list(range(len(layers))):
            return "presents not stacked once per layer"
        for concat in stacks:
            if len(concat.inputs) != len(layers):
                return "stacked present has other inputs"
        for source in stacked_inputs:
            if any(user.op_type != "Gather" for user, _ in source.uses()):
                return "stacked past used by other nodes"
        return sorted(layers, key=lambda layer: layer.index)

    def _rewrite(self, model: ir.Model, positions: ir.Value, layers: list[_Layer]) -> None:
        graph = model.graph
        first = layers[0].gqa
        b = Builder()
        last = b.one("ReduceMax", [positions, b.ints([1])], keepdims=0)
        seqlens = b.one("Cast", [last], to=ir.DataType.INT32)
        top = b.one("ReduceMax", [positions], keepdims=0)
        total = b.one("Cast", [b.one("Add", [top, b.ints([1])])], to=ir.DataType.INT32)
        seqlens.name, total.name = "kv_seqlens_k", "kv_total_sequence_length"
        b.commit(graph, first)

        batch = positions.shape[0]
        length: int | str = self.max_len if self.max_len > 0 else "max_len"
        old_inputs = [v for v in graph.inputs if v.name in ("past_keys", "past_values")]
        old_outputs = {n.outputs[0] for layer in layers for n in layer.stacks}
        new_inputs, new_outputs = [], []
        for layer in layers:
            gqa = layer.gqa
            for k, kind in enumerate(KINDS):
                present = gqa.outputs[1 + k]
                heads, head_size = static_dim(present, 1), static_dim(present, 3)
                shape = ir.Shape([batch, heads, length, head_size])
                past = ir.Value(
                    name=PAST.format(i=layer.index, kind=kind), type=present.type, shape=shape
                )
                gqa.replace_input_with(3 + k, past)
                new_inputs.append(past)
                for user, index in list(present.uses()):
                    user.replace_input_with(index, None)
                present.name = PRESENT.format(i=layer.index, kind=kind)
                present.shape = ir.Shape([batch, heads, length, head_size])
                new_outputs.append(present)
            gqa.replace_input_with(5, seqlens)
            gqa.replace_input_with(6, total)
        outputs = [v for v in graph.outputs if v not in old_outputs]
        graph.outputs.clear()
        graph.outputs.extend([*outputs, *new_outputs])
        for value in old_inputs:
            for user, index in list(value.uses()):
                user.replace_input_with(index, None)
        inputs = [v for v in graph.inputs if v not in old_inputs]
        graph.inputs.clear()
        graph.inputs.extend([*inputs, *new_inputs])
        graph.sort()
        remove_dead(model)

    # -- verification hooks ------------------------------------------------------------------
    def adapt_feeds(self, component: str, feeds: dict, bundle: Any) -> dict:
        model = bundle.components.get(component) if bundle is not None else None
        if model is None:
            return feeds
        if cache_if(model.graph) is not None:
            return merged_feeds(model, feeds, self.max_len)
        return static_feeds(model, feeds, self.max_len)

    def adapt_reference(self, component: str, outputs: dict) -> dict:
        """Stacked presents -> per-layer presents, zero-padded to ``max_len`` when static."""
        out = {k: v for k, v in outputs.items() if k not in ("present_keys", "present_values")}
        for name, value in out.items():  # a merged decoder's presents: [B, H, P+S, D]
            past = name.replace("present.", "past_key_values.", 1)
            if SELF_PAST.fullmatch(past) and self.max_len > value.shape[2]:
                pad = self.max_len - value.shape[2]
                out[name] = np.pad(value, ((0, 0), (0, 0), (0, pad), (0, 0)))
        for kind, name in (("key", "present_keys"), ("value", "present_values")):
            stacked = outputs.get(name)
            if stacked is None:
                continue
            for i in range(stacked.shape[0]):
                layer = stacked[i]
                if self.max_len > layer.shape[2]:
                    pad = self.max_len - layer.shape[2]
                    layer = np.pad(layer, ((0, 0), (0, 0), (0, pad), (0, 0)))
                out[PRESENT.format(i=i, kind=kind)] = layer
        return out


def static_feeds(model: ir.Model, feeds: dict, max_len: int = 0) -> dict:
    """Feeds of the stacked layout -> feeds of ``model`` after this pass: per-layer buffers of
    ``max_len`` positions (0: past + new), holding the stacked past and zeros beyond it.

    Exact when the position ids continue the past (the runtime's contract); ``--verify-each``
    generates positions from 0, so it checks a step exactly with ``--verify-dims past=0``.
    """
    names = {v.name for v in model.graph.inputs}
    if PAST.format(i=0, kind="key") not in names or "position_ids" not in feeds:
        return feeds
    batch, new = feeds["position_ids"].shape
    out = {k: v for k, v in feeds.items() if k not in ("past_keys", "past_values")}
    for v in model.graph.inputs:
        if not (v.name or "").startswith("past_key_values."):
            continue
        _, index, kind = v.name.split(".")
        stacked = feeds.get("past_keys" if kind == "key" else "past_values")
        past = 0 if stacked is None else stacked.shape[3]
        heads, head_size = v.shape[1], v.shape[3]
        buf = np.zeros((batch, heads, max_len or past + new, head_size), v.dtype.numpy())
        if stacked is not None:
            buf[:, :, :past] = stacked[int(index)]
        out[v.name] = buf
    return out
