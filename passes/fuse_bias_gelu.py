"""Bias Add + exact GELU -> ``com.microsoft:BiasGelu``.

Rewrite::

    y = Gelu(Add(a, bias) | Add(bias, a))       # com.microsoft Gelu (fuse-gelu), or ONNX Gelu
  ->                                            # (opset 20) with approximate="none"
    y = BiasGelu(a, bias)

This is the MatMul + bias + GELU of a transformer FFN (and of a projector MLP).

Does not fire (``skipped:<reason>``): ``bias`` is not a 1-D tensor as long as the last axis of
``a`` (a full-tensor Add, or a broadcast along another axis); ``a`` has rank < 2 or its last
axis is not static; ONNX Gelu with ``approximate="tanh"``. A Gelu with no Add in front (after
a Conv, whose bias is inside the Conv) stays a plain Gelu.
Scope: the main graph. Needs ``fuse-gelu`` first for decomposed erf chains.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from qgraph.pass_api import GraphPass, Tolerance
from qgraph.passes._rewrite import MS, apply_rules, fail, rank, static_dim


class _BiasGelu(pattern.RewriteRuleClassBase):
    def __init__(self, name: str, *, domain: str, bias_first: bool) -> None:
        super().__init__(name)
        self._domain, self._bias_first = domain, bias_first

    def pattern(self, op, a, bias):
        s = op.Add(bias, a) if self._bias_first else op.Add(a, bias)
        return op.Gelu(s, _domain=self._domain, _outputs=["y"])

    def check(self, context, a, bias, y, **_):
        approximate = y.producer().attributes.get("approximate")
        if approximate is not None and approximate.as_string() != "none":
            return fail("tanh-approximate Gelu")
        width = static_dim(a, -1)
        if (rank(a) or 0) < 2 or width is None:
            return fail("input rank or width unknown")
        if rank(bias) != 1 or static_dim(bias, 0) != width:
            return fail("bias is not 1-D over the last axis")
        if a.dtype != bias.dtype:
            return fail("mixed element types")
        return True

    def rewrite(self, op, a, bias, **_):
        return op.BiasGelu(a, bias, _domain=MS)


RULES = [
    _BiasGelu.rule(f"bias-gelu-{domain or 'onnx'}-{first}", domain=domain, bias_first=first)
    for domain in (MS, "")
    for first in (False, True)
]


class FuseBiasGelu(GraphPass):
    """Bias Add + GELU (com.microsoft or ONNX, exact) -> BiasGelu."""

    name = "fuse-bias-gelu"
    category = "fusion"
    tolerance = Tolerance(atol=1e-5, rtol=1e-4)
    must_follow = ("fuse-gelu", "compression")
    reason = "it fuses the Gelu that fuse-gelu produces from erf chains"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, apply_rules(self, model, RULES))
