"""decoder_init and decoder_step in one ONNX Runtime session: one pre-packed copy of the weights.

ONNX Runtime pre-packs every MatMul / MatMulNBits weight into a private buffer per session, so
two decoder sessions hold the decoder twice (+495 and +421 MiB at 0.6B int4), whatever the files
share. Within one session a weight is pre-packed once for every kernel that reads it, If
branches included. So the runtime builds, in memory at load time, one model whose ``If`` on
``use_cache_branch`` runs the step graph (then) or the prefill graph (else)::

    inputs   the union of both graphs' inputs (same name = one input), use_cache_branch bool[1]
    If(use_cache_branch)
      then:  decoder_step's nodes      else: decoder_init's nodes
    outputs  logits, present_keys, present_values

Both graphs' initializers move to the top level, one per distinct tensor: external ones are
keyed by their place in the data file (``share-weights`` stores equal tensors once, so the
prefill and the step read one top-level weight), inline ones by their bytes. Values computed in
a branch are prefixed ``init/`` or ``step/``. The bundle on disk is not touched: the merged
model is serialised to bytes and loaded with the bundle folder as its external-data folder.

``merge_decoders`` returns None (the runtime then opens two sessions) when the graphs cannot be
merged: different output names, an input name with two element types, or nested subgraphs.
"""

from __future__ import annotations

import hashlib
import logging

import onnx
from onnx import helper

__all__ = ["USE_CACHE", "merge_decoders"]

logger = logging.getLogger(__name__)

USE_CACHE = "use_cache_branch"


def _tensor_key(t: onnx.TensorProto) -> tuple:
    if t.data_location == onnx.TensorProto.EXTERNAL:
        info = {e.key: e.value for e in t.external_data}
        return ("external", info.get("location"), info.get("offset", "0"), info.get("length"))
    unnamed = onnx.TensorProto()
    unnamed.CopyFrom(t)
    unnamed.name = ""
    return ("inline", hashlib.sha256(unnamed.SerializeToString()).hexdigest())


def _general(a: onnx.ValueInfoProto, b: onnx.ValueInfoProto) -> onnx.ValueInfoProto | None:
    """One value info covering both (same element type; differing dims become symbolic)."""
    ta, tb = a.type.tensor_type, b.type.tensor_type
    if ta.elem_type != tb.elem_type:
        return None
    out = onnx.ValueInfoProto()
    out.CopyFrom(a)
    da, db = ta.shape.dim, tb.shape.dim
    if len(da) != len(db):
        out.type.tensor_type.ClearField("shape")
        return out
    for i, (x, y) in enumerate(zip(da, db, strict=True)):
        if x != y:
            dim = out.type.tensor_type.shape.dim[i]
            dim.Clear()
            dim.dim_param = f"{a.name}_{i}"
    return out


def _branch(
    graph: onnx.GraphProto, tag: str, tops: dict[tuple, onnx.TensorProto], outputs: list[str]
) -> onnx.GraphProto | None:
    """``graph`` as an If branch: initializers lifted into ``tops``, own values prefixed."""
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in graph.node
        for a in n.attribute
    ):
        return None
    rename: dict[str, str] = {}
    taken = {t.name for t in tops.values()}
    for init in graph.initializer:
        key = _tensor_key(init)
        top = tops.get(key)
        if top is None:
            top = onnx.TensorProto()
            top.CopyFrom(init)
            name = init.name
            while name in taken:
                name = f"{tag}/{name}"
            top.name = name
            taken.add(name)
            tops[key] = top
        rename[init.name] = top.name
    for node in graph.node:
        for out in node.output:
            if out:
                rename[out] = f"{tag}/{out}"
    nodes = []
    for k, node in enumerate(graph.node):
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = f"{tag}/{node.name or f'node_{k}'}"
        new.input[:] = [rename.get(i, i) for i in node.input]
        new.output[:] = [rename.get(o, o) for o in node.output]
        nodes.append(new)
    by_name = {v.name: v for v in graph.output}
    outs = []
    for name in outputs:
        info = onnx.ValueInfoProto()
        info.CopyFrom(by_name[name])
        info.name = rename.get(name, name)
        outs.append(info)
    return helper.make_graph(nodes, f"{tag}_branch", [], outs)


def merge_decoders(init: onnx.ModelProto, step: onnx.ModelProto) -> onnx.ModelProto | None:
    """The prefill and step graphs as the branches of one ``If`` (see the module docstring)."""
    outputs = [v.name for v in init.graph.output]
    if sorted(outputs) != sorted(v.name for v in step.graph.output):
        return None
    tops: dict[tuple, onnx.TensorProto] = {}
    then_branch = _branch(step.graph, "step", tops, outputs)
    else_branch = _branch(init.graph, "init", tops, outputs)
    if then_branch is None or else_branch is None:
        return None
    inputs: dict[str, onnx.ValueInfoProto] = {}
    for value in [*init.graph.input, *step.graph.input]:
        seen = inputs.get(value.name)
        merged = value if seen is None else _general(seen, value)
        if merged is None:
            return None
        inputs[value.name] = merged
    flag = helper.make_tensor_value_info(USE_CACHE, onnx.TensorProto.BOOL, [1])
    outs = {v.name: v for v in init.graph.output}
    step_outs = {v.name: v for v in step.graph.output}
    top_outputs = [_general(outs[n], step_outs[n]) or outs[n] for n in outputs]
    node = helper.make_node(
        "If",
        [USE_CACHE],
        outputs,
        name="decoder_if",
        then_branch=then_branch,
        else_branch=else_branch,
    )
    graph = helper.make_graph(
        [node], "decoder_merged", [*inputs.values(), flag], top_outputs, list(tops.values())
    )
    opsets: dict[str, int] = {}
    for op in [*init.opset_import, *step.opset_import]:
        opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
        ir_version=max(init.ir_version, step.ir_version),
        producer_name="qgraph.runtime.merged",
    )
    logger.info(
        "merged decoder_init and decoder_step: %d top-level initializers (%d + %d before)",
        len(tops),
        len(init.graph.initializer),
        len(step.graph.initializer),
    )
    return model
