"""Exact (erf) GELU chain -> ``com.microsoft:Gelu``.

Rewrite::

    e = Erf(x / sqrt(2) | x * (1/sqrt(2)))
    y = x * (0.5 * (e + 1))            # dynamo
      | (x * (e + 1)) * 0.5            # TorchScript F.gelu
      | (0.5 * x) * (e + 1)            # hand-written 0.5 * x * (1 + erf(x / sqrt(2)))
  ->
    y = Gelu(x)

Every commutation of the Adds and Muls is accepted; constants may be scalars of any rank with
one element (0.5, 1 and sqrt(2) to 1e-4 relative).

Does not fire (``skipped:<reason>``): a constant is not 0.5, 1 or sqrt(2) (a scaled or shifted
variant). The tanh approximation is ``fuse-fast-gelu``'s (-> ``FastGelu``) and ONNX ``Gelu``
(opset 20) is left alone; ``fuse-bias-gelu`` folds a bias Add in front of either Gelu.
Scope: the main graph.
"""

from __future__ import annotations

import math

from onnxscript.rewriter import pattern

from qgraph.passes._rewrite import MS, RulePass, fail, is_scalar


class _ErfGelu(pattern.RewriteRuleClassBase):
    def __init__(self, name: str, *, form: str) -> None:
        super().__init__(name)
        self._form = form

    def pattern(self, op, x, half, one, root2):
        scaled = pattern.OrValue([op.Div(x, root2), op.Mul(x, root2)], tag_var="divided")
        e1 = op.Add(op.Erf(scaled), one)
        if self._form == "dynamo":
            return op.Mul(x, op.Mul(half, e1))
        if self._form == "torchscript":
            return op.Mul(op.Mul(x, e1), half)
        return op.Mul(op.Mul(half, x), e1)

    def check(self, context, half, one, root2, divided, **_):
        expected = math.sqrt(2.0) if divided == 0 else 1.0 / math.sqrt(2.0)
        if not (is_scalar(half, 0.5) and is_scalar(one, 1.0) and is_scalar(root2, expected)):
            return fail("constants are not those of the erf GELU")
        return True

    def rewrite(self, op, x, **_):
        return op.Gelu(x, _domain=MS)


class FuseGelu(RulePass):
    """Exact erf GELU chain (Div/Erf/Add/Mul/Mul) -> com.microsoft Gelu."""

    name = "fuse-gelu"
    rules = [_ErfGelu.rule(f"erf-gelu-{f}", form=f) for f in ("dynamo", "torchscript", "manual")]
