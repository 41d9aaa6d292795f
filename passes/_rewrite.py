"""Shared machinery of the fusion passes: onnxscript's pattern rewriter behind one adapter, the
base class of rule-based passes, and small IR helpers (constants, shapes, building and inserting
nodes).

``apply_rules`` is the only place that drives ``onnxscript.rewriter`` (pinned at 0.7.x through
``pyproject.toml``). It rewrites with a rule set in which every rule is commuted (each binary
Add/Mul of a pattern is tried in both operand orders, so patterns spell one order), counts the
sites as ``fused``, then replays the same rules with a tracer on the rewritten model: every site
that still matches the pattern's structure but fails the rule's ``check`` is a near miss, counted
as ``skipped:<reason>`` with the reason the check gave. After a rewrite the nodes it left without
consumers (constants, shared cos/sin computations) are removed. ``modified`` is exact: no site
rewritten means the model is untouched (the tracer replay makes no change).

``RulePass`` is a fusion made of such rules: a module defines its rule class (pattern / check /
rewrite), and the pass is ``rules`` plus its name, docstring and ordering constraints.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass
from onnxscript.rewriter import _basics, pattern
from onnxscript.rewriter._rewrite_rule import RewriteRule

from qgraph.pass_api import GraphPass, QPass, Tolerance

logger = logging.getLogger(__name__)

MS = "com.microsoft"
"""ONNX Runtime's contrib-op domain."""


class _NearMisses(_basics.MatchingTracer):
    """Records, per root node, the first reason a structurally matching site was refused."""

    def __init__(self) -> None:
        super().__init__()
        self.reasons: dict[ir.Node, str] = {}

    def log(self, rule, container, node, match_result, status) -> None:  # noqa: ANN001
        refused = (_basics.MatchStatus.CONDITION_FAILED, _basics.MatchStatus.REPLACEMENT_FAILED)
        if status in refused and node not in self.reasons:
            self.reasons[node] = match_result.reason or "check failed"


def apply_rules(p: QPass, model: ir.Model, rules: Sequence[RewriteRule]) -> bool:
    """Rewrite ``model`` with ``rules``, each in every operand order of its commutative nodes
    (``RewriteRule.commute``, in rule order); count ``fused`` and ``skipped:<reason>`` on ``p``.
    """
    ruleset = pattern.RewriteRuleSet(list(rules), commute=True)
    fused = ruleset.apply_to_model(model)
    if fused:
        p.count("fused", fused)
        logger.debug("%s: %d sites fused", p.name, fused)
    tracer = _NearMisses()
    ruleset.apply_to_model(model, tracer=tracer)
    for node, reason in tracer.reasons.items():
        p.count(f"skipped:{reason}", where=node)
    if fused:
        RemoveUnusedNodesPass()(model)
    return bool(fused)


class RulePass(GraphPass):
    """A fusion made of onnxscript rewrite rules (``rules``), applied by ``apply_rules``.

    A subclass sets ``name``, its docstring, ``rules`` and, where they differ from a fusion's,
    ``category``, ``tolerance`` and ``must_follow``. Rules spell each Add/Mul in one operand
    order: they are commuted when applied. A pattern's ``OrValue`` whose alternatives are not
    all distinct ops needs a ``tag_var`` (onnxscript 0.7 cannot commute it without one).
    """

    category = "fusion"
    tolerance = Tolerance(atol=1e-5, rtol=1e-4)
    rules: ClassVar[Sequence[RewriteRule]] = ()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, apply_rules(self, model, self.rules))


def remove_dead(model: ir.Model) -> None:
    RemoveUnusedNodesPass()(model)


def take_over(
    graph: ir.Graph, old: ir.Value, new: ir.Value, keep: frozenset[ir.Node] | set = frozenset()
) -> None:
    """Point ``old``'s consumers (except ``keep``) and its graph-output slot, name included, at
    ``new``, which takes ``old``'s type and shape."""
    new.shape, new.type = old.shape, old.type
    for user, index in list(old.uses()):
        if user not in keep:
            user.replace_input_with(index, new)
    if old.is_graph_output():
        index = list(graph.outputs).index(old)
        name, old.name = old.name, None
        graph.outputs[index] = new
        new.name = name


# -- constants and shapes -------------------------------------------------------------------------
def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant contents (initializer or Constant node), else None."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None:
        return None
    try:
        return tensor.numpy()
    except Exception:  # external data that cannot be read: not a usable constant
        return None


def scalar(value: ir.Value | None) -> float | None:
    """The number held by a one-element constant (any rank), else None."""
    arr = const_array(value)
    if arr is None or arr.size != 1:
        return None
    return float(arr.reshape(()))


def is_scalar(value: ir.Value | None, expected: float, rel: float = 1e-4) -> bool:
    got = scalar(value)
    return got is not None and bool(np.isclose(got, expected, rtol=rel, atol=1e-7))


def const_ints(value: ir.Value | None) -> list[int] | None:
    arr = const_array(value)
    if arr is None or arr.dtype.kind not in "iu":
        return None
    return [int(v) for v in arr.reshape(-1)]


def rank(value: ir.Value | None) -> int | None:
    if value is None or value.shape is None:
        return None
    return value.shape.rank()


def dim(value: ir.Value, axis: int) -> int | ir.SymbolicDim | None:
    """Dimension ``axis`` of the value's shape: an int, a named symbol, or None if unknown."""
    if value.shape is None or not -value.shape.rank() <= axis < value.shape.rank():
        return None
    d = value.shape[axis]
    if isinstance(d, int):
        return d
    return d if d.value is not None else None


def static_dim(value: ir.Value, axis: int) -> int | None:
    d = dim(value, axis)
    return d if isinstance(d, int) else None


def static_dims(value: ir.Value, start: int = 0, end: int | None = None) -> list[int] | None:
    """``shape[start:end]`` when every one of those dims is a known int, else None."""
    if value.shape is None:
        return None
    dims = list(value.shape)[start:end]
    return dims if all(isinstance(d, int) for d in dims) else None


def same_dim(a: ir.Value, i: int, b: ir.Value, j: int) -> bool:
    """True when the two dimensions are provably equal (same int or same named symbol)."""
    da, db = dim(a, i), dim(b, j)
    if da is None or db is None:
        return False
    if isinstance(da, int) or isinstance(db, int):
        return da == db
    return da.value == db.value


def same_shape(a: ir.Value, b: ir.Value) -> bool:
    ra, rb = rank(a), rank(b)
    return ra is not None and ra == rb and all(same_dim(a, i, b, i) for i in range(ra))


def is_last_axis(axis: int, value_rank: int | None) -> bool:
    return axis == -1 or (value_rank is not None and axis == value_rank - 1)


def reduce_axes(node: ir.Node) -> list[int] | None:
    """Axes of a Reduce* node, from its ``axes`` input (opset 18+) or attribute (before)."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        return const_ints(node.inputs[1])
    attr = node.attributes.get("axes")
    return list(attr.as_ints()) if attr is not None else None


def producer(value: ir.Value | None, op_type: str, domain: str = "") -> ir.Node | None:
    """The value's producer if it is ``domain::op_type`` (default domain: ONNX), else None."""
    node = value.producer() if value is not None else None
    if node is None or node.op_type != op_type:
        return None
    if node.domain not in ((domain,) if domain else ("", "ai.onnx")):
        return None
    return node


def int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else default


def ints_attr(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else None


def fail(reason: str) -> pattern.MatchResult:
    """A refused match with ``reason`` (becomes ``skipped:<reason>`` in the statistics)."""
    return pattern.MatchResult().fail(reason)


# -- residual norms (shared by the Skip*Normalization fusions) ------------------------------------
def residual_sum(op, a, b, bias, where: str):
    """``a + b`` with an optional bias added to ``a`` first, or to the sum."""
    if where == "input":
        return op.Add(op.Add(a, bias), b, _outputs=["s"])
    if where == "sum":
        return op.Add(op.Add(a, b), bias, _outputs=["s"])
    return op.Add(a, b, _outputs=["s"])


def _broadcast_skip(skip: ir.Value, full: ir.Value) -> bool:
    """``skip`` is a [1,S,H] or [S,H] tensor added to a float/double [B,S,H] one: the broadcast
    ORT's Skip*Normalization kernels accept (they read the skip at ``offset % skip.size``)."""
    if rank(full) != 3 or full.dtype not in (ir.DataType.FLOAT, ir.DataType.DOUBLE):
        return False
    if rank(skip) == 3 and static_dim(skip, 0) != 1 or rank(skip) not in (2, 3):
        return False
    return same_dim(skip, -1, full, -1) and same_dim(skip, -2, full, -2)


def residual_operands(a: ir.Value, b: ir.Value) -> tuple[ir.Value, ir.Value] | None:
    """(input, skip) of a Skip*Normalization for the residual ``a + b``: the two tensors of one
    provable rank-2/3 shape, or the full [B,S,H] tensor and a skip broadcast over the batch."""
    if rank(a) in (2, 3) and same_shape(a, b):
        return a, b
    if _broadcast_skip(b, a):
        return a, b
    if _broadcast_skip(a, b):
        return b, a
    return None


def check_residual(a, b, gamma, bias, y) -> pattern.MatchResult | bool:
    """Shape and type conditions shared by the Skip*Normalization fusions."""
    operands = residual_operands(a, b)
    if operands is None:
        return fail("residual operands are neither one rank-2/3 shape nor [B,S,H] + [1,S,H]")
    full = operands[0]
    width = static_dim(full, -1)
    for vec in (gamma, bias):
        if vec is not None and (rank(vec) != 1 or width is None or static_dim(vec, 0) != width):
            return fail("gamma or bias is not 1-D over the hidden axis")
    norm = y.producer()
    if int_attr(norm, "stash_type", 1) != 1:
        return fail("norm does not stash in float")
    if not is_last_axis(int_attr(norm, "axis", -1), rank(full)):
        return fail("norm is not over the last axis")
    if any(len(out.uses()) or out.is_graph_output() for out in norm.outputs[1:]):
        return fail("norm statistics are used")
    types = {v.dtype for v in (a, b, gamma, bias, y) if v is not None}
    if len(types) != 1:
        return fail("mixed element types")
    return True


# -- building nodes -------------------------------------------------------------------------------
class Builder:
    """Records new nodes; ``commit`` inserts them before a node of the graph."""

    def __init__(self) -> None:
        self.nodes: list[ir.Node] = []

    def op(
        self,
        op_type: str,
        inputs: Sequence[ir.Value | None],
        *,
        domain: str = "",
        outputs: int = 1,
        **attributes: Any,
    ) -> ir.Value | Sequence[ir.Value]:
        attrs = [ir.convenience.convert_attribute(k, v) for k, v in attributes.items()]
        node = ir.Node(domain, op_type, inputs, attrs, num_outputs=outputs)
        self.nodes.append(node)
        return node.outputs[0] if outputs == 1 else node.outputs

    def one(self, op_type: str, inputs: Sequence[ir.Value | None], **kw: Any) -> ir.Value:
        out = self.op(op_type, inputs, **kw)
        assert isinstance(out, ir.Value)
        return out

    def ints(self, values: Sequence[int]) -> ir.Value:
        return self.one("Constant", [], value=ir.tensor(np.asarray(values, dtype=np.int64)))

    def shape(self, value: ir.Value, start: int, end: int, known: ir.Value | None = None):
        """``Shape(value)[start:end]``; a constant when those dims of ``known`` (default:
        ``value``, an equal tensor with shape information) are static, so that a later
        fold-constants finds nothing left to fold."""
        dims = static_dims(known if known is not None else value, start, end)
        if dims is not None:
            return self.ints(dims)
        return self.one("Shape", [value], start=start, end=end)

    def commit(self, graph: ir.Graph, before: ir.Node) -> None:
        graph.insert_before(before, self.nodes)
        self.nodes = []


# -- names ----------------------------------------------------------------------------------------
def value_names(model: ir.Model) -> set[str]:
    """Every value name of the model: inputs, initializers and node outputs of every graph."""
    names: set[str] = set()
    for graph in model.graphs():
        names.update(v.name for v in graph.inputs if v.name)
        names.update(graph.initializers)
        for node in graph:
            names.update(v.name for v in node.outputs if v.name)
    return names


def fresh_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``, ... : the first not in ``taken`` (then added to it)."""
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def merged_name(names: Sequence[str]) -> str | None:
    """One name for tensors packed side by side, from names that differ in one dotted part with
    a common ``_``-suffix: ``a.q_proj.weight``, ``a.k_proj.weight``, ``a.v_proj.weight`` ->
    ``a.qkv_proj.weight``; ``gate_proj``/``up_proj`` -> ``gate_up_proj``. None otherwise."""
    parts = [name.split(".") for name in names]
    if len(parts) < 2 or len({len(p) for p in parts}) != 1:
        return None
    differ = [i for i in range(len(parts[0])) if len({p[i] for p in parts}) > 1]
    if len(differ) != 1:
        return None
    words = [p[differ[0]] for p in parts]
    tail = words[0][words[0].find("_") :] if "_" in words[0] else ""
    while tail and not all(w.endswith(tail) and len(w) > len(tail) for w in words):
        cut = tail.find("_", 1)
        tail = tail[cut:] if cut > 0 else ""
    if not tail:
        return None
    stems = [w[: -len(tail)] for w in words]
    joined = "".join(stems) if all(len(s) == 1 for s in stems) else "_".join(stems)
    return ".".join([*parts[0][: differ[0]], joined + tail, *parts[0][differ[0] + 1 :]])


def rename_initializers(graph: ir.Graph, names: dict[ir.Value, str]) -> None:
    """Rename initializers of ``graph`` (``value: new name``), keeping their order."""
    values = list(graph.initializers.values())
    for value in values:
        graph.initializers.pop(value.name)
    for value in values:
        if value in names:
            value.name = names[value]
        graph.initializers[value.name] = value
