"""Shapes for the fusions: inferred before matching, undone when nothing fused.

Graphs from other exporters (TorchScript above all) carry almost no ``value_info``, and their
shape arithmetic is computed at run time (``Shape -> Gather -> Div`` for a head size, a Reshape
to ``[B, S, -1, D]``), so a matcher that needs a rank or a static size would refuse every site.
``inferred(model)`` prepares a model for matching, without adding or removing a node:

1. **types and shapes** of every value, from ONNX's shape inference with data propagation
   (non-strict: an op it does not know, such as a contrib op, leaves its outputs as they are);
   symbolic dims keep their names, and unknown ones get ONNX's fresh ``unk__N`` names;
2. **Reshape with -1**: the one dim ONNX leaves unknown is solved from the element count when
   every other dim of input and output is an int or a named symbol and the symbols of both
   sides are the same multiset (``[B,S,64] -> [B,S,-1,16]`` gives 4), then step 1 runs again;
3. **shape arithmetic that is constant**: small integer/float values computed from ``Shape``
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
_NUMPY_TYPES = {**_INT_TYPES, **_FLOAT_TYPES}

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
        yield from graph.inputs
        for node in graph:
            yield from node.outputs


def _incomplete(model: ir.Model) -> bool:
    """True when some node output lacks a type, a shape, or a dim with a name or size."""
    for graph in model.graphs():
        for node in graph:
            for v in node.outputs:
                if v.type is None or v.shape is None:
                    return True
                if any(not isinstance(d, int) and d.value is None for d in v.shape):
                    return True
    return False


def _infer(model: ir.Model) -> None:
    if not _incomplete(model):
        return
    infer = ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)
    order = list(model.graph.initializers.values())
    try:
        for _ in range(3):
            infer(model)
            if not _solve_reshapes(model):
                return
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
            dims = list(out.shape)
            unknown = [i for i, d in enumerate(dims) if not isinstance(d, int) and _anonymous(d)]
            if len(unknown) != 1:
                continue
            rest = dims[: unknown[0]] + dims[unknown[0] + 1 :]
            have, want = _factors(list(data.shape)), _factors(rest)
            if have is None or want is None or have[1] != want[1] or want[0] == 0:
                continue
            if have[0] % want[0]:
                continue
            dims[unknown[0]] = have[0] // want[0]
            out.shape = ir.Shape(dims)
            solved = True
    return solved


def _anonymous(d: ir.SymbolicDim) -> bool:
    """An unknown dim: no name, or a fresh name from ONNX's inference."""
    return d.value is None or d.value.startswith("unk__")


# -- constant shape arithmetic ---------------------------------------------------------------------
def _attach_constants(graph: ir.Graph) -> list[ir.Value]:
    """Evaluate shape arithmetic (see the module docstring); return the values given a
    ``const_value``."""
    known: dict[ir.Value, Partial] = {}
    attached: list[ir.Value] = []

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

    for node in graph:
        if node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
            continue
        out = node.outputs[0]
        if out.dtype not in _NUMPY_TYPES or node.op_type == "Constant" or out.const_value:
            continue
        try:
            result = _evaluate(node, partial)
        except (ValueError, IndexError, TypeError, ZeroDivisionError, OverflowError):
            result = None
        if result is None or len(result) > _MAX_ELEMENTS:
            continue
        known[out] = result
        if all(x is not None for x in result):
            scalar = out.shape is not None and out.shape.rank() == 0
            array = np.array(result, dtype=_NUMPY_TYPES[out.dtype])
            out.const_value = ir.tensor(array.reshape(()) if scalar else array, name=out.name)
            attached.append(out)
    return attached


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
        dims = [d if isinstance(d, int) else None for d in data.shape]
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
        convert = int if ir.DataType(to) in _INT_TYPES else float
        return [None if x is None else convert(x) for x in args[0]]
    if op == "Gather" and args[0] is not None and args[1] is not None:
        if node.attributes.get_int("axis", 0) != 0 or None in args[1]:
            return None
        return [args[0][int(i)] for i in args[1]]
    if op == "Slice" and args[0] is not None and all(a is not None for a in args[1:3]):
        steps = args[4] if len(args) > 4 and args[4] is not None else [1]
        if len(args[1]) != 1 or None in args[1] + args[2] + steps:
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
            None if x is None or y is None else _ARITHMETIC[op](dtype(x), dtype(y)).item()
            for x, y in zip(a, b, strict=True)
        ]
    if op in _UNARY and args and args[0] is not None:
        dtype = _NUMPY_TYPES[node.outputs[0].dtype]
        return [None if x is None else _UNARY[op](dtype(x)).item() for x in args[0]]
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
