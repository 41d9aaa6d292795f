"""Two decoder graphs -> ``decoder_model_merged``: one ``If`` on ``use_cache_branch``.

``merge_decoders(no_past, with_past)`` builds the layout optimum produces and Transformers.js and
onnx-asr load::

    inputs   input_ids, encoder_hidden_states, past_key_values.{i}.{decoder,encoder}.{key,value},
             use_cache_branch (bool [1])
    If(use_cache_branch)
      then:  the with-past graph (reads input_ids and the past)
      else:  the no-past graph (reads input_ids and encoder_hidden_states)
    outputs  logits, present.{i}.*   (encoder presents are empty [0, ...] in the then-branch)

The branches read their inputs and every initializer from the top-level graph: an initializer
both graphs have (same name, same values; the tied embedding and every layer weight) is stored
once, at top level. An initializer name whose values differ between the two (a lifted constant)
is kept twice, prefixed with its branch. Values and nodes inside each branch are prefixed with
the branch name (``no_past/``, ``with_past/``) so names stay unique across the model.

Linear weights: the exporter emits ``MatMul(x, Transpose(W))`` in each branch. ONNX Runtime would
fold each Transpose into its own ``W^T`` copy at load (three copies of every decoder weight in
memory), and ``fold-constants`` cannot fold a weight read by two branches. So a top-level weight
read only by such Transposes is stored transposed (``<name>.T``, computed lazily at save, the
Transposes removed), and one read by something else as well (the tied embedding, also a Gather
input) gets a single top-level Transpose that both branches read.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qgraph.errors import ExportError

from .graphs import PRODUCER

USE_CACHE = "use_cache_branch"


def _same_tensor(a: ir.TensorProtocol, b: ir.TensorProtocol) -> bool:
    raw = getattr(a, "raw", None)
    if a is b or (raw is not None and raw is getattr(b, "raw", None)):
        return True
    if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
        return False
    return bool(np.array_equal(a.numpy(), b.numpy()))


def _copy_value(v: ir.Value) -> ir.Value:
    return ir.Value(name=v.name, type=v.type, shape=v.shape)


def _adopt_branch(
    model: ir.Model, tag: str, outer: dict[str, ir.Value], inits: dict[str, ir.Value]
) -> ir.Graph:
    """Turn ``model``'s graph into an If branch that reads ``outer`` inputs and ``inits``."""
    graph = model.graph
    for inp in list(graph.inputs):
        if inp.name not in outer:
            raise ExportError(f"decoder merge: branch {tag} has an unknown input {inp.name!r}")
        ir.convenience.replace_all_uses_with(inp, outer[inp.name])
    graph.inputs.clear()
    for name in list(graph.initializers):
        value = graph.initializers.pop(name)
        shared = inits.get(name)
        if shared is not None and _same_tensor(shared.const_value, value.const_value):
            ir.convenience.replace_all_uses_with(value, shared)
            continue
        if shared is not None:
            value.name = f"{tag}.{name}"
        inits[value.name] = value
    for node in graph.all_nodes():
        node.name = f"{tag}/{node.name}"
        for out in node.outputs:
            out.name = f"{tag}/{out.name}"
    graph.name = tag
    return graph


def _is_transpose_2d(node: ir.Node) -> bool:
    perm = node.attributes.get_ints("perm", None)
    is_2d = perm is None or list(perm) == [1, 0]
    return node.op_type == "Transpose" and node.domain in ("", "ai.onnx") and is_2d


def _transposed(value: ir.Value) -> ir.Value:
    """A new initializer value holding ``value``'s 2-D tensor transposed (computed lazily)."""
    source = value.const_value
    rows, cols = source.shape
    name = f"{value.name}.T"
    lazy = ir.LazyTensor(
        lambda: ir.tensor(np.ascontiguousarray(source.numpy().T), name=name),
        dtype=source.dtype,
        shape=ir.Shape([cols, rows]),
        name=name,
    )
    return ir.Value(name=name, type=value.type, shape=ir.Shape([cols, rows]), const_value=lazy)


def _hoist_transposes(branches: list[ir.Graph], inits: dict[str, ir.Value]) -> list[ir.Node]:
    """Branch ``Transpose(W)`` of top-level weights -> stored ``W^T`` or one top-level Transpose."""
    top = set(inits.values())
    sites: dict[ir.Value, list[ir.Node]] = {}
    for branch in branches:
        for node in branch:
            weight = node.inputs[0] if node.inputs else None
            if weight in top and _is_transpose_2d(node) and len(weight.shape) == 2:
                sites.setdefault(weight, []).append(node)
    hoisted = []
    for weight, transposes in sites.items():
        if len(weight.uses()) == len(transposes):
            new = _transposed(weight)
            del inits[weight.name]
            inits[new.name] = new
        else:
            node = ir.node("Transpose", [weight], {"perm": [1, 0]}, name=f"{weight.name}/transpose")
            new = node.outputs[0]
            new.name, new.type = f"{weight.name}.T", weight.type
            new.shape = ir.Shape(list(reversed(list(weight.shape))))
            hoisted.append(node)
        for transpose in transposes:
            ir.convenience.replace_all_uses_with(transpose.outputs[0], new)
            transpose.graph.remove(transpose, safe=True)
    return hoisted


def merge_decoders(no_past: ir.Model, with_past: ir.Model) -> ir.Model:
    """``decoder_model_merged`` from the two traced decoders (both are consumed)."""
    want = [v.name for v in no_past.graph.outputs]
    if want != [v.name for v in with_past.graph.outputs]:
        raise ExportError("decoder merge: the two decoders have different outputs")
    outer: dict[str, ir.Value] = {}
    for v in [*no_past.graph.inputs, *with_past.graph.inputs]:
        outer.setdefault(v.name, _copy_value(v))
    use_cache = ir.Value(name=USE_CACHE, type=ir.TensorType(ir.DataType.BOOL), shape=ir.Shape([1]))
    shapes = {v.name: v.shape for v in no_past.graph.outputs}
    with_past_shapes = {v.name: v.shape for v in with_past.graph.outputs}
    types = {v.name: v.type for v in no_past.graph.outputs}

    inits: dict[str, ir.Value] = {}
    else_branch = _adopt_branch(no_past, "no_past", outer, inits)
    then_branch = _adopt_branch(with_past, "with_past", outer, inits)
    hoisted = _hoist_transposes([then_branch, else_branch], inits)
    node = ir.Node(
        "",
        "If",
        [use_cache],
        attributes=[
            ir.AttrGraph("then_branch", then_branch),
            ir.AttrGraph("else_branch", else_branch),
        ],
        num_outputs=len(want),
        name="use_cache_branch_if",
    )
    for out, name in zip(node.outputs, want, strict=True):
        out.name, out.type = name, types[name]
        if ".decoder." in name:  # past + new tokens (no past on the first call)
            out.shape = with_past_shapes[name]
        elif ".encoder." in name:  # computed on the first call, empty afterwards
            out.shape = ir.Shape(["batch_size_or_0", *list(shapes[name])[1:]])
        else:
            out.shape = shapes[name]
    graph = ir.Graph(
        inputs=[*outer.values(), use_cache],
        outputs=list(node.outputs),
        nodes=[*hoisted, node],
        initializers=list(inits.values()),
        opset_imports=dict(no_past.opset_imports),
        name="decoder_model_merged",
    )
    return ir.Model(graph, ir_version=no_past.ir_version, producer_name=PRODUCER)
