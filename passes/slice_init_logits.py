"""lm_head(hidden[B,S,H]) -> lm_head(Slice(hidden, -1:, axis=1)): prefill logits for the last
position only.

The prefill (``decoder_init``) otherwise computes ``S x vocab`` logits (about 50 GFLOP and 96 MB
of output for an 11 s clip at 0.6B) of which greedy decoding reads one row. The ``logits``
output becomes ``[batch, 1, vocab]``; the reference runtime reads the last row of either form.

Does not fire: no output named ``output`` (``skipped:no logits output``); it is not produced by
a MatMul/MatMulNBits (``skipped:logits not from a MatMul``); it already has one position
(``skipped:already last position``).
Scope: the ``prefill`` component by default (``decoder_init``; ``on=`` to change).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qgraph.families import PREFILL
from qgraph.pass_api import GraphPass, option

LM_HEAD_OPS = ("MatMul", "MatMulNBits")


class SliceInitLogits(GraphPass):
    """Prefill lm_head on all positions -> on the last position only."""

    name = "slice-init-logits"
    category = "bundle"
    default_roles = (PREFILL,)
    output: str = option("logits", "name of the logits output [batch, seq, vocab]")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        logits = next((v for v in model.graph.outputs if v.name == self.output), None)
        if logits is None:
            self.count("skipped:no logits output")
            return ir.passes.PassResult(model, False)
        if logits.shape is not None and len(logits.shape) == 3 and logits.shape[1] == 1:
            self.count("skipped:already last position")
            return ir.passes.PassResult(model, False)
        head = logits.producer()
        if head is None or head.op_type not in LM_HEAD_OPS:
            self.count("skipped:logits not from a MatMul")
            return ir.passes.PassResult(model, False)
        hidden = head.inputs[0]
        consts = {
            k: ir.Value(
                name=f"{self.output}_last_{k}", const_value=ir.tensor(np.array(v, np.int64))
            )
            for k, v in (("starts", [-1]), ("ends", [np.iinfo(np.int64).max]), ("axes", [1]))
        }
        for value in consts.values():
            value.const_value.name = value.name
            model.graph.register_initializer(value)
        last = ir.node("Slice", [hidden, *consts.values()], name=f"{self.output}_last_position")
        last.outputs[0].name = f"{hidden.name}_last"
        last.outputs[0].type = hidden.type
        if hidden.shape is not None:
            last.outputs[0].shape = ir.Shape([hidden.shape[0], 1, *hidden.shape[2:]])
        model.graph.insert_before(head, last)
        head.replace_input_with(0, last.outputs[0])
        if logits.shape is not None and len(logits.shape) == 3:
            logits.shape = ir.Shape([logits.shape[0], 1, logits.shape[2]])
        self.count("sliced")
        return ir.passes.PassResult(model, True)

    def adapt_reference(self, component: str, outputs: dict) -> dict:
        logits = outputs.get(self.output)
        if logits is None or logits.ndim != 3:
            return outputs
        return {**outputs, self.output: logits[:, -1:, :]}
