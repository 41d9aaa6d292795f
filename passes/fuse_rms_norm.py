"""RMSNorm chain -> ``SimplifiedLayerNormalization`` (ORT's contrib op, registered in ai.onnx).

Rewrite::

    [xf = Cast(x, to=float|double)]                       # optional up-cast, else xf = x
    ms  = ReduceMean(Pow(xf, 2) | Mul(xf, xf), axes=[-1], keepdims=1)
    v   = ms + eps
    r   = Sqrt(v) | Pow(v, 0.5)
    inv = Reciprocal(r) | 1 / r | Pow(v, -0.5)           # rsqrt
    n   = xf * inv | xf / r
    [n  = Cast(n, to=T)]                                  # optional down-cast
    y   = scale * n
        | (scale * xf) * inv | (scale * xf) / r           # the scale applied to the input first
  ->
    y   = SimplifiedLayerNormalization(x, scale, axis=-1, epsilon=eps, stash_type=float|double)

Every commutation of the Adds and Muls is accepted (the rule is commuted); ``axes`` may be an
input (opset 18+) or an attribute (opset 13-17), and may name the last axis as -1 or rank-1. This
covers Hugging Face's LlamaRMSNorm / Qwen3RMSNorm (``hidden_states.to(float32)``,
``torch.rsqrt``, ``variance_epsilon``) as TorchScript (opset 17) and dynamo (opset 18) write it,
and Qwen3's q/k norms over ``head_dim`` on [B,S,H,D] (the op normalizes the last axis of any
rank). An up-cast whose output is also used outside the chain (TorchScript traces a no-op
``.to(float32)`` that way, the residual then reads the Cast) stays in front of the fused op.

Does not fire (counted as ``skipped:<reason>``): the mean is not over the last axis alone or
drops the axis; the exponent is not 2 (or the root's 0.5, the inverse root's -0.5, the
numerator 1); epsilon is not a constant scalar; ``scale`` is not a 1-D tensor as long as the
normalized axis (a broadcast scalar or a [1,1,D] scale); the normalization runs in a type other
than float/double; the scale's type differs from the result's. Intermediate values used outside
the chain leave the chain as it is; a weighted input ``w * t`` with ``t`` not the normalized
tensor is no RMSNorm and is not matched.
Scope: the main graph (and functions); the rest of the model is untouched. The ORT kernel
computes in the stash type, so results agree to float rounding (atol 1e-5).
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from qgraph.passes._rewrite import (
    RulePass,
    fail,
    int_attr,
    is_last_axis,
    is_scalar,
    rank,
    reduce_axes,
    scalar,
    static_dim,
)

_FLOATS = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}
_COMPUTE = {ir.DataType.FLOAT: 1, ir.DataType.DOUBLE: 11}
_CONSTANTS = (  # (pattern variable, its value, the reason when it differs)
    ("exponent", 2.0, "exponent is not 2"),
    ("one", 1.0, "numerator is not 1"),
    ("half", 0.5, "root exponent is not 0.5"),
    ("neg_half", -0.5, "inverse-root exponent is not -0.5"),
)


def _types(x: ir.Value, up: ir.Value | None, down: ir.Value | None):
    """(type the norm is computed in, type of the normalized value), from the optional Casts."""
    compute = ir.DataType(int_attr(up.producer(), "to", 0)) if up is not None else x.dtype
    result = ir.DataType(int_attr(down.producer(), "to", 0)) if down is not None else compute
    return compute, result


class _RmsNorm(pattern.RewriteRuleClassBase):
    """One RMSNorm spelling: the scale applied last (``weighted=None``) or to the input before
    the normalization, then multiplied by the inverse root (``"mul"``) or divided by the root
    (``"div"``); the up-cast optional (``up=True``) or absent, for an up-cast whose output is
    used outside the chain (it then stays, in front of the fused op)."""

    def __init__(self, name: str, *, weighted: str | None, up: bool) -> None:
        super().__init__(name)
        self._weighted, self._up = weighted, up

    def pattern(self, op, x, scale, exponent, eps, one, half, neg_half):
        xf = x
        if self._up:
            # OrValues of a node and a plain value need a tag_var to be commuted (onnxscript 0.7)
            xf = pattern.OrValue([op.Cast(x, _outputs=["up"]), x], tag_var="cast_up")
        square = pattern.OrValue([op.Pow(xf, exponent), op.Mul(xf, xf)])
        ms = op.ReduceMean(
            square, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["ms"]
        )
        var = op.Add(ms, eps)
        root = pattern.OrValue([op.Sqrt(var), op.Pow(var, half)])
        inv = pattern.OrValue([op.Reciprocal(root), op.Div(one, root), op.Pow(var, neg_half)])
        if self._weighted == "mul":
            return op.Mul(op.Mul(scale, xf), inv)
        if self._weighted == "div":
            return op.Div(op.Mul(scale, xf), root)
        normed = pattern.OrValue([op.Mul(xf, inv), op.Div(xf, root)])
        normed = pattern.OrValue([op.Cast(normed, _outputs=["down"]), normed], tag_var="cast_down")
        return op.Mul(scale, normed)

    def check(self, context, x, scale, ms, **kw):
        for var, value, reason in _CONSTANTS:
            if kw.get(var) is not None and not is_scalar(kw[var], value):
                return fail(reason)
        epsilon = scalar(kw.get("eps"))
        if epsilon is None or epsilon < 0:
            return fail("epsilon is not a constant scalar")
        node = ms.producer()
        axes = reduce_axes(node)
        if int_attr(node, "keepdims", 1) != 1:
            return fail("mean drops the reduced axis")
        if axes is None or len(axes) != 1 or not is_last_axis(axes[0], rank(x)):
            return fail("mean is not over the last axis")
        width = static_dim(x, -1)
        if rank(scale) != 1 or width is None or static_dim(scale, 0) != width:
            return fail("scale is not 1-D over the normalized axis")
        compute, result = _types(x, kw.get("up"), kw.get("down"))
        if x.dtype not in _FLOATS or compute not in _COMPUTE:
            return fail("normalization is not computed in float or double")
        if scale.dtype != result:
            return fail("scale type differs from the result type")
        return True

    def rewrite(self, op, x, scale, eps, up=None, down=None, **_):
        compute, _ = _types(x, up, down)
        return op.SimplifiedLayerNormalization(
            x, scale, axis=-1, epsilon=scalar(eps), stash_type=_COMPUTE[compute]
        )


_FORMS = (("scale-first", None), ("weighted-mul", "mul"), ("weighted-div", "div"))


class FuseRmsNorm(RulePass):
    """RMSNorm chain (mean of squares, eps, rsqrt, scale) -> SimplifiedLayerNormalization."""

    name = "fuse-rms-norm"
    # the name of the old hand-enumerated rule for the order that transformers' RMSNorm uses:
    # onnxscript records it in each fused node's metadata, so compiled bundles stay the same
    rules = [
        _RmsNorm.rule(f"rms-norm-{name}{suffix}", weighted=weighted, up=up)
        for up, suffix in ((True, ""), (False, "-shared-up-cast"))
        for name, weighted in _FORMS
    ]
