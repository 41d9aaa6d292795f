"""The raw tiny bundle: components, exact I/O, raw op set, weight names and side files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import onnx_ir as ir
import pytest
from tokenizers import Tokenizer

from qgraph.bundle import Bundle

V, H, L, KV, D = 151936, 128, 2, 2, 32
"""Tiny model: vocab, text hidden, layers, kv heads, head dim."""

EXPECTED_IO = {
    "encoder": (
        [("mel", "FLOAT", [1, 128, "time"])],
        [("audio_features", "FLOAT", [1, "audio_tokens", H])],
    ),
    "decoder_init": (
        [
            ("input_ids", "INT64", ["batch", "seq"]),
            ("position_ids", "INT64", ["batch", "seq"]),
            ("audio_features", "FLOAT", ["batch", "audio_tokens", H]),
            ("audio_offset", "INT64", [1]),
        ],
        [
            ("logits", "FLOAT", ["batch", "seq", V]),
            ("present_keys", "FLOAT", [L, "batch", KV, "seq", D]),
            ("present_values", "FLOAT", [L, "batch", KV, "seq", D]),
        ],
    ),
    "decoder_step": (
        [
            ("input_ids", "INT64", ["batch", 1]),
            ("position_ids", "INT64", ["batch", 1]),
            ("past_keys", "FLOAT", [L, "batch", KV, "past", D]),
            ("past_values", "FLOAT", [L, "batch", KV, "past", D]),
        ],
        [
            ("logits", "FLOAT", ["batch", 1, V]),
            ("present_keys", "FLOAT", [L, "batch", KV, "total", D]),
            ("present_values", "FLOAT", [L, "batch", KV, "total", D]),
        ],
    ),
}

# Ops an optimizer or fusion would introduce; the raw export must contain none of them.
FUSED_OPS = {
    "Gemm",
    "Gelu",
    "FastGelu",
    "BiasGelu",
    "RMSNormalization",
    "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "SkipLayerNormalization",
    "RotaryEmbedding",
    "Attention",
    "MultiHeadAttention",
    "GroupQueryAttention",
    "MatMulNBits",
    "FusedMatMul",
}


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path) -> Bundle:
    return Bundle.load(tiny_bundle)


def _io(values) -> list[tuple[str, str, list]]:
    return [
        (v.name, v.dtype.name, [d if isinstance(d, int) else str(d) for d in v.shape])
        for v in values
    ]


def test_components_and_exact_io(bundle: Bundle) -> None:
    assert bundle.family == "qwen3-asr"
    assert list(bundle.components) == ["encoder", "decoder_init", "decoder_step"]
    for name, (inputs, outputs) in EXPECTED_IO.items():
        graph = bundle.components[name].graph
        assert _io(graph.inputs) == inputs, name
        assert _io(graph.outputs) == outputs, name


def test_every_dynamic_dim_has_a_readable_name(bundle: Bundle) -> None:
    allowed = {"time", "audio_tokens", "batch", "seq", "past", "total"}
    allowed |= {"chunks", "padded_time", "chunk_tokens", "windows", "window_tokens"}
    for name, model in bundle.components.items():
        values = [*model.graph.inputs, *model.graph.outputs]
        values += [v for node in model.graph.all_nodes() for v in node.outputs]
        names = {str(d) for v in values if v.shape is not None for d in v.shape}
        names = {n for n in names if not n.isdigit() and n != "None"}
        assert names <= allowed, f"{name}: {sorted(names - allowed)[:3]}"


def test_opset_and_domains_are_raw(bundle: Bundle) -> None:
    for name, model in bundle.components.items():
        assert model.opset_imports[""] == 18, name
        domains = {n.domain for n in model.graph.all_nodes()}
        assert domains <= {""}, f"{name} uses non-standard domains {domains}"


def test_no_gemm_and_no_exporter_fusions(bundle: Bundle) -> None:
    for name, model in bundle.components.items():
        ops = Counter(n.op_type for n in model.graph.all_nodes())
        assert not FUSED_OPS & set(ops), f"{name}: {sorted(FUSED_OPS & set(ops))}"
        assert ops["MatMul"] > 0 and ops["Softmax"] > 0, name
    step_ops = Counter(n.op_type for n in bundle.components["decoder_step"].graph.all_nodes())
    # RMSNorm is the plain chain: (input, post-attention, q, k) x layers + final norm.
    assert step_ops["ReduceMean"] == 4 * L + 1
    assert step_ops["Gather"] >= 1, "the raw step keeps its embedding lookup"


def _weight_matmuls(model: ir.Model) -> int:
    """MatMuls whose B input is a 2-D initializer or a Transpose of one (a Linear)."""
    count = 0
    for node in model.graph.all_nodes():
        if node.op_type != "MatMul":
            continue
        b = node.inputs[1]
        producer = b.producer()
        if producer is not None and producer.op_type == "Transpose":
            b = producer.inputs[0]
        if b is not None and b.is_initializer() and len(b.shape) == 2:
            count += 1
    return count


def test_every_linear_is_a_matmul(bundle: Bundle) -> None:
    # encoder: conv_out + 2 layers x (q, k, v, out, fc1, fc2) + projector 2
    assert _weight_matmuls(bundle.components["encoder"]) == 1 + 2 * 6 + 2
    # decoders: 2 layers x (q, k, v, o, gate, up, down) + lm_head
    for name in ("decoder_init", "decoder_step"):
        assert _weight_matmuls(bundle.components[name]) == L * 7 + 1, name


def test_weights_keep_checkpoint_names(bundle: Bundle) -> None:
    enc = set(bundle.components["encoder"].graph.initializers)
    assert "model.audio_tower.layers.0.self_attn.q_proj.weight" in enc
    assert "model.multi_modal_projector.linear_2.weight" in enc
    for name in ("decoder_init", "decoder_step"):
        inits = bundle.components[name].graph.initializers
        tied = inits["model.language_model.embed_tokens.weight"]
        assert list(tied.shape) == [V, H]
        assert "lm_head.weight" not in inits, "the tied embedding is stored once"
        assert "model.language_model.layers.1.mlp.down_proj.weight" in inits


def test_encoder_mask_is_built_with_where(bundle: Bundle) -> None:
    ops = Counter(n.op_type for n in bundle.components["encoder"].graph.all_nodes())
    assert ops["Where"] >= 1
    decoder_ops = Counter(n.op_type for n in bundle.components["decoder_init"].graph.all_nodes())
    assert decoder_ops["Where"] >= 1 and decoder_ops["ScatterElements"] == 1
    assert decoder_ops["Trilu"] == 0


def test_config_json_public_layout(tiny_bundle: Path) -> None:
    cfg = json.loads((tiny_bundle / "config.json").read_text())
    assert cfg["model_type"] == "qwen3_asr"
    assert cfg["encoder"] == {
        "num_layers": 2,
        "hidden_size": 64,
        "num_heads": 4,
        "ffn_dim": 128,
        "conv_channels": 32,
        "output_dim": 128,
        "downsample_factor": 8,
        "num_mel_bins": 128,
        "n_window": 50,
        "n_window_infer": 800,
    }
    dec = cfg["decoder"]
    assert (dec["num_layers"], dec["hidden_size"], dec["vocab_size"]) == (L, H, V)
    assert (dec["num_attention_heads"], dec["num_key_value_heads"], dec["head_dim"]) == (4, KV, D)
    assert dec["rope_theta"] == 1e6 and dec["tie_word_embeddings"] is True
    assert cfg["mel"] == {
        "sample_rate": 16000,
        "n_fft": 400,
        "hop_length": 160,
        "n_mels": 128,
        "fmin": 0,
        "fmax": 8000,
    }
    assert cfg["special_tokens"] == {
        "eos_token_ids": [151643, 151645],
        "pad_token_id": 151643,
        "im_start": 151644,
        "im_end": 151645,
        "audio_start": 151669,
        "audio_end": 151670,
        "audio_pad": 151676,
        "asr_text": 151704,
    }


def test_preprocessor_config_does_not_pad_to_30s(tiny_bundle: Path) -> None:
    pre = json.loads((tiny_bundle / "preprocessor_config.json").read_text())
    assert pre["feature_size"] == 128 and pre["sampling_rate"] == 16000
    assert pre["hop_length"] == 160 and pre["n_fft"] == 400
    assert pre["padding"] == "do_not_pad"
    assert "nb_max_frames" not in pre and "n_samples" not in pre


def test_tokenizer_files(tiny_bundle: Path) -> None:
    tok = Tokenizer.from_file(str(tiny_bundle / "tokenizer.json"))
    assert tok.token_to_id("<|audio_pad|>") == 151676
    assert tok.token_to_id("<asr_text>") == 151704
    tok_cfg = json.loads((tiny_bundle / "tokenizer_config.json").read_text())
    assert tok_cfg["eos_token"] == "<|im_end|>" and tok_cfg["pad_token"] == "<|endoftext|>"


def test_manifest_lists_side_files(bundle: Bundle) -> None:
    assert set(bundle.side_files) == {
        "config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }
