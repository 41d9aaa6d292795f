"""Residual Add + LayerNormalization -> ``com.microsoft:SkipLayerNormalization``.

Rewrite::

    s = Add(a, b) | Add(Add(a, bias), b) | Add(Add(a, b), bias)    (any operand order)
    y = LayerNormalization(s, gamma[, beta], axis=-1)
  ->
    y, _, _, s = SkipLayerNormalization(a, b, gamma, beta, bias, epsilon)

A projection bias feeding the residual Add (``MatMul + bias``: the pre-LN layout, and BERT's
post-LN ``LayerNorm(x + dropout(dense(h)))``) folds into the op's ``bias`` input; the Add's
operands may come in either order, and the sum stays available as the fourth output where it
is a graph output or feeds other nodes (the next residual). Whisper's first pre-LN (conv output
plus the [S,H] positions) fuses as a broadcast skip.

Does not fire (``skipped:<reason>``): ``a`` and ``b`` are neither rank-2/3 tensors of one
provable shape (same ints or same named symbols, as shape inference leaves them) nor a
float/double [B,S,H] tensor and a [S,H] or [1,S,H] one (the broadcast ORT's kernel does: the
full tensor becomes ``input``, the other ``skip``), e.g. a residual broadcast along the sequence
or shapes not provably equal; ``gamma``, ``beta`` or ``bias`` are not 1-D over the hidden axis;
the norm is not over the last axis, does not stash in float, returns its mean or inverse
standard deviation, or mixes element types. A LayerNormalization with no residual Add in front
(the first pre-LN of a stack, or one behind a Reshape/Slice) stays as it is.
Scope: the main graph.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern

from qgraph.passes._rewrite import (
    MS,
    RulePass,
    check_residual,
    fail,
    rank,
    residual_operands,
    residual_sum,
)


class _SkipLayerNorm(pattern.RewriteRuleClassBase):
    def __init__(self, name: str, *, bias: str, beta: bool) -> None:
        super().__init__(name)
        self._bias, self._beta = bias, beta

    def pattern(self, op, a, b, gamma, beta, bias):
        s = residual_sum(op, a, b, bias, self._bias)
        inputs = (s, gamma, beta) if self._beta else (s, gamma)
        return op.LayerNormalization(*inputs, _allow_other_attributes=True, _outputs=["y"]), s

    def check(self, context, a, b, gamma, y, beta=None, bias=None, **_):
        result = check_residual(a, b, gamma, bias, y)
        if result and beta is not None and (rank(beta) != 1 or beta.shape != gamma.shape):
            return fail("beta is not 1-D over the hidden axis")
        return result

    def rewrite(self, op, a, b, gamma, y, beta=None, bias=None, **_):
        eps = y.producer().attributes.get("epsilon")
        inputs = [*residual_operands(a, b), gamma, beta, bias]
        while inputs[-1] is None:
            inputs.pop()
        out, _, _, s = op.SkipLayerNormalization(
            *inputs,
            epsilon=eps.as_float() if eps is not None else 1e-5,
            _domain=MS,
            _outputs=4,
        )
        return out, s


class FuseSkipLayerNorm(RulePass):
    """Residual Add (+ projection bias) + LayerNormalization -> SkipLayerNormalization."""

    name = "fuse-skip-layer-norm"
    rules = [
        _SkipLayerNorm.rule(f"skip-ln-{bias}-{beta}", bias=bias, beta=beta)
        for beta in (True, False)
        for bias in ("input", "sum", "none")
    ]
