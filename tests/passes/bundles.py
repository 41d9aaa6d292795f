"""Tiny two-decoder bundles with a tied embedding, for the bundle-pass tests; a tiny model with
an ``If`` whose branches read the same top-level weights (Whisper's merged decoder in small)."""

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


BRANCHES = """
<ir_version: 10, opset_import: ["" : 18]>
g (bool[1] use_cache_branch, float[2,5,80] x, float[80,64] W, float[64,48] V, float[80,48] U)
    => (float[2,5,48] y) {
    y = If (use_cache_branch) <
        then_branch = with_past () => (float[2,5,48] t_y) {
            t_h = MatMul (x, W)
            t_a = Relu (t_h)
            t_y = MatMul (t_a, V)
        },
        else_branch = no_past () => (float[2,5,48] e_y) {
            e_h = MatMul (x, W)
            e_a = Sigmoid (e_h)
            e_m = MatMul (e_a, V)
            e_u = MatMul (x, U)
            e_y = Add (e_m, e_u)
        }
    >
}
"""
"""``W`` and ``V`` are read by MatMuls in both branches, ``U`` in the else-branch only; K=80 is
not a multiple of a block size."""


def branch_model(seed: int = 0) -> ir.Model:
    """``BRANCHES`` with ``W``, ``V``, ``U`` as top-level initializers only the branches read
    (normal, scaled by ``1/sqrt(K)`` as trained layers are, so outputs stay of order one)."""
    rng = np.random.default_rng(seed)
    shapes = {"W": (80, 64), "V": (64, 48), "U": (80, 48)}
    arrays = {
        n: (rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32) for n, s in shapes.items()
    }
    return as_initializers(model_from_text(BRANCHES), arrays)


def branch_feeds(model: ir.Model, use_cache: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float inputs for ``model`` with ``use_cache_branch`` set (both branches run)."""
    rng = np.random.default_rng(seed)
    feeds = {"use_cache_branch": np.array([use_cache])}
    for v in model.graph.inputs:
        if v.name != "use_cache_branch":
            shape = [int(d) for d in v.shape]
            feeds[v.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


MERGED_DECODER = """
<ir_version: 10, opset_import: ["" : 18]>
g (bool[1] use_cache_branch, int64[batch,seq] input_ids, float[{vocab},{hidden}] E,
   float[{hidden},{hidden}] W) => (float[batch,seq,{vocab}] logits) {{
    et = Transpose <perm = [1, 0]> (E)
    logits = If (use_cache_branch) <
        then_branch = with_past () => (float[batch,seq,{vocab}] t_logits) {{
            t_e = Gather <axis = 0> (E, input_ids)
            t_m = MatMul (t_e, W)
            t_h = Tanh (t_m)
            t_logits = MatMul (t_h, et)
        }},
        else_branch = no_past () => (float[batch,seq,{vocab}] e_logits) {{
            e_e = Gather <axis = 0> (E, input_ids)
            e_m = MatMul (e_e, W)
            e_h = Sigmoid (e_m)
            e_logits = MatMul (e_h, et)
        }}
    >
}}
"""


def merged_decoder_bundle(seed: int = 0) -> Bundle:
    """Whisper's layout in small: one ``decoder_model_merged`` whose ``If`` branches read the
    tied table ``E`` (Gather) and, through one top-level Transpose, as their lm_head."""
    rng = np.random.default_rng(seed)
    arrays = {
        "E": rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32),
        "W": rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32),
    }
    text = MERGED_DECODER.format(vocab=VOCAB, hidden=HIDDEN)
    bundle = Bundle(family="test")
    bundle.add_component("decoder_model_merged", as_initializers(model_from_text(text), arrays))
    return bundle
