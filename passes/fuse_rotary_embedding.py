"""Rotary embedding (rotate_half form) -> ``com.microsoft:RotaryEmbedding``.

Rewrite::

    x1, x2 = Slice(x, 0:D/2), Slice(x, D/2:)  | Split(x, 2 equal halves, axis=-1)
                                              | SequenceAt(SplitToSequence(x, D/2, axis=-1), 0/1)
    rot    = Concat(Neg(x2), x1, axis=-1)
    y      = x * cos + rot * sin                 (any operand order)
      with cos = [Unsqueeze(axis)] ew(c), sin likewise, where ew is any chain of Cast,
           Mul(scalar) and identity Transposes, and c is one of
        (a) angles: Cos(Concat(f, f, axis=-1))
        (b) table:  Gather(T, position_ids, axis=0) | GatherND(T, Unsqueeze(position_ids, -1)),
                    T = [Slice(rows 0:n)] ew(Cos(Concat(g, g))) (computed) or a constant
                    [max_pos, D] whose two halves are equal
  ->
    y = RotaryEmbedding(x, pos, cos_table, sin_table, interleaved=0)
      (a) cos_table = Reshape(ew(Cos(f)), [-1, D/2]), sin_table likewise,
          pos = Reshape(Range(0, rows(cos_table)), shape(f)[:-1])
      (b) cos_table = ew(Cos(g)) or ew(T[:, :D/2]) (a new initializer), sin_table likewise,
          pos = position_ids (int64, broadcast to x's batch)

``f`` is the angle tensor position * inv_freq, however the model computes it ([B,S,D/2] or
[S,D/2]: Mul, MatMul + Transpose, with Hugging Face's ``attention_scaling`` as the Mul). In (a)
the tables hold one row per token of this call and ``pos`` indexes them in order, so the op sees
exactly the angles of the original graph: any positions (offsets, MRoPE sections that agree for
text), no max-length table and no extra weights. In (b) (Hugging Face's cached rotary) the op
reads the half table at the real position_ids: equal for every position the original Gather
accepts, 0 <= position < rows (a negative index, which Gather wraps, is not a position; the
op also wants no more tokens than rows).
Elementwise Cast/Mul(scalar) commute with the duplication and the row gather, so they are
replayed, in order, on the half table. Tables are built once per source and shared by q and k of
every layer. ``x`` may be [B,H,S,D] (unsqueeze at axis 1) or [B,S,H,D] (unsqueeze at axis 2, run
on a [B,S,H*D] view with ``num_heads``). The half size D/2 of the Slices / Split may be a
constant or computed from static dims (``Shape -> Gather -> Div(2)``, Cast, Unsqueeze...: the
TorchScript spelling of ``x[..., : x.shape[-1] // 2]``; ``qgraph.shapes`` makes it read as
one). cos/sin rows of batch 1 are broadcast to x's batch.

Partial rotation (the rotary on the first ``rd`` channels, the rest passed through)::

    y = Concat(rotary(Slice(x, 0:rd)), Slice(x, rd:), axis=-1)
  -> y = RotaryEmbedding(x, pos, cos_table, sin_table, rotary_embedding_dim=rd, num_heads=H)

for a [B,H,S,D] ``x`` with H static (the contrib op needs ``num_heads`` with
``rotary_embedding_dim``; its kernel copies channels rd: through unchanged); otherwise (the
[B,S,H,D] view, unknown H) the RotaryEmbedding on the sliced channels stays with its
Slice/Concat.

Does not fire (``skipped:<reason>``): the halves are not an exact split of the last axis
(interleaved pairs, a half size that depends on an unknown dim); cos and sin are not Cos/Sin of
one duplicated angle tensor nor rows gathered from a duplicated table (model inputs, a table that
is not a constant, a constant table whose halves differ, cos and sin gathered at different
positions); the angles or positions do not line up with x's sequence axis; head size unknown or
odd.
Scope: the main graph; the dead cos/sin computation is removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from qgraph.passes._rewrite import (
    MS,
    RulePass,
    apply_rules,
    const_array,
    fail,
    int_attr,
    ints_attr,
    is_last_axis,
    producer,
    rank,
    remove_dead,
    same_dim,
    static_dim,
    static_dims,
)

INT64 = ir.DataType.INT64


# -- small integer constants (shape arithmetic reads as constant: ``qgraph.shapes``) -------------
def _ints(value: ir.Value | None) -> list[int] | None:
    arr = const_array(value)
    return None if arr is None or arr.dtype.kind not in "iu" else [int(v) for v in arr.reshape(-1)]


def _slice_range(node: ir.Node, width: int, axis_rank: int) -> tuple[int, int] | None:
    """(start, end) of a step-1 Slice of the last axis of a tensor whose last dim is ``width``."""
    if node.op_type != "Slice" or len(node.inputs) < 3:
        return None
    ins = [*node.inputs[1:], None, None]
    starts, ends = _ints(ins[0]), _ints(ins[1])
    axes = _ints(ins[2]) if ins[2] is not None else [axis_rank - 1]
    steps = _ints(ins[3]) if ins[3] is not None else [1]
    if None in (starts, ends, axes, steps) or len(starts) != 1 or len(ends) != 1:
        return None
    if steps != [1] or len(axes) != 1 or not is_last_axis(axes[0], axis_rank):
        return None
    lo, hi = (min(max(v + width if v < 0 else v, 0), width) for v in (starts[0], ends[0]))
    return lo, hi


def _halves(x1: ir.Value, x2: ir.Value, width: int) -> bool:
    """x1 = x[..., :D/2] and x2 = x[..., D/2:] along the last axis of a rank-4 x."""
    a, b = x1.producer(), x2.producer()
    if a.op_type == "SequenceAt":
        parts = a.inputs[0].producer()
        if b.inputs[0].producer() is not parts or not is_last_axis(int_attr(parts, "axis", 0), 4):
            return False
        split = _ints(parts.inputs[1]) if len(parts.inputs) > 1 else None
        if split not in ([width // 2], [width // 2] * 2):  # absent: chunks of 1
            return False
        return (_ints(a.inputs[1]), _ints(b.inputs[1])) in (([0], [1]), ([-2], [-1]))
    if a.op_type == "Split":
        if a is not b or len(a.outputs) != 2 or not is_last_axis(int_attr(a, "axis", 0), 4):
            return False
        if len(a.inputs) > 1 and a.inputs[1] is not None:
            return _ints(a.inputs[1]) == [width // 2] * 2
        split = ints_attr(a, "split")
        return split is None or split == [width // 2] * 2  # none: equal parts (num_outputs)
    half = width // 2
    return _slice_range(a, width, 4) == (0, half) and _slice_range(b, width, 4) == (half, width)


# -- where cos and sin come from -------------------------------------------------------------------
@dataclass(frozen=True)
class _Source:
    """cos (or sin) as ``[Unsqueeze(axis)] ew(c)``: ``kind`` is "angles" (c = trig(Concat(f, f)),
    ``base`` = f), "rows" (c = Gather(ew(trig(Concat(g, g)))), ``base`` = g) or "table" (c =
    Gather(ew(T)), ``base`` = the constant T). ``ops`` are the elementwise steps after trig (or
    the table), in order: ("cast", to) or ("mul", scale, dtype)."""

    kind: str
    base: ir.Value
    ops: tuple[tuple, ...]
    axis: int | None
    positions: ir.Value | None


def _source(value: ir.Value, trig: str) -> _Source | None:
    ops: list[tuple] = []
    axis = positions = None
    while True:
        node = value.producer()
        if node is None or node.domain not in ("", "ai.onnx"):
            break
        op = node.op_type
        if op == "Unsqueeze" and axis is None and positions is None:
            axes = _ints(node.inputs[1]) if len(node.inputs) > 1 else ints_attr(node, "axes")
            if axes is None or len(axes) != 1:
                return None
            axis = axes[0]
        elif op == "Cast":
            ops.append(("cast", int_attr(node, "to", 0)))
        elif op == "Mul":
            for i in (0, 1):
                arr = const_array(node.inputs[i])
                if arr is not None and arr.size == 1 and arr.dtype.kind == "f":
                    ops.append(("mul", float(arr.reshape(())), ir.DataType.from_numpy(arr.dtype)))
                    value = node.inputs[1 - i]
                    break
            else:
                return None
            continue
        elif op == "Transpose" and (perm := ints_attr(node, "perm")) == sorted(perm or [0]):
            pass  # identity permutation (dynamo writes one around its index gathers)
        elif op in ("Gather", "GatherND") and positions is None:
            if op == "Gather" and int_attr(node, "axis", 0) != 0:
                return None
            positions = node.inputs[1] if op == "Gather" else _nd_positions(node)
            if positions is None:
                return None
            if positions.dtype not in (INT64, ir.DataType.INT32) or rank(positions) not in (1, 2):
                return None
        elif op == "Slice" and positions is not None:  # table[:n]: the rows Gather may read
            ins = [*node.inputs[1:], None, None]
            axes = _ints(ins[2]) if ins[2] is not None else [0]
            steps = _ints(ins[3]) if ins[3] is not None else [1]
            if _ints(ins[0]) != [0] or axes not in ([0], [-2]) or steps != [1]:
                return None
        else:
            break
        value = node.inputs[0]
    ops.reverse()
    node = producer(value, trig)
    cat = producer(node.inputs[0], "Concat") if node is not None else None
    if cat is not None and len(cat.inputs) == 2 and cat.inputs[0] is cat.inputs[1]:
        f = cat.inputs[0]
        if not is_last_axis(int_attr(cat, "axis", 0), rank(f)):
            return None
        if positions is not None and rank(f) != 2:
            return None
        return _Source("angles" if positions is None else "rows", f, tuple(ops), axis, positions)
    if node is None and positions is not None and rank(value) == 2:
        return _Source("table", value, tuple(ops), axis, positions)
    return None


def _nd_positions(node: ir.Node) -> ir.Value | None:
    """``p`` of ``GatherND(T, Unsqueeze(p, -1))``, dynamo's ``T[p]``: Concat of one input and
    ``Expand(p, Shape(Max(p)))`` (a broadcast of p with itself) around the Unsqueeze allowed."""
    if int_attr(node, "batch_dims", 0) != 0:
        return None
    index = node.inputs[1]
    if (cat := producer(index, "Concat")) is not None and len(cat.inputs) == 1:
        index = cat.inputs[0]
    unsqueeze = producer(index, "Unsqueeze")
    if unsqueeze is None or len(unsqueeze.inputs) < 2 or _ints(unsqueeze.inputs[1]) is None:
        return None
    p = unsqueeze.inputs[0]
    if (expand := producer(p, "Expand")) is not None:
        shape = producer(expand.inputs[1], "Shape")
        whole = shape is not None and int_attr(shape, "start", 0) == 0
        source = shape.inputs[0] if whole and "end" not in shape.attributes else None
        if (top := producer(source, "Max")) is not None and len(top.inputs) == 1:
            source = top.inputs[0]
        if source is not expand.inputs[0]:
            return None
        p = expand.inputs[0]
    if rank(p) is None or _ints(unsqueeze.inputs[1]) not in ([-1], [rank(p)]):
        return None
    return p


def _duplicated(table: ir.Value) -> bool:
    """A constant [rows, D] whose two halves along D are equal."""
    arr = const_array(table)
    if arr is None or arr.ndim != 2 or arr.shape[1] % 2:
        return False
    half = arr.shape[1] // 2
    return bool(np.array_equal(arr[:, :half], arr[:, half:]))


# Layouts: (rank of the per-token value, unsqueeze axis) -> x's sequence axis.
_LAYOUTS = {(3, 1): 2, (3, 2): 1, (2, None): 2}


def _check_source(c: _Source | None, s: _Source | None, x: ir.Value, width: int):
    if c is None or s is None or (c.kind, c.axis) != (s.kind, s.axis):
        return fail("cos/sin are not Cos/Sin of one duplicated angle tensor")
    if c.kind == "angles" and c != s:
        return fail("cos/sin are not Cos/Sin of one duplicated angle tensor")
    if c.kind != "angles" and c.positions is not s.positions:
        return fail("cos and sin rows are gathered at different positions")
    if c.kind == "rows" and (c.base is not s.base or c.ops != s.ops):
        return fail("cos/sin are not Cos/Sin of one duplicated angle tensor")
    if c.kind == "table":
        if static_dim(c.base, -1) != width or static_dim(s.base, -1) != width:
            return fail("cos/sin tables are not as wide as the head")
        if not same_dim(c.base, 0, s.base, 0):
            return fail("cos/sin tables have different lengths")
        if const_array(c.base) is None or const_array(s.base) is None:
            return fail("cos/sin tables are not constants")
        if not (_duplicated(c.base) and _duplicated(s.base)):
            return fail("cos/sin table halves differ")
    if c.positions is None:
        f = c.base
        seq, batch, per_token = (f, -2), (f, 0) if rank(f) == 3 else None, rank(f)
        if static_dim(f, -1) != width // 2:
            return fail("angle tensor does not broadcast over the heads")
    else:
        p = c.positions
        seq, batch, per_token = (p, -1), (p, 0) if rank(p) == 2 else None, rank(p) + 1
        if c.kind == "rows" and static_dim(c.base, -1) != width // 2:
            return fail("angle tensor does not broadcast over the heads")
    seq_axis = _LAYOUTS.get((per_token, c.axis))
    if seq_axis is None:
        return fail("angle tensor does not broadcast over the heads")
    if not same_dim(*seq, x, seq_axis):
        return fail("angle tensor does not line up with the sequence axis")
    if batch is not None and static_dim(*batch) not in (None, 1, static_dim(x, 0)):
        return fail("angle tensor does not line up with the batch axis")
    if c.axis == 2 and static_dim(x, 2) is None:
        return fail("head count unknown")
    return True


def _unsliced(x: ir.Value) -> ir.Value:
    """The tensor a last-axis Slice of ``x`` was cut from (same leading dims), else ``x``: a
    partial rotation's Shape reads the whole tensor, so that its Slice can merge away."""
    node = x.producer()
    width = static_dim(node.inputs[0], -1) if node is not None and node.inputs else None
    if width is not None and _slice_range(node, width, 4) is not None:
        return node.inputs[0]
    return x


class _Rotary(pattern.RewriteRuleClassBase):
    def __init__(self, name: str, *, halves: str) -> None:
        super().__init__(name, remove_nodes=True)
        self._halves = halves
        self._tables: dict[tuple, tuple[ir.Value, ir.Value, ir.Value]] = {}

    def setup(self) -> None:
        self._tables.clear()

    def cleanup(self) -> None:
        self._tables.clear()

    def pattern(self, op, x, cos, sin):
        if self._halves == "split":
            x1, x2 = op.Split(x, _allow_other_inputs=True, _outputs=["x1", "x2"])
        elif self._halves == "sequence":  # dynamo's chunk: SplitToSequence + SequenceAt
            parts = op.SplitToSequence(x, _allow_other_inputs=True)
            x1 = op.SequenceAt(parts, _allow_other_inputs=True, _outputs=["x1"])
            x2 = op.SequenceAt(parts, _allow_other_inputs=True, _outputs=["x2"])
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
        return _check_source(_source(cos, "Cos"), _source(sin, "Sin"), x, width)

    @staticmethod
    def _replay(op, t, ops: tuple[tuple, ...], dtype: ir.DataType | None = None):
        """``ops`` applied to ``t``; a Cast to ``t``'s own type is dropped when ``dtype`` (the
        type of ``t``) is given."""
        for step in ops:
            if step[0] == "mul" and step[1] != 1.0:
                t = op.Mul(t, op.Constant(value=ir.tensor(step[1], dtype=step[2])))
            elif step[0] == "cast" and step[1] != dtype:
                t, dtype = op.Cast(t, to=step[1]), dtype and ir.DataType(step[1])
        return t

    def _angle_tables(self, op, src: _Source, width: int):
        f = src.base
        key = (f, src.ops)
        if key not in self._tables:
            pair = []
            for trig in (op.Cos, op.Sin):
                t = self._replay(op, trig(f), src.ops)
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

    def _gathered_tables(self, op, c: _Source, s: _Source, width: int):
        key = (c.kind, c.base, s.base, c.ops, s.ops, c.positions)
        if key not in self._tables:
            pair = []
            for src, trig in ((c, op.Cos), (s, op.Sin)):
                if src.kind == "rows":
                    half, dtype = trig(src.base), src.base.dtype
                else:
                    arr = const_array(src.base)[:, : width // 2]
                    graph = src.base.graph or src.base.producer().graph
                    taken = set(graph.initializers) | {
                        v.name for n in graph for v in n.outputs if v.name
                    }
                    name, i = f"{src.base.name or 'rotary_table'}.half", 1
                    while name in taken:
                        name, i = f"{src.base.name or 'rotary_table'}.half_{i}", i + 1
                    half = op.initializer(ir.tensor(np.ascontiguousarray(arr)), name=name)
                    dtype = src.base.dtype
                pair.append(self._replay(op, half, src.ops, dtype))
            pos = c.positions
            if pos.dtype != INT64:
                pos = op.Cast(pos, to=INT64)
            if rank(c.positions) == 1:
                pos = op.Unsqueeze(pos, op.Constant(value_ints=[0]))
            self._tables[key] = (pair[0], pair[1], pos)
        return self._tables[key]

    def rewrite(self, op, x, cos, sin, **_):
        c = _source(cos, "Cos")
        width = static_dim(x, -1)
        if c.kind == "angles":
            cos_t, sin_t, pos = self._angle_tables(op, c, width)
            per_batch = rank(c.base) == 3 and same_dim(c.base, 0, x, 0)
        else:
            cos_t, sin_t, pos = self._gathered_tables(op, c, _source(sin, "Sin"), width)
            per_batch = rank(c.positions) == 2 and same_dim(c.positions, 0, x, 0)
        if not per_batch:
            batch = static_dims(x, 0, 1)
            batch = (
                op.Constant(value_ints=batch) if batch else op.Shape(_unsliced(x), start=0, end=1)
            )
            pos = op.Expand(pos, op.Concat(batch, op.Constant(value_ints=[1]), axis=0))
        if c.axis != 2:
            return op.RotaryEmbedding(x, pos, cos_t, sin_t, interleaved=0, _domain=MS)
        heads = static_dim(x, 2)
        x3 = op.Reshape(x, op.Constant(value_ints=[0, 0, -1]))
        y3 = op.RotaryEmbedding(x3, pos, cos_t, sin_t, interleaved=0, num_heads=heads, _domain=MS)
        dims = static_dims(x)
        return op.Reshape(y3, op.Constant(value_ints=dims) if dims else op.Shape(x))


class _Partial(pattern.RewriteRuleClassBase):
    """Concat(RotaryEmbedding(x[..., :rd]), x[..., rd:]) -> RotaryEmbedding(x) on rd channels."""

    def __init__(self) -> None:
        super().__init__("rotary-partial", remove_nodes=True)

    def pattern(self, op, x, pos, cos, sin):
        xr = op.Slice(x, _allow_other_inputs=True, _outputs=["xr"])
        y = op.RotaryEmbedding(xr, pos, cos, sin, _domain=MS, _outputs=["y"])
        xp = op.Slice(x, _allow_other_inputs=True, _outputs=["xp"])
        return op.Concat(y, xp, _outputs=["out"])

    def check(self, context, x, xr, xp, y, out, **_):
        width, heads, rd = static_dim(x, -1), static_dim(x, 1), static_dim(xr, -1)
        if rank(x) != 4 or None in (width, heads, rd) or rd % 2:
            return fail("input is not 4-D with static heads and head size")
        rope = y.producer()
        if any(k not in ("interleaved", "scale") for k in rope.attributes):
            return fail("rotary already has a layout")
        if not is_last_axis(int_attr(out.producer(), "axis", 0), 4):
            return fail("not a concat of the last axis")
        first, rest = _slice_range(xr.producer(), width, 4), _slice_range(xp.producer(), width, 4)
        if first != (0, rd) or rest != (rd, width):
            return fail("slices do not split the head at the rotary width")
        return True

    def rewrite(self, op, x, pos, cos, sin, y, **_):
        attrs = {k: a.value for k, a in y.producer().attributes.items()}
        heads, rd = static_dim(x, 1), static_dim(y, -1)
        return op.RotaryEmbedding(
            x, pos, cos, sin, num_heads=heads, rotary_embedding_dim=rd, _domain=MS, **attrs
        )


class FuseRotaryEmbedding(RulePass):
    """x*cos + rotate_half(x)*sin -> RotaryEmbedding with per-call or cached cos/sin tables."""

    name = "fuse-rotary-embedding"
    rules = [
        _Rotary.rule(f"rotary-{halves}", halves=halves) for halves in ("slice", "split", "sequence")
    ]
    partial_rules = [_Partial.rule()]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        fused = apply_rules(self, model, self.rules)
        # the partial-rotation sites were counted as fused above: merge them uncounted
        merged = pattern.RewriteRuleSet(self.partial_rules).apply_to_model(model)
        if merged:
            remove_dead(model)
        return ir.passes.PassResult(model, fused or bool(merged))
