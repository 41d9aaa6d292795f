"""Bias Add + exact GELU -> ``com.microsoft:BiasGelu``.

Rewrite::

    y = Gelu(Add(a, bias))           # com.microsoft Gelu (fuse-gelu), or ONNX Gelu (opset 20)
  ->                                 # with approximate="none"; the Add in either operand order
    y = BiasGelu(a, bias)

This is the MatMul + bias + GELU of a transformer FFN (and of a projector MLP).

Does not fire (``skipped:<reason>``): ``bias`` is not a 1-D tensor as long as the last axis of
``a`` (a full-tensor Add, or a broadcast along another axis); ``a`` has rank < 2 or its last
axis is not static; ONNX Gelu with ``approximate="tanh"`` (``fuse-fast-gelu`` then folds the
bias into ``FastGelu``). A Gelu with no Add in front (after a Conv, whose bias is inside the
Conv) stays a plain Gelu.
Scope: the main graph. Needs ``fuse-gelu`` first for decomposed erf chains (ordering: after
``fuse-gelu``).
"""

from __future__ import annotations

from onnxscript.rewriter import pattern

from qgraph.passes._rewrite import MS, RulePass, fail, rank, static_dim


class _BiasGelu(pattern.RewriteRuleClassBase):
    def __init__(self, name: str, *, domain: str) -> None:
        super().__init__(name)
        self._domain = domain

    def pattern(self, op, a, bias):
        return op.Gelu(op.Add(a, bias), _domain=self._domain, _outputs=["y"])

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


class FuseBiasGelu(RulePass):
    """Bias Add + GELU (com.microsoft or ONNX, exact) -> BiasGelu."""

    name = "fuse-bias-gelu"
    must_follow = {"fuse-gelu": "it fuses the Gelu that fuse-gelu produces from erf chains"}
    # rule names end in the "-False" of the old hand-enumerated (a, bias) order: onnxscript
    # records them in each fused node's metadata, so compiled bundles stay byte-identical
    rules = [_BiasGelu.rule(f"bias-gelu-{d or 'onnx'}-False", domain=d) for d in (MS, "")]
