"""Shapes for the fusions: inferred before matching, undone when nothing fused.

Graphs from other exporters (TorchScript above all) carry almost no ``value_info``, and their
shape arithmetic is computed at run time (``Shape -> Gather -> Div`` for a head size, a Reshape
to ``[B, S, -1, D]``), so a matcher that needs a rank or a static size would refuse every site.
``inferred(model)`` prepares a model for matching, without adding or removing a node:

1. **types and shapes** of every value, from ONNX's shape inference with data propagation
   (non-strict: an op it does not know, such as a contrib op, leaves its outputs as they are);
   symbolic dims keep their names, and unknown ones get ONNX's fresh ``unk__N`` names;
2. **Reshape with -1**: the one dim ONNX leaves unknown is solved from the element count when
   every other dim of the output is an int or a symbol of the input (ONNX's ``unk__N`` names
   included: TorchScript's ``[unk__5, unk__6, 64] -> [unk__5, unk__6, -1, 16]`` gives 4), as
   an int, or as the one symbol of the input left over; then step 1 runs again;
3. **index tensors built from sizes**: small integer values computed from ``Shape`` are
   evaluated symbolically (a named dim stays its name), and the outputs ONNX leaves unknown get
   their dims from them: ``Range(0, S, 1)`` has ``S`` elements, ``Slice(x, 0, S)`` along a
   static axis of ``T`` has ``Min(T, S)`` (the name the dynamo exporter writes), ``Expand`` and
   ``Tile`` by a shape or repeats known in part; then step 1 runs again;
4. **equal dims get one name**: where an elementwise op broadcasts a ``Min(T, S)`` dim
   (``T >= 2``) against ``S``, the graph runs only when the two are equal (``Min(T, S) == 1``
   would mean ``S == 1``), so ``Min(T, S)`` is renamed ``S`` (BERT's positions
   ``[1, Min(512, seq), H]`` added to ``[B, seq, H]``); a ``Concat``'s other axes equal its
   inputs', and its axis is their sum: an exporter's name for them (TorchScript's
   ``Concatpresent.0.key_dim_0``) becomes the inputs' (``batch``, ``past + seq``), so that the
   keys and values of one cache have the same dims;
5. **shape arithmetic that is constant**: small integer/float values computed from ``Shape``
   (and ``Size``) through ``Gather``, ``Slice``, ``Concat``, ``(Un)Squeeze``, ``Cast`` and
   elementwise arithmetic are evaluated with the static dims; where the result is fully known
   it is attached to the value as ``const_value`` (what ``ir.convenience.get_const_tensor``, and
   so every matcher, reads), while the nodes that compute it stay in the graph.

The returned ``Prepared`` restores every value's type and shape as they were (``restore``) and
always drops the constants it attached (``close``), so a pass that fused nothing leaves the
model byte-identical; after a fusion the inferred shapes stay (they are true, and the next pass
can use them).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

logger = logging.getLogger(__name__)

_MAX_ELEMENTS = 64
"""Largest value (elements) that is evaluated as shape arithmetic."""

_INT_TYPES = {ir.DataType.INT64: np.int64, ir.DataType.INT32: np.int32}
_FLOAT_TYPES = {
    ir.DataType.FLOAT: np.float32,
    ir.DataType.DOUBLE: np.float64,
    ir.DataType.FLOAT16: np.float16,
}
_NUMPY_TYPES = {**_INT_TYPES, **_FLOAT_TYPES, ir.DataType.BOOL: np.bool_}

Partial = list  # a 0-D or 1-D value: Python numbers, None where unknown (0-D: one element)


class Prepared:
    """What ``inferred`` changed on a model, to undo it."""

    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self._saved = {v: (v.shape, v.type) for v in _values(model)}
        self._attached: list[ir.Value] = []

    def restore(self) -> None:
        """Every value's shape and type as they were before ``inferred``."""
        for value in _values(self.model):
            if value in self._saved:
                value.shape, value.type = self._saved[value]

    def close(self) -> None:
        """Drop the constants attached to computed values (the graph computes them)."""
        for value in self._attached:
            value.const_value = None
        self._attached.clear()


@contextmanager
def inferred(model: ir.Model) -> Iterator[Prepared]:
    """Infer shapes and attach constant shape arithmetic for the duration of the block."""
    prepared = Prepared(model)
    try:
        _infer(model)
        for graph in model.graphs():
            prepared._attached.extend(_attach_constants(graph))
        yield prepared
    finally:
        prepared.close()


def _values(model: ir.Model) -> Iterator[ir.Value]:
    for graph in model.graphs():
        yield from _graph_values(graph)


def _incomplete(model: ir.Model) -> bool:
    """True when some node output lacks a type, a shape, or a dim with a size or a name that
    is not ONNX's ``unk__N``."""
    for graph in model.graphs():
        for node in graph:
            for v in node.outputs:
                if v.type is None or v.shape is None or any(map(_unknown, v.shape)):
                    return True
    return False


def _infer(model: ir.Model) -> None:
    if not _incomplete(model):
        return
    infer = ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)
    order = list(model.graph.initializers.values())
    try:
        for _ in range(4):
            infer(model)
            refined = _solve_reshapes(model)
            for graph in model.graphs():
                refined |= _refine_indices(graph) | _rename(graph, _equal_dims(graph))
            if not refined:
                return
            _forget_anonymous(model)  # let ONNX carry the refined dims downstream
    finally:  # onnx-ir's wrapper re-adds large initializers at the end: keep their order
        for value in order:
            model.graph.initializers.pop(value.name)
        for value in order:
            model.graph.initializers.add(value)


# -- Reshape with -1 -------------------------------------------------------------------------------
def _factors(dims: list) -> tuple[int, Counter] | None:
    """(product of the int dims, multiset of the symbol names), or None if a dim is unknown."""
    size, names = 1, Counter()
    for d in dims:
        if isinstance(d, int):
            size *= d
        elif d.value is None:
            return None
        else:
            names[d.value] += 1
    return size, names


def _solve_reshapes(model: ir.Model) -> bool:
    solved = False
    for graph in model.graphs():
        for node in graph:
            if node.op_type != "Reshape" or node.domain != "" or not node.inputs:
                continue
            data, out = node.inputs[0], node.outputs[0]
            if data is None or data.shape is None or out.shape is None:
                continue
            have = _factors(list(data.shape))
            if have is None:
                continue
            dims = list(out.shape)  # a dim of the input's (even ``unk__N``) is known here
            unknown = [
                i
                for i, d in enumerate(dims)
                if not isinstance(d, int) and _anonymous(d) and have[1][d.value] == 0
            ]
            if len(unknown) != 1:
                continue
            want = _factors(dims[: unknown[0]] + dims[unknown[0] + 1 :])
            if want is None or want[0] == 0 or have[0] % want[0] or want[1] - have[1]:
                continue
            left = have[1] - want[1]
            if not left:
                dims[unknown[0]] = have[0] // want[0]
            elif left.total() == 1 and have[0] == want[0]:
                dims[unknown[0]] = ir.SymbolicDim(next(iter(left)))
            else:
                continue
            out.shape = ir.Shape(dims)
            solved = True
    return solved


def _anonymous(d: ir.SymbolicDim) -> bool:
    """An unknown dim: no name, or a fresh name from ONNX's inference."""
    return d.value is None or d.value.startswith("unk__")


def _forget_anonymous(model: ir.Model) -> None:
    """Drop ONNX's ``unk__N`` names from node outputs (a kept name would win over a new dim)."""
    for graph in model.graphs():
        for node in graph:
            for v in node.outputs:
                if v.shape is not None and any(_unknown(d) for d in v.shape):
                    v.shape = ir.Shape([None if _unknown(d) else d for d in v.shape])


def _unknown(d: int | ir.SymbolicDim) -> bool:
    return not isinstance(d, int) and _anonymous(d)


# -- index tensors built from sizes ----------------------------------------------------------------
Dim = int | str  # a static size or a named symbol


def _refine_indices(graph: ir.Graph) -> bool:
    """Dims of Range/Slice/Expand/Tile outputs that ONNX leaves unknown (module docstring, 3)."""
    partials = _partials(graph)
    refined = False
    for node in graph:
        if node.domain not in ("", "ai.onnx") or node.op_type not in _INDEX_OPS:
            continue
        out = node.outputs[0]
        if out.shape is None or not any(_unknown(d) for d in out.shape):
            continue
        try:
            dims = _INDEX_OPS[node.op_type](node, partials)
        except (ValueError, IndexError, TypeError):
            dims = None
        if dims is None or len(dims) != out.shape.rank():
            continue
        old = list(out.shape)
        new = [x if _unknown(d) and x is not None else d for d, x in zip(old, dims, strict=True)]
        if new != old:
            out.shape = ir.Shape(new)
            refined = True
    return refined


def _dims(v: ir.Value | None) -> list[Dim | None] | None:
    if v is None or v.shape is None:
        return None
    return [d if isinstance(d, int) else None if _anonymous(d) else d.value for d in v.shape]


def _one(partials: dict, v: ir.Value | None) -> Dim | None:
    p = partials.get(v) if v is not None else None
    return p[0] if p is not None and len(p) == 1 else None


def _range_dims(node: ir.Node, partials: dict) -> list[Dim | None] | None:
    start, limit, delta = (_one(partials, v) for v in node.inputs[:3])
    if start == 0 and delta == 1 and isinstance(limit, str):
        return [limit]
    return None


def _slice_dims(node: ir.Node, partials: dict) -> list[Dim | None] | None:
    dims = _dims(node.inputs[0])
    if dims is None:
        return None
    starts, ends = (partials.get(v) for v in node.inputs[1:3])
    axes = partials.get(node.inputs[3]) if len(node.inputs) > 3 else list(range(len(dims)))
    steps = partials.get(node.inputs[4]) if len(node.inputs) > 4 else [1] * len(dims)
    if None in (starts, ends, axes, steps) or not len(starts) == len(ends) == len(axes):
        return None
    out: list[Dim | None] = list(dims)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        size = dims[int(axis)]
        if start == 0 and step == 1 and isinstance(end, str) and isinstance(size, int):
            out[int(axis)] = f"Min({size}, {end})" if size >= 2 else None
        else:
            out[int(axis)] = None
    return out


def _broadcast(a: list[Dim | None], b: list[Dim | None]) -> list[Dim | None]:
    n = max(len(a), len(b))
    a, b = [1] * (n - len(a)) + a, [1] * (n - len(b)) + b
    return [_broadcast_dim(x, y) for x, y in zip(a, b, strict=True)]


def _broadcast_dim(x: Dim | None, y: Dim | None) -> Dim | None:
    if x == 1 or _min_of(x) == y:  # Min(T, S) against S: equal wherever the graph runs
        return y
    if y == 1 or x == y or _min_of(y) == x:
        return x
    return None


def _min_of(d: Dim | None) -> str | None:
    """``S`` for a dim named ``Min(T, S)`` with ``T >= 2`` (module docstring, 4)."""
    match = _MIN_DIM.fullmatch(d) if isinstance(d, str) else None
    return match[2] if match and int(match[1]) >= 2 else None


def _expand_dims(node: ir.Node, partials: dict) -> list[Dim | None] | None:
    dims, shape = _dims(node.inputs[0]), partials.get(node.inputs[1])
    return None if dims is None or shape is None else _broadcast(dims, shape)


def _tile_dims(node: ir.Node, partials: dict) -> list[Dim | None] | None:
    dims, repeats = _dims(node.inputs[0]), partials.get(node.inputs[1])
    if dims is None or repeats is None or len(dims) != len(repeats):
        return None
    out: list[Dim | None] = []
    for d, r in zip(dims, repeats, strict=True):
        if r == 1 or d == 1:
            out.append(d if r == 1 else r)
        elif isinstance(d, int) and isinstance(r, int):
            out.append(d * r)
        else:
            out.append(None)
    return out


_INDEX_OPS = {
    "Range": _range_dims,
    "Slice": _slice_dims,
    "Expand": _expand_dims,
    "Tile": _tile_dims,
}

_MIN_DIM = re.compile(r"Min\((\d+), (.+)\)")
_BROADCAST_OPS = {
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Where", "And", "Or", "Xor",
    "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual",
}  # fmt: skip


def _equal_dims(graph: ir.Graph) -> dict[str, str]:
    """{name: the name it equals} from broadcasts and Concats (module docstring, 4)."""
    same: dict[str, str] = {}
    for node in graph:
        if node.domain not in ("", "ai.onnx") or node.op_type not in _BROADCAST_OPS | {"Concat"}:
            continue
        shapes = [_dims(v) for v in node.inputs]
        if any(d is None for d in shapes):
            continue
        if node.op_type != "Concat":
            n = max(len(d) for d in shapes)
            for column in zip(*([None] * (n - len(d)) + d for d in shapes), strict=True):
                names = {d for d in column if isinstance(d, str)}
                same.update((name, _min_of(name)) for name in names if _min_of(name) in names)
            continue
        out = _dims(node.outputs[0])
        if out is None or any(len(d) != len(out) for d in shapes):
            continue
        axis = node.attributes.get_int("axis", 0) % len(out)
        for i, d in enumerate(out):
            column = [shape[i] for shape in shapes]
            if not isinstance(d, str) or None in column or d in column:
                continue
            total = " + ".join(column) if all(isinstance(x, str) for x in column) else None
            if i != axis and len(set(column)) == 1 and isinstance(column[0], str):
                same[d] = column[0]
            elif i == axis and len(column) > 1 and total not in (None, d):
                same[d] = total
    return same


def _rename(graph: ir.Graph, same: dict[str, str]) -> bool:
    """Rename dims in every value of ``graph`` (``same``: name -> new name)."""
    renamed = False
    for v in _graph_values(graph):
        if v.shape is None or not any(not isinstance(d, int) and d.value in same for d in v.shape):
            continue
        v.shape = ir.Shape(
            [d if isinstance(d, int) or d.value not in same else same[d.value] for d in v.shape]
        )
        renamed = True
    return renamed


def _graph_values(graph: ir.Graph) -> Iterator[ir.Value]:
    yield from graph.inputs
    for node in graph:
        yield from node.outputs


# -- constant shape arithmetic ---------------------------------------------------------------------
def _attach_constants(graph: ir.Graph) -> list[ir.Value]:
    """Attach the shape arithmetic that is fully known as ``const_value`` (module docstring, 5);
    return the values given one."""
    attached: list[ir.Value] = []
    for out, result in _partials(graph).items():
        node = out.producer()
        if node is None or node.op_type == "Constant" or out.const_value is not None:
            continue
        if not all(_number(x) for x in result):
            continue
        scalar = out.shape is not None and out.shape.rank() == 0
        array = np.array(result, dtype=_NUMPY_TYPES[out.dtype])
        out.const_value = ir.tensor(array.reshape(()) if scalar else array, name=out.name)
        attached.append(out)
    return attached


def _partials(graph: ir.Graph) -> dict[ir.Value, Partial]:
    """The small 0-D/1-D integer and float values the graph computes from shapes, in part: a
    number, a dim's name (str) or None (unknown) per element."""
    known: dict[ir.Value, Partial] = {}

    def partial(v: ir.Value | None) -> Partial | None:
        if v is None:
            return None
        if v in known:
            return known[v]
        if v.shape is not None and v.shape.rank() is not None and v.shape.rank() > 1:
            return None
        array = _small_constant(v)
        if array is None or array.ndim > 1:
            return None
        return [x.item() for x in array.reshape(-1)]

    for v in graph.initializers.values():
        if (value := partial(v)) is not None:
            known[v] = value
    for node in graph:
        if node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
            continue
        out = node.outputs[0]
        if out.dtype not in _NUMPY_TYPES:
            continue
        if node.op_type == "Constant" or out.const_value is not None:
            result = partial(out)
        else:
            try:
                result = _evaluate(node, partial)
            except (ValueError, IndexError, TypeError, ZeroDivisionError, OverflowError):
                result = None
        if result is not None and len(result) <= _MAX_ELEMENTS:
            known[out] = result
    return known


def _number(x: object) -> bool:
    return isinstance(x, (int, float))


def _small_constant(v: ir.Value) -> np.ndarray | None:
    """The value of a small numeric initializer or Constant node (read without touching it:
    ``get_const_tensor`` names a Constant's tensor)."""
    tensor = v.const_value
    node = v.producer()
    if tensor is None and node is not None and node.op_type == "Constant" and node.domain == "":
        attr = next(iter(node.attributes.values()), None)
        if attr is None or attr.is_ref():
            return None
        if attr.name in ("value_int", "value_ints"):
            return np.array(attr.value, dtype=np.int64)
        if attr.name in ("value_float", "value_floats"):
            return np.array(attr.value, dtype=np.float32)
        if attr.name == "value":
            tensor = attr.value
    if tensor is None or tensor.dtype not in _NUMPY_TYPES or tensor.size > _MAX_ELEMENTS:
        return None
    return tensor.numpy()


def _evaluate(node: ir.Node, partial) -> Partial | None:  # noqa: ANN001
    op, ins = node.op_type, node.inputs
    if op == "Shape":
        data = ins[0]
        if data is None or data.shape is None:
            return None
        dims = [d if isinstance(d, int) else None if _anonymous(d) else d.value for d in data.shape]
        start = node.attributes.get_int("start", 0)
        end = node.attributes.get_int("end", len(dims))
        return dims[slice(start, end)]
    if op == "Size":
        data = ins[0]
        if data is None or data.shape is None or not all(isinstance(d, int) for d in data.shape):
            return None
        return [math.prod(data.shape)]
    args = [partial(v) if v is not None else None for v in ins]
    if op in ("Identity", "Unsqueeze", "Squeeze", "Reshape") and args and args[0] is not None:
        return args[0]
    if op == "Cast" and args[0] is not None:
        to = node.attributes.get_int("to", 0)
        if ir.DataType(to) in _INT_TYPES:
            return [x if x is None or isinstance(x, str) else int(x) for x in args[0]]
        return [float(x) if _number(x) else None for x in args[0]]
    if op == "Gather" and args[0] is not None and args[1] is not None:
        if node.attributes.get_int("axis", 0) != 0 or not all(_number(i) for i in args[1]):
            return None
        return [args[0][int(i)] for i in args[1]]
    if op == "Slice" and args[0] is not None and all(a is not None for a in args[1:3]):
        steps = args[4] if len(args) > 4 and args[4] is not None else [1]
        if len(args[1]) != 1 or not all(_number(x) for x in args[1] + args[2] + steps):
            return None
        start, end, step = int(args[1][0]), int(args[2][0]), int(steps[0])
        return args[0][slice(start, end, step)]
    if op == "Concat" and args and all(a is not None for a in args):
        return [x for a in args for x in a]
    if op in _ARITHMETIC and len(args) == 2 and all(a is not None for a in args):
        a, b = args
        if len(a) != len(b) and 1 not in (len(a), len(b)):
            return None
        n = max(len(a), len(b))
        a, b = a * n if len(a) == 1 else a, b * n if len(b) == 1 else b
        if op == "Div" and 0 in b:
            return None
        dtype = _NUMPY_TYPES[node.outputs[0].dtype]
        return [
            _ARITHMETIC[op](dtype(x), dtype(y)).item() if _number(x) and _number(y) else None
            for x, y in zip(a, b, strict=True)
        ]
    if op == "Equal" and len(args) == 2 and all(a is not None for a in args):
        return _elementwise(_equal, *args)
    if op == "Where" and len(args) == 3 and all(a is not None for a in args):
        return _elementwise(lambda c, x, y: None if c is None else x if c else y, *args)
    if op in _UNARY and args and args[0] is not None:
        dtype = _NUMPY_TYPES[node.outputs[0].dtype]
        return [_UNARY[op](dtype(x)).item() if _number(x) else None for x in args[0]]
    if op == "ConstantOfShape" and args[0] is not None and all(_number(x) for x in args[0]):
        value = node.attributes.get_tensor("value")
        fill = value.numpy().reshape(-1)[0].item() if value is not None else 0
        return [fill] * math.prod(int(x) for x in args[0]) if len(args[0]) == 1 else None
    return None


def _elementwise(f, *args: Partial) -> Partial | None:  # noqa: ANN001
    n = max(len(a) for a in args)
    if any(len(a) not in (1, n) for a in args):
        return None
    return [f(*(a[i] if len(a) > 1 else a[0] for a in args)) for i in range(n)]


def _equal(x: object, y: object) -> bool | None:
    """``x == y`` where it is known: a dim's name never equals a negative number."""
    if _number(x) and _number(y) or isinstance(x, str) and x == y:
        return x == y
    number = y if isinstance(x, str) else x
    if isinstance(x, str) != isinstance(y, str) and _number(number) and number < 0:
        return False
    return None


def _div(x, y):  # noqa: ANN001, ANN202
    if np.issubdtype(type(x), np.integer):
        return np.trunc(x / y).astype(type(x))  # ONNX integer Div truncates
    return x / y


_ARITHMETIC = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": _div,
    "Pow": np.power,
}
_UNARY = {"Sqrt": np.sqrt, "Reciprocal": np.reciprocal, "Neg": np.negative}
