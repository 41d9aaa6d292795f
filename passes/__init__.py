"""Built-in passes: the explicit registry table.

Each module holds one rewrite; its docstring is its spec. ``BUILTIN_PASSES`` lists the pass
classes, ``BUILTIN_PIPELINES`` the named pipelines (``name: (text, summary)``).

Choosing a mechanism for a new rewrite:

- **pattern rule** (``_rewrite.RulePass``, onnxscript's rewriter: pattern / check / rewrite): a
  fixed local chain of a few ops whose conditions are checks on the matched values (norms, GELU,
  rotary embedding). Spell each Add/Mul in one operand order (rules are commuted when applied);
  a refused ``check`` becomes ``skipped:<reason>`` with no extra code.
- **hand matcher** (a ``GraphPass`` walking the nodes: ``fuse-gqa``/``fuse-mha`` through
  ``_attention``, ``fuse-sibling-matmuls``): optional or repeated structure a pattern would have
  to enumerate (cache concat, repeat_kv, masks to evaluate), nodes grouped by something other
  than one dataflow chain (MatMuls sharing an input), or new values shared across sites, graphs
  or branches.
- **onnx-ir wrapper** (``fold-constants``, ``remove-unused``, ``cse``, ``topological-sort``):
  onnx-ir or onnxscript already has the pass; wrap it, keep ``modified`` exact and add only what
  qgraph needs (limits, names, statistics).

Ordering: the category order (compression < fusion < quantization) is declared once, in
``qgraph.pass_api.CATEGORY_ORDER``; a pass's ``must_follow`` maps the other passes (or categories)
it needs before it to the reason.
"""

from qgraph.passes.auto_quantize import AutoQuantize
from qgraph.passes.awq_smooth import AwqSmooth
from qgraph.passes.cse import CommonSubexpressionElimination
from qgraph.passes.extract_embed_fp16 import ExtractEmbedFp16
from qgraph.passes.fold_constants import FoldConstants
from qgraph.passes.fuse_bias_gelu import FuseBiasGelu
from qgraph.passes.fuse_fast_gelu import FuseFastGelu
from qgraph.passes.fuse_gelu import FuseGelu
from qgraph.passes.fuse_gqa import FuseGroupQueryAttention
from qgraph.passes.fuse_mha import FuseMultiHeadAttention
from qgraph.passes.fuse_rms_norm import FuseRmsNorm
from qgraph.passes.fuse_rotary_embedding import FuseRotaryEmbedding
from qgraph.passes.fuse_sibling_matmuls import FuseSiblingMatMuls
from qgraph.passes.fuse_skip_layer_norm import FuseSkipLayerNorm
from qgraph.passes.fuse_skip_rms_norm import FuseSkipRmsNorm
from qgraph.passes.inline_lm_head import InlineLmHead
from qgraph.passes.low_rank import LowRank
from qgraph.passes.quantize_int4 import QuantizeMatMulNBits
from qgraph.passes.quantize_int8 import QuantizeInt8
from qgraph.passes.remove_unused import RemoveUnused
from qgraph.passes.shard_external_data import ShardExternalData
from qgraph.passes.share_weights import ShareWeights
from qgraph.passes.slice_init_logits import SliceInitLogits
from qgraph.passes.static_kv_cache import StaticKvCache
from qgraph.passes.strip_reshape_allowzero import StripReshapeAllowzero
from qgraph.passes.to_fp16 import ToFp16
from qgraph.passes.topological_sort import TopologicalSort

BUILTIN_PASSES = [
    # hygiene
    StripReshapeAllowzero,
    FoldConstants,
    RemoveUnused,
    CommonSubexpressionElimination,
    TopologicalSort,
    # bundle layout
    ExtractEmbedFp16,
    InlineLmHead,
    SliceInitLogits,
    StaticKvCache,
    ShareWeights,
    ShardExternalData,
    # precision
    ToFp16,
    # compression (before fusions and quantization)
    LowRank,
    # fusion (ONNX Runtime contrib ops), in pipeline order
    FuseRmsNorm,
    FuseSkipRmsNorm,
    FuseSkipLayerNorm,
    FuseGelu,
    FuseBiasGelu,
    FuseFastGelu,
    FuseRotaryEmbedding,
    FuseGroupQueryAttention,
    FuseMultiHeadAttention,
    FuseSiblingMatMuls,
    # quantization (after fusions)
    AwqSmooth,
    QuantizeMatMulNBits,
    AutoQuantize,
    QuantizeInt8,
]

# The release layout for encoder / decoder_init / decoder_step bundles. Every step is a no-op on
# bundles without those components, so the named pipelines work on any model.
_UNTIE = "inline-lm-head,slice-init-logits"
_SHARE = "share-weights,remove-unused,topological-sort"

BUILTIN_PIPELINES = {
    "hygiene": (
        "fold-constants,strip-reshape-allowzero,cse,remove-unused,topological-sort",
        "lossless clean-up: fold constants, strip provably-safe allowzero, merge duplicates, "
        "drop dead code, sort",
    ),
    "fusions": (
        "fuse-rms-norm,fuse-skip-rms-norm,fuse-skip-layer-norm,fuse-gelu,fuse-bias-gelu,"
        "fuse-fast-gelu,fuse-rotary-embedding,fuse-gqa,fuse-mha,fuse-sibling-matmuls,cse,"
        "remove-unused,topological-sort",
        "ONNX Runtime contrib-op fusions: RMSNorm and LayerNorm with their residual Adds, GELU "
        "(exact and tanh) with its bias, rotary embedding, decoder (GQA) and encoder (MHA) "
        "attention, then one MatMul for the projections that share an input (q/k/v, gate/up); "
        "merges the constants the rewrites repeat",
    ),
    "fp32": (
        f"hygiene,fusions,extract-embed-fp16{{dtype=float32}},{_UNTIE},{_SHARE}",
        "every lossless pass: FP32 weights, ORT fusions, the step's embedding table as FP32 "
        "embed_tokens.bin, untied lm_head, last-position prefill logits, one shared decoder "
        "data file",
    ),
    "default": (
        f"hygiene,fusions,extract-embed-fp16,{_UNTIE},quantize-int4,{_SHARE}",
        "the release for Qwen3-ASR (and any family without its own recipe): fused graphs, int4 "
        "(MatMulNBits, block 64, asymmetric, accuracy level 4) decoders incl. lm_head, FP32 "
        "encoder, FP16 embed_tokens.bin, one shared decoder data file; Whisper gets its own "
        "(qgraph.families.WHISPER_DEFAULT: an 8-bit decoder, measured on tiny.en)",
    ),
    "small": (
        "default,quantize-int8{roles=[encoder]},remove-unused",
        "default with an INT8 encoder (dynamic, per-channel weights): at 0.6B 0.51x the public "
        "recipe's peak memory and 0.76x its time (benchmarks/e2e.py); +1 pp WER on Whisper "
        "tiny.en (benchmarks/whisper_table.py)",
    ),
    "fp16": (
        f"hygiene,extract-embed-fp16,{_UNTIE},to-fp16,{_SHARE}",
        "FP16 weight storage (FP32 compute and I/O, masks clamped to stay finite): half the "
        "disk of fp32; unfused, because to-fp16 leaves contrib ops' FP32 weights alone",
    ),
    "sherpa": (
        "hygiene,fusions,inline-lm-head",
        "lossless for the sherpa-onnx layout (export --layout sherpa): ORT fusions and an "
        "untied lm_head, keeping sherpa-onnx's I/O contract",
    ),
}
