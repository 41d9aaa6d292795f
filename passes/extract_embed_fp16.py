"""decoder_step: Gather(E, input_ids) -> graph input ``input_embeds``; E -> ``embed_tokens.bin``.

The step's token-embedding lookup moves to the host: the input ``input_ids`` INT64[batch,1]
becomes ``input_embeds`` FLOAT[batch,1,hidden] (same position among the inputs), the table is
written as ``embed_tokens.bin`` (raw row-major [vocab, hidden], FP16 by default) and
``config.json`` records ``embed_tokens_dtype`` and ``embed_tokens_shape``. This is the public
Qwen3-ASR step contract; the reference runtime looks rows up in the file. A table still used by
the graph (a tied lm_head) stays in the graph; ``inline-lm-head`` unties it.

Does not fire: the component has ``input_embeds`` already (``skipped:already extracted``); no
input named ``input``; that input feeds anything but one ``Gather`` of a constant 2-D table
(``skipped:not a plain embedding lookup``). Refuses (error) an FP16 table with values beyond
the FP16 range.
Lossy only through FP16 rounding of the table (declared tolerance: atol/rtol 1e-2, cosine
0.9999); ``dtype=float32`` is exact.
Scope: the one ``step`` component (``decoder_step``; ``on=`` to choose another); a bundle pass
because it writes side files.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import onnx_ir as ir

from qgraph.bundle import Bundle
from qgraph.errors import PassFailure, PipelineError
from qgraph.families import STEP
from qgraph.pass_api import BundlePass, Tolerance, option

FP16_MAX = float(np.finfo(np.float16).max)


class ExtractEmbedFp16(BundlePass):
    """decoder_step embedding Gather -> input_embeds + embed_tokens.bin (FP16)."""

    name = "extract-embed-fp16"
    category = "bundle"
    tolerance = Tolerance(atol=1e-2, rtol=1e-2, min_cosine=0.9999)
    """FP16 rounding of the table (relative error <= 2^-11 per element) reaches the logits."""
    default_roles = (STEP,)
    input: str = option("input_ids", "the token-id input that feeds the embedding Gather")
    dtype: Literal["float16", "float32"] = option("float16", "dtype of embed_tokens.bin")
    file: str = option("embed_tokens.bin", "side file that receives the table")

    def call(self, bundle: Bundle) -> ir.passes.PassResult:
        targets = self.targets(bundle.roles())
        if len(targets) > 1:
            raise PipelineError(
                f"pass '{self.name}': one component only (on=...), not {', '.join(targets)}"
            )
        if not targets:
            self.count("skipped:no step component")
            return ir.passes.PassResult(bundle, False)
        component = targets[0]
        model = bundle.components[component]
        names = [v.name for v in model.graph.inputs]
        if "input_embeds" in names:
            self.count("skipped:already extracted")
            return ir.passes.PassResult(bundle, False)
        if self.input not in names:
            self.count(f"skipped:no input {self.input}")
            return ir.passes.PassResult(bundle, False)
        ids = model.graph.inputs[names.index(self.input)]
        uses = list(ids.uses())
        gather = uses[0].node if len(uses) == 1 else None
        table = gather.inputs[0] if gather is not None and gather.op_type == "Gather" else None
        if (
            table is None
            or uses[0].idx != 1
            or table.const_value is None
            or len(table.const_value.shape) != 2
            or gather.attributes.get_int("axis", 0) != 0
        ):
            self.count("skipped:not a plain embedding lookup")
            return ir.passes.PassResult(bundle, False)

        weights = table.const_value.numpy()
        if self.dtype == "float16" and np.abs(weights).max() > FP16_MAX:
            raise PassFailure(f"{self.name}: the embedding table exceeds the FP16 range")
        vocab, hidden = weights.shape
        dims = list(ids.shape) if ids.shape is not None else ["batch", 1]
        embeds = ir.Value(
            name="input_embeds", type=ir.TensorType(table.dtype), shape=ir.Shape([*dims, hidden])
        )
        model.graph.inputs[names.index(self.input)] = embeds
        ir.convenience.replace_all_uses_with(gather.outputs[0], embeds)
        model.graph.remove(gather, safe=True)
        if not table.uses() and not table.is_graph_output():
            del model.graph.initializers[table.name]

        bundle.side_files[self.file] = weights.astype(np.dtype(self.dtype))
        config = bundle.read_json("config.json")
        config["embed_tokens_dtype"] = self.dtype
        config["embed_tokens_shape"] = [int(vocab), int(hidden)]
        bundle.write_json("config.json", config)
        self.count("extracted")
        self.touch(component)
        return ir.passes.PassResult(bundle, True)

    def adapt_feeds(self, component: str, feeds: dict, bundle: Bundle) -> dict:
        if component not in self.targets(bundle.roles()) or self.input not in feeds:
            return feeds
        table = np.asarray(bundle.side_files[self.file]).astype(np.float32)
        out = {k: v for k, v in feeds.items() if k != self.input}
        out["input_embeds"] = table[feeds[self.input]]
        return out
