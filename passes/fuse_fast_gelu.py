"""tanh-approximate GELU -> ``com.microsoft:FastGelu`` (with its bias where an Add feeds it).

Rewrite::

    c = Pow(x, 3) | x * (x * x)
    u = k * (x + 0.044715 * c)                   # k = sqrt(2/pi) = 0.7978845608
      | k * (x * (1 + 0.044715 * (x * x)))
      | (x * k) * (1 + 0.044715 * (x * x))       # transformers' gelu_fast
    t = Tanh(u) + 1
    y = x * (0.5 * t)                            # dynamo (F.gelu(approximate="tanh"))
      | (x * t) * 0.5                            # TorchScript
      | (0.5 * x) * t                            # gelu_new, hand-written 0.5 * x * (1 + tanh(..))
      | Gelu(x, approximate="tanh")              # ONNX opset 20
  ->
    y = FastGelu(x)
    y = FastGelu(a, bias)                        # when x = Add(a, bias) feeds nothing else

Every commutation of the Adds and Muls is accepted; constants may be scalars of any rank with
one element (to 1e-4 relative). ``bias`` must be a 1-D tensor as long as the last axis of ``a``
(the MatMul + bias of an FFN; either operand order); otherwise the Add stays in front of
``FastGelu(x)``.

Does not fire (``skipped:<reason>``): a constant is not 0.5, 1, 3, 0.044715 or sqrt(2/pi), or
the tanh's argument is not the polynomial above in the same ``x`` (another tanh expression);
the element type is not float (ORT's CPU kernel is float-only). The erf GELU is
``fuse-gelu``'s.
Scope: the main graph. The kernel evaluates the same formula as ``x * (B + C * x * x)`` with
MLAS's tanh: results agree to float rounding (measured max |diff| 4.8e-7 on N(0, 3^2) inputs
and on [-12, 12]; declared atol 1e-5, rtol 1e-4).
"""

from __future__ import annotations

import math

import onnx_ir as ir
from onnxscript.rewriter import pattern

from qgraph.passes._rewrite import (
    MS,
    RulePass,
    fail,
    is_scalar,
    producer,
    rank,
    scalar,
    static_dim,
)

_SQRT_2_PI = math.sqrt(2.0 / math.pi)
_CUBIC = 0.044715


def _operand_pairs(node: ir.Node) -> list[tuple[ir.Value, ir.Value]]:
    """Both orders of a binary node's inputs."""
    a, b = node.inputs[0], node.inputs[1]
    return [(a, b), (b, a)]


def _binary(value: ir.Value, op_type: str) -> ir.Node | None:
    node = producer(value, op_type)
    return node if node is not None and len(node.inputs) == 2 else None


def _square(value: ir.Value, x: ir.Value, seen: list[ir.Node]) -> bool:
    """``value`` is x * x or Pow(x, 2)."""
    node = _binary(value, "Mul")
    if node is not None and node.inputs[0] is x and node.inputs[1] is x:
        seen.append(node)
        return True
    node = _binary(value, "Pow")
    if node is not None and node.inputs[0] is x and is_scalar(node.inputs[1], 2.0):
        seen.append(node)
        return True
    return False


def _cube(value: ir.Value, x: ir.Value, seen: list[ir.Node]) -> bool:
    """``value`` is Pow(x, 3) or x * x * x (any grouping of one square)."""
    node = _binary(value, "Pow")
    if node is not None:
        ok = node.inputs[0] is x and is_scalar(node.inputs[1], 3.0)
        seen.extend([node] if ok else [])
        return ok
    node = _binary(value, "Mul")
    if node is None:
        return False
    for p, q in _operand_pairs(node):
        if p is x and _square(q, x, seen):
            seen.append(node)
            return True
    return False


def _scaled(value: ir.Value, factor: float, term, x: ir.Value, seen: list[ir.Node]) -> bool:
    """``value`` is factor * term(x) in either order."""
    node = _binary(value, "Mul")
    if node is None:
        return False
    for p, q in _operand_pairs(node):
        if is_scalar(p, factor) and term(q, x, seen):
            seen.append(node)
            return True
    return False


def _polynomial(value: ir.Value, x: ir.Value, seen: list[ir.Node]) -> bool:
    """``value`` is x + 0.044715 * x^3 or x * (1 + 0.044715 * x^2)."""
    add = _binary(value, "Add")
    if add is not None:
        for p, q in _operand_pairs(add):
            if p is x and _scaled(q, _CUBIC, _cube, x, seen):
                seen.append(add)
                return True
        return False
    mul = _binary(value, "Mul")
    if mul is None:
        return False
    for p, q in _operand_pairs(mul):
        if p is x and _one_plus_square(q, x, seen):
            seen.append(mul)
            return True
    return False


def _one_plus_square(value: ir.Value, x: ir.Value, seen: list[ir.Node]) -> bool:
    """``value`` is 1 + 0.044715 * x^2."""
    add = _binary(value, "Add")
    for r, s in _operand_pairs(add) if add is not None else []:
        if is_scalar(r, 1.0) and _scaled(s, _CUBIC, _square, x, seen):
            seen.append(add)
            return True
    return False


def _identity(value: ir.Value, x: ir.Value, seen: list[ir.Node]) -> bool:
    return value is x


def _gelu_fast(value: ir.Value, x: ir.Value, seen: list[ir.Node]) -> bool:
    """``value`` is (x * sqrt(2/pi)) * (1 + 0.044715 * x^2): transformers' ``gelu_fast``."""
    mul = _binary(value, "Mul")
    for p, q in _operand_pairs(mul) if mul is not None else []:
        mark = len(seen)
        if _scaled(p, _SQRT_2_PI, _identity, x, seen) and _one_plus_square(q, x, seen):
            seen.append(mul)
            return True
        del seen[mark:]  # a half match leaves no node behind
    return False


def tanh_argument_nodes(u: ir.Value, x: ir.Value) -> list[ir.Node] | None:
    """The nodes computing ``u = sqrt(2/pi) * polynomial(x)``, or None if ``u`` is not that."""
    seen: list[ir.Node] = []
    if _scaled(u, _SQRT_2_PI, _polynomial, x, seen) or _gelu_fast(u, x, seen):
        return seen
    return None


def _bias_add(x: ir.Value, site: set[ir.Node]) -> tuple[ir.Value, ir.Value] | None:
    """(a, bias) when ``x = a + bias`` with ``bias`` 1-D over the last axis of ``a`` and ``x``
    used only by the ``site`` nodes (the Add then folds into FastGelu)."""
    add = _binary(x, "Add")
    if add is None or x.is_graph_output() or any(user not in site for user, _ in x.uses()):
        return None
    for a, bias in _operand_pairs(add):
        width = static_dim(a, -1)
        one_d = rank(bias) == 1 and width is not None and static_dim(bias, 0) == width
        if one_d and a.dtype == bias.dtype == ir.DataType.FLOAT:
            return a, bias
    return None


class _FastGelu(pattern.RewriteRuleClassBase):
    """One spelling (``form``). ``x`` and ``half`` are both free operands of a Mul, so a site
    also matches with the two swapped: ``check`` puts the constant back in ``half`` (every
    binding of a site then gets the same verdict and reason) and decides whether a bias Add
    folds in; ``rewrite``, which runs right after a successful ``check``, uses its inputs."""

    def __init__(self, name: str, *, form: str) -> None:
        super().__init__(name)
        self._form = form
        self._inputs: tuple[ir.Value, ...] = ()

    def pattern(self, op, x, u, half, one):
        if self._form == "onnx":
            return op.Gelu(x, approximate="tanh")
        t1 = op.Add(op.Tanh(u), one)
        if self._form == "dynamo":
            return op.Mul(x, op.Mul(half, t1))
        if self._form == "torchscript":
            return op.Mul(op.Mul(x, t1), half)
        return op.Mul(op.Mul(half, x), t1)

    def check(self, context, x, u=None, half=None, one=None, **_):
        site = set(context.nodes)
        if self._form != "onnx":
            if scalar(half) is None and scalar(x) is not None:
                x, half = half, x
            if not (is_scalar(half, 0.5) and is_scalar(one, 1.0)):
                return fail("constants are not those of the tanh GELU")
            inner = tanh_argument_nodes(u, x)
            if inner is None:
                return fail("tanh argument is not sqrt(2/pi) * (x + 0.044715 * x^3)")
            site.update(inner)
        if x.dtype != ir.DataType.FLOAT:
            return fail("element type is not float")
        self._inputs = _bias_add(x, site) or (x,)
        return True

    def rewrite(self, op, **_):
        return op.FastGelu(*self._inputs, _domain=MS)


class FuseFastGelu(RulePass):
    """tanh-approximate GELU (decomposed or ONNX Gelu) [+ bias Add] -> com.microsoft FastGelu."""

    name = "fuse-fast-gelu"
    rules = [
        _FastGelu.rule(f"fast-gelu-{form}", form=form)
        for form in ("dynamo", "torchscript", "manual", "onnx")
    ]
