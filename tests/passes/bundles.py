"""Tiny two-decoder bundles with a tied embedding, for the bundle-pass tests."""

import json

import numpy as np
import onnx_ir as ir

from qgraph.bundle import Bundle
from qgraph.testing import model_from_text

VOCAB, HIDDEN = 128, 16  # vocab > 100: generated ids are drawn from [0, 100)

DECODER = """
<ir_version: 10, opset_import: ["" : 18]>
g (int64[batch,{seq}] input_ids, float[{vocab},{hidden}] E, float[{hidden},{hidden}] W)
    => (float[batch,{seq},{vocab}] logits) {{
    e = Gather <axis = 0> (E, input_ids)
    m = MatMul (e, W)
    h = Tanh (m)
    et = Transpose <perm = [1, 0]> (E)
    logits = MatMul (h, et)
}}
"""


def as_initializers(model: ir.Model, arrays: dict[str, np.ndarray]) -> ir.Model:
    """Turn the named graph inputs into initializers holding ``arrays``."""
    for name, array in arrays.items():
        value = next(v for v in model.graph.inputs if v.name == name)
        model.graph.inputs.remove(value)
        value.const_value = ir.tensor(array, name=name)
        model.graph.register_initializer(value)
    return model


def decoder(seq: str, seed: int = 0) -> ir.Model:
    rng = np.random.default_rng(seed)
    text = DECODER.format(seq=seq, vocab=VOCAB, hidden=HIDDEN)
    arrays = {
        "E": rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32),
        "W": rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32),
    }
    return as_initializers(model_from_text(text), arrays)


def decoder_bundle() -> Bundle:
    """decoder_init (seq) and decoder_step (1 position) with the same weights."""
    bundle = Bundle(family="test")
    bundle.add_component("decoder_init", decoder("seq"))
    bundle.add_component("decoder_step", decoder("1"))
    bundle.side_files["config.json"] = json.dumps({"decoder": {"vocab_size": VOCAB}}).encode()
    return bundle
