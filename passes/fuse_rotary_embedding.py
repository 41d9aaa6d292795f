"""Rotary embedding (rotate_half form) -> ``com.microsoft:RotaryEmbedding``.

Rewrite::

    x1, x2 = Slice(x, 0:D/2), Slice(x, D/2:)  | Split(x, 2, axis=-1)
    rot    = Concat(Neg(x2), x1, axis=-1)
    y      = x * cos + rot * sin                 (any operand order)
      with cos = [Unsqueeze(axis)] [Cast] [Mul(scale)] Cos(Concat(f, f, axis=-1)), sin likewise
  ->
    y = RotaryEmbedding(x, pos, cos_table, sin_table, interleaved=0)
      with cos_table = Reshape(Cos(f) [* scale] [Cast], [-1, D/2]), sin_table likewise,
           pos = Reshape(Range(0, rows(cos_table)), shape(f)[:-1])

``f`` is the angle tensor position * inv_freq, however the model computes it ([B,S,D/2] or
[S,D/2]). The tables hold one row per token of this call and ``pos`` indexes them in order, so
the op sees exactly the angles of the original graph: any positions (offsets, MRoPE sections
that agree for text), no max-length table and no extra weights. The tables are computed once
per angle tensor and shared by q and k of every layer. ``x`` may be [B,H,S,D] (unsqueeze at
axis 1) or [B,S,H,D] (unsqueeze at axis 2, run on a [B,S,H*D] view with ``num_heads``).

Does not fire (``skipped:<reason>``): the halves are not an exact split of the last axis (partial
rotary, interleaved pairs); cos and sin do not come from Cos/Sin of one duplicated angle tensor
(cached tables gathered by position, model inputs); the table does not line up with x's
sequence axis; head size unknown or odd.
Scope: the main graph; the dead cos/sin computation is removed.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from qgraph.passes._rewrite import (
    MS,
    RulePass,
    const_ints,
    fail,
    int_attr,
    ints_attr,
    is_last_axis,
    producer,
    rank,
    same_dim,
    scalar,
    static_dim,
    static_dims,
)

INT64 = ir.DataType.INT64


def _angles(value: ir.Value, trig: str) -> tuple | None:
    """(f, scale, cast_to, unsqueeze axis) of ``[Unsqueeze][Cast][Mul] trig(Concat(f, f))``."""
    scale, cast_to, axis = 1.0, None, None
    if (node := producer(value, "Unsqueeze")) is not None:
        axes = const_ints(node.inputs[1]) if len(node.inputs) > 1 else ints_attr(node, "axes")
        if axes is None or len(axes) != 1:
            return None
        axis, value = axes[0], node.inputs[0]
    if (node := producer(value, "Cast")) is not None:
        cast_to, value = int_attr(node, "to", 0), node.inputs[0]
    if (node := producer(value, "Mul")) is not None:
        for i in (0, 1):
            if (s := scalar(node.inputs[i])) is not None:
                scale, value = s, node.inputs[1 - i]
                break
        else:
            return None
    node = producer(value, trig)
    cat = producer(node.inputs[0], "Concat") if node is not None else None
    if cat is None or len(cat.inputs) != 2 or cat.inputs[0] is not cat.inputs[1]:
        return None
    f = cat.inputs[0]
    if not is_last_axis(int_attr(cat, "axis", 0), rank(f)):
        return None
    return f, scale, cast_to, axis


def _halves(x1: ir.Value, x2: ir.Value, width: int) -> bool:
    """x1 = x[..., :D/2] and x2 = x[..., D/2:] along the last axis of a rank-4 x."""
    a, b = x1.producer(), x2.producer()
    if a.op_type == "Split":
        split = const_ints(a.inputs[1]) if len(a.inputs) > 1 else ints_attr(a, "split")
        even = split == [width // 2] * 2 or (split is None and len(a.outputs) == 2)
        return a is b and even and is_last_axis(int_attr(a, "axis", 0), 4)
    for node, (lo, hi) in ((a, (0, width // 2)), (b, (width // 2, width))):
        ins = [*node.inputs[1:], None, None]
        starts, ends = const_ints(ins[0]), const_ints(ins[1])
        axes = const_ints(ins[2]) if ins[2] is not None else [0]
        steps = const_ints(ins[3]) if ins[3] is not None else [1]
        if None in (starts, ends, axes, steps) or len(starts) != 1 or steps != [1]:
            return False
        if not (len(axes) == 1 and is_last_axis(axes[0], 4) and starts[0] == lo):
            return False
        if not (ends[0] == hi or (hi == width and ends[0] >= width)):
            return False
    return True


class _Rotary(pattern.RewriteRuleClassBase):
    def __init__(self, name: str, *, split: bool) -> None:
        super().__init__(name, remove_nodes=True)
        self._split = split
        self._tables: dict[tuple, tuple[ir.Value, ir.Value, ir.Value]] = {}

    def setup(self) -> None:
        self._tables.clear()

    def cleanup(self) -> None:
        self._tables.clear()

    def pattern(self, op, x, cos, sin):
        if self._split:
            x1, x2 = op.Split(x, _allow_other_inputs=True, _outputs=["x1", "x2"])
        else:
            x1 = op.Slice(x, _allow_other_inputs=True, _outputs=["x1"])
            x2 = op.Slice(x, _allow_other_inputs=True, _outputs=["x2"])
        rot = op.Concat(op.Neg(x2), x1, _outputs=["rot"])
        return op.Add(op.Mul(x, cos), op.Mul(rot, sin))

    def check(self, context, x, cos, sin, x1, x2, rot, **_):
        width = static_dim(x, -1)
        if rank(x) != 4 or width is None or width % 2:
            return fail("input is not 4-D with an even static head size")
        if not is_last_axis(int_attr(rot.producer(), "axis", 0), 4) or not _halves(x1, x2, width):
            return fail("rotate_half does not split the last axis in halves")
        c, s = _angles(cos, "Cos"), _angles(sin, "Sin")
        if c is None or c != s:
            return fail("cos/sin are not Cos/Sin of one duplicated angle tensor")
        f, _, _, axis = c
        layouts = {(3, 1): 2, (3, 2): 1, (2, None): 2}
        seq_axis = layouts.get((rank(f), axis))
        if seq_axis is None or static_dim(f, -1) != width // 2:
            return fail("angle tensor does not broadcast over the heads")
        if not same_dim(f, -2, x, seq_axis):
            return fail("angle tensor does not line up with the sequence axis")
        if axis == 2 and static_dim(x, 2) is None:
            return fail("head count unknown")
        return True

    def _table(self, op, f: ir.Value, scale: float, cast_to: int | None, width: int):
        key = (f, scale, cast_to)
        if key not in self._tables:
            pair = []
            for trig in (op.Cos, op.Sin):
                t = trig(f)
                if scale != 1.0:
                    t = op.Mul(t, op.Constant(value=ir.tensor(scale, dtype=f.dtype)))
                if cast_to is not None:
                    t = op.Cast(t, to=cast_to)
                pair.append(op.Reshape(t, op.Constant(value_ints=[-1, width // 2])))
            lead = static_dims(f, 0, -1)
            if lead is not None:
                grid = np.arange(int(np.prod(lead)), dtype=np.int64).reshape(lead)
                pos = op.Constant(value=ir.tensor(grid if rank(f) == 3 else grid[None]))
            else:
                no_dims = op.Constant(value=ir.tensor(np.zeros(0, dtype=np.int64)))
                rows = op.Reshape(op.Shape(pair[0], start=0, end=1), no_dims)
                zero, one = (op.Constant(value=ir.tensor(v, dtype=INT64)) for v in (0, 1))
                shape = (
                    op.Shape(f, start=0, end=-1)
                    if rank(f) == 3
                    else op.Constant(value_ints=[1, -1])
                )
                pos = op.Reshape(op.Range(zero, rows, one), shape)
            self._tables[key] = (pair[0], pair[1], pos)
        return self._tables[key]

    def rewrite(self, op, x, cos, **_):
        f, scale, cast_to, axis = _angles(cos, "Cos")
        width = static_dim(x, -1)
        cos_t, sin_t, pos = self._table(op, f, scale, cast_to, width)
        if rank(f) != 3 or not same_dim(f, 0, x, 0):
            batch = static_dims(x, 0, 1)
            batch = op.Constant(value_ints=batch) if batch else op.Shape(x, start=0, end=1)
            pos = op.Expand(pos, op.Concat(batch, op.Constant(value_ints=[1]), axis=0))
        if axis != 2:
            return op.RotaryEmbedding(x, pos, cos_t, sin_t, interleaved=0, _domain=MS)
        heads = static_dim(x, 2)
        x3 = op.Reshape(x, op.Constant(value_ints=[0, 0, -1]))
        y3 = op.RotaryEmbedding(x3, pos, cos_t, sin_t, interleaved=0, num_heads=heads, _domain=MS)
        dims = static_dims(x)
        return op.Reshape(y3, op.Constant(value_ints=dims) if dims else op.Shape(x))


class FuseRotaryEmbedding(RulePass):
    """x*cos + rotate_half(x)*sin -> RotaryEmbedding with per-call cos/sin tables."""

    name = "fuse-rotary-embedding"
    rules = [
        _Rotary.rule(f"rotary-{'split' if split else 'slice'}", split=split)
        for split in (False, True)
    ]
