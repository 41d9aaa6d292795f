"""Residual Add + RMSNorm -> ``com.microsoft:SkipSimplifiedLayerNormalization``.

Rewrite::

    s = Add(a, b) | Add(Add(a, bias), b) | Add(a, Add(b, bias)) | Add(Add(a, b), bias)
    y = SimplifiedLayerNormalization(s, gamma, axis=-1)        # from fuse-rms-norm
      | RMSNormalization(s, gamma, axis=-1)                     # opset 23
  ->
    y, _, _, s = SkipSimplifiedLayerNormalization(a, b, gamma[, bias], epsilon)

The Add's operands may come in either order; the sum ``s`` stays available (the op's fourth
output) where it is a graph output or feeds other nodes (the next residual Add).

Does not fire (``skipped:<reason>``): ``a`` and ``b`` are neither rank-2/3 tensors of one
provable shape (same ints or same named symbols, as shape inference leaves them) nor a
float/double [B,S,H] tensor and a [S,H] or [1,S,H] one (the broadcast ORT's kernel does: the
full tensor becomes ``input``, the other ``skip``), e.g. a residual broadcast along the sequence
or shapes not provably equal; ``gamma`` or ``bias`` is not 1-D over the hidden axis; the norm is
not over the last axis, stashes in a type other than float, returns its inverse standard
deviation, or mixes element types (the contrib op has one type for all tensors).
Scope: the main graph. Needs ``fuse-rms-norm`` first for decomposed RMSNorm chains.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern

from qgraph.passes._rewrite import (
    MS,
    RulePass,
    check_residual,
    residual_operands,
    residual_sum,
)


class _SkipRmsNorm(pattern.RewriteRuleClassBase):
    def __init__(self, name: str, *, norm: str, bias: str) -> None:
        super().__init__(name)
        self._norm, self._bias = norm, bias

    def pattern(self, op, a, b, gamma, bias):
        s = residual_sum(op, a, b, bias, self._bias)
        norm = getattr(op, self._norm)
        return norm(s, gamma, _allow_other_attributes=True, _outputs=["y"]), s

    def check(self, context, a, b, gamma, y, bias=None, **_):
        return check_residual(a, b, gamma, bias, y)

    def rewrite(self, op, a, b, gamma, y, bias=None, **_):
        eps = y.producer().attributes.get("epsilon")
        inputs = [*residual_operands(a, b), gamma] + ([bias] if bias is not None else [])
        out, _, _, s = op.SkipSimplifiedLayerNormalization(
            *inputs,
            epsilon=eps.as_float() if eps is not None else 1e-5,
            _domain=MS,
            _outputs=4,
        )
        return out, s


class FuseSkipRmsNorm(RulePass):
    """Residual Add + RMSNorm -> SkipSimplifiedLayerNormalization (sum kept as 4th output)."""

    name = "fuse-skip-rms-norm"
    must_follow = {
        "fuse-rms-norm": "it fuses the SimplifiedLayerNormalization that fuse-rms-norm produces"
    }
    rules = [
        _SkipRmsNorm.rule(f"skip-{norm}-{bias}", norm=norm, bias=bias)
        for norm in ("SimplifiedLayerNormalization", "RMSNormalization")
        for bias in ("input", "sum", "none")
    ]
