"""Corpus cases: one ONNX graph each, with the fusible sites it holds and how to feed it.

Site kinds (``SITE_KINDS``) and what one site is:

- ``rms-norm``: one RMSNorm (``x / sqrt(mean(x^2) + eps) * w`` in any spelling), whether or not
  a residual Add feeds it;
- ``skip-rms-norm``: an RMSNorm whose input is an Add of two activations (the residual);
- ``skip-layer-norm``: a LayerNormalization whose input is an Add of an activation and another
  activation or a position table (the residual, the embedding sums of BERT and Whisper);
- ``gelu`` / ``fast-gelu``: one erf GELU / one tanh GELU (with or without a bias Add in front);
- ``rotary``: one rotary embedding applied to one tensor (q and k of a layer are two sites);
- ``attention-decoder`` / ``attention-encoder`` / ``attention-cross``: one softmax attention:
  causal self-attention (with a KV cache where the graph has one), non-causal self-attention,
  attention whose keys come from another sequence.

Expected counts come from the configs (``hf.LAYERS = L``): Llama ``rms-norm 2L+1``,
``skip-rms-norm 2L``, ``rotary 2L``, ``attention-decoder L``; Qwen3 adds ``q_norm``/``k_norm``
(``rms-norm 4L+1``); BERT ``skip-layer-norm 2L+1`` (the embedding sum included), ``gelu L``,
``attention-encoder L``; the Whisper encoder ``skip-layer-norm 2L+1`` (the first adds the
position table), ``gelu L+2`` (two after the convolutions), ``attention-encoder L``; the Whisper
decoder ``skip-layer-norm 3L+1``, ``gelu L``, ``attention-decoder L``, ``attention-cross L``
(both branches of our exporter's merged decoder: twice that).

Feeds (``Case.feeds``): dims from ``Case.dims`` (defaults: batch 2, seq 5, past 4, total =
past + seq), token ids below the vocabulary, ``position_ids = past + arange(seq)``, a
``token_type_ids`` of zeros and ones, ``attention_mask`` all ones for decoders and right-padded
(the second row's last two keys masked) for encoders, floats standard normal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

SITE_KINDS = (
    "rms-norm",
    "skip-rms-norm",
    "skip-layer-norm",
    "gelu",
    "fast-gelu",
    "rotary",
    "attention-decoder",
    "attention-encoder",
    "attention-cross",
)
FAMILIES = ("decoder", "encoder", "norms", "rotary", "gelu")
DEFAULT_DIMS = {"batch": 2, "seq": 5, "past": 4}


@dataclass
class Case:
    name: str
    """``<model>/<source>`` or ``hand/<spelling>``: unique in the corpus."""
    family: str
    """Pattern family: one of ``FAMILIES``."""
    source: str
    """``torchscript17``, ``dynamo18``, ``dynamo18-opt``, ``qgraph-export`` or ``hand``."""
    path: Path
    """The unfused model (weights inside or next to it)."""
    expected: dict[str, int]
    """Fusible sites per kind (``SITE_KINDS``); kinds not named have none."""
    num_heads: int = 4
    hidden_size: int = 64
    tolerance: float = 1e-4
    """Max abs difference allowed between the fused and the unfused graph's outputs."""
    dims: dict[str, int] = field(default_factory=dict)
    """Sizes for symbolic dims (over ``DEFAULT_DIMS``)."""
    vocab: int = 128
    pad_mask: bool = False
    """Right-pad the second row of ``attention_mask`` (encoders)."""
    fixed: dict[str, np.ndarray] = field(default_factory=dict)
    """Inputs given explicitly (e.g. an offset)."""
    variants: tuple[dict[str, np.ndarray], ...] = ({},)
    """One feed set per entry, each overriding ``fixed`` (e.g. both branches of an ``If``)."""

    def feeds(self, seed: int = 0) -> list[dict[str, np.ndarray]]:
        """The feed sets of the numeric check (one per ``variants`` entry)."""
        graph = onnx.load(str(self.path), load_external_data=False).graph
        return [make_feeds(graph, self, seed, v) for v in self.variants]


def _dim(d: onnx.TensorShapeProto.Dimension, dims: dict[str, int]) -> int:
    if d.HasField("dim_value"):
        return d.dim_value
    name = d.dim_param
    if name in dims:
        return dims[name]
    low = name.lower()
    if "batch" in low:
        return dims["batch"]
    if "past" in low:
        return dims["past"]
    if "total" in low:
        return dims["past"] + dims["seq"]
    if "enc" in low:
        return dims.get("enc", 6)
    return dims["seq"]


def make_feeds(
    graph: onnx.GraphProto, case: Case, seed: int = 0, variant: dict | None = None
) -> dict[str, np.ndarray]:
    fixed = case.fixed | (variant or {})
    rng = np.random.default_rng(seed)
    dims = DEFAULT_DIMS | case.dims
    inits = {i.name for i in graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for value in graph.input:
        if value.name in inits:
            continue
        if value.name in fixed:
            feeds[value.name] = fixed[value.name]
            continue
        tensor = value.type.tensor_type
        shape = [_dim(d, dims) for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        name = value.name.lower()
        if "position" in name:
            start = dims["past"] if any("past" in i.name for i in graph.input) else 0
            arr = np.broadcast_to(np.arange(start, start + shape[-1]), shape).astype(dtype)
        elif "mask" in name:
            arr = np.ones(shape, dtype)
            if case.pad_mask and shape[0] > 1:
                arr[1, -2:] = 0
        elif "token_type" in name:
            arr = rng.integers(0, 2, size=shape).astype(dtype)
        elif np.issubdtype(dtype, np.integer):
            arr = rng.integers(0, case.vocab, size=shape).astype(dtype)
        elif dtype == np.bool_:
            arr = np.ones(shape, np.bool_)
        else:
            arr = rng.standard_normal(shape).astype(dtype)
        feeds[value.name] = np.ascontiguousarray(arr)
    return feeds
