"""The raw tiny Whisper bundle: layout, exact I/O, the merged decoder, numerics vs PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import onnxruntime as ort  # noqa: E402

from qgraph.bundle import Bundle  # noqa: E402
from qgraph.export.whisper import build_model, resolve_source  # noqa: E402
from tests.export.whisper_bundles import tiny_whisper  # noqa: E402

V, D, H, HD, L = 265, 64, 4, 16, 2
"""Tiny model: vocab, d_model, heads, head dim, decoder layers."""

FILES = {
    "onnx/encoder_model.onnx",
    "onnx/encoder_model.onnx_data",
    "onnx/decoder_model_merged.onnx",
    "onnx/decoder_model_merged.onnx_data",
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "added_tokens.json",
    "merges.txt",
    "qgraph.json",
}
RAW_FORBIDDEN = {"Gemm", "Gelu", "BiasGelu", "SkipLayerNormalization", "MultiHeadAttention"}


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_whisper(tmp_path_factory)


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Bundle:
    return Bundle.load(bundle_dir)


@pytest.fixture(scope="module")
def model():
    return build_model(resolve_source("tiny"))[0]


@pytest.fixture(scope="module")
def sessions(bundle_dir: Path) -> dict[str, ort.InferenceSession]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return {
        name: ort.InferenceSession(str(bundle_dir / "onnx" / f"{name}.onnx"), options)
        for name in ("encoder_model", "decoder_model_merged")
    }


def _io(values) -> list[tuple[str, str, list]]:
    return [
        (v.name, v.dtype.name, [d if isinstance(d, int) else str(d) for d in v.shape])
        for v in values
    ]


def test_layout_is_what_transformers_js_and_onnx_asr_read(bundle_dir: Path, bundle: Bundle) -> None:
    files = {p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file()}
    assert files == FILES
    assert bundle.family == "whisper"
    assert list(bundle.components) == ["encoder_model", "decoder_model_merged"]
    config = json.loads((bundle_dir / "config.json").read_text())
    assert config["model_type"] == "whisper" and config["vocab_size"] == V
    declared = config["transformers.js_config"]["use_external_data_format"]
    assert declared == {"encoder_model.onnx": 1, "decoder_model_merged.onnx": 1}
    for name, model in bundle.components.items():
        locations = {
            v.const_value.location
            for g in model.graphs()
            for v in g.initializers.values()
            if isinstance(v.const_value, ir.ExternalTensor)
        }
        assert locations == {f"{name}.onnx_data"}
    added = json.loads((bundle_dir / "added_tokens.json").read_text())
    assert added["<|startoftranscript|>"] == 257 and added["<|notimestamps|>"] == 264


def test_generation_config(bundle_dir: Path) -> None:
    gen = json.loads((bundle_dir / "generation_config.json").read_text())
    assert gen["decoder_start_token_id"] == 257 and gen["eos_token_id"] == 256
    assert gen["no_timestamps_token_id"] == 264 and gen["is_multilingual"] is False
    assert gen["suppress_tokens"] == [257, 259, 260, 261, 262, 263]
    assert gen["begin_suppress_tokens"] == [32, 256]
    pre = json.loads((bundle_dir / "preprocessor_config.json").read_text())
    assert (pre["feature_size"], pre["nb_max_frames"], pre["n_samples"]) == (80, 3000, 480000)


def test_exact_io(bundle: Bundle) -> None:
    enc = bundle.components["encoder_model"].graph
    assert _io(enc.inputs) == [("input_features", "FLOAT", ["batch_size", 80, 3000])]
    assert _io(enc.outputs) == [("last_hidden_state", "FLOAT", ["batch_size", 1500, D])]
    dec = bundle.components["decoder_model_merged"].graph
    inputs = [
        ("input_ids", "INT64", ["batch_size", "decoder_sequence_length"]),
        ("encoder_hidden_states", "FLOAT", ["batch_size", "encoder_sequence_length", D]),
    ]
    outputs = [("logits", "FLOAT", ["batch_size", "decoder_sequence_length", V])]
    for i in range(L):
        for kind in ("key", "value"):
            inputs.append(
                (
                    f"past_key_values.{i}.decoder.{kind}",
                    "FLOAT",
                    ["batch_size", H, "past_decoder_sequence_length", HD],
                )
            )
            outputs.append(
                (
                    f"present.{i}.decoder.{kind}",
                    "FLOAT",
                    ["batch_size", H, "total_decoder_sequence_length", HD],
                )
            )
        for kind in ("key", "value"):
            inputs.append(
                (
                    f"past_key_values.{i}.encoder.{kind}",
                    "FLOAT",
                    ["batch_size", H, "encoder_sequence_length", HD],
                )
            )
            outputs.append(
                (
                    f"present.{i}.encoder.{kind}",
                    "FLOAT",
                    ["batch_size_or_0", H, "encoder_sequence_length", HD],
                )
            )
    by_name = {v[0]: v for v in _io(dec.inputs)}
    assert [v[0] for v in _io(dec.inputs)][-1] == "use_cache_branch"
    assert by_name["use_cache_branch"] == ("use_cache_branch", "BOOL", [1])
    assert sorted(v for v in _io(dec.inputs) if v[0] != "use_cache_branch") == sorted(inputs)
    assert _io(dec.outputs) == outputs


def test_merged_decoder_shares_weights_at_top_level(bundle: Bundle, model) -> None:
    graph = bundle.components["decoder_model_merged"].graph
    nodes = list(graph)
    # the tied embedding's lm_head Transpose is computed once, outside the branches
    assert [n.op_type for n in nodes] == ["Transpose", "If"]
    assert nodes[0].inputs[0].name == "model.decoder.embed_tokens.weight"
    branches = {a.name: a.value for a in nodes[1].attributes.values()}
    assert set(branches) == {"then_branch", "else_branch"}
    top = graph.initializers
    assert "model.decoder.embed_tokens.weight" in top and "proj_out.weight" not in top
    for branch in branches.values():
        assert not branch.inputs
        big = [v.name for v in branch.initializers.values() if v.const_value.size >= 256]
        assert big == []
        weights = [n for n in branch if n.op_type == "Transpose" and n.inputs[0] in top.values()]
        assert weights == [], "linear weights are stored transposed, not transposed per branch"
    params = {k for k in model.state_dict() if k.startswith("model.decoder.")}
    missing = [k for k in params if k not in top and f"{k}.T" not in top]
    assert missing == [], "every decoder weight is one top-level initializer"
    assert "model.decoder.layers.0.fc1.weight.T" in top
    assert top["model.decoder.layers.0.fc1.weight.T"].shape == (D, 128)
    assert not [n for n in top if n.split(".")[0] in ("no_past", "with_past")]


def test_raw_graphs_have_no_fused_ops_and_no_baked_lengths(bundle: Bundle) -> None:
    for name, model in bundle.components.items():
        ops = {n.op_type for n in model.graph.all_nodes()}
        assert not ops & RAW_FORBIDDEN, name
    ints = set()
    for node in bundle.components["decoder_model_merged"].graph.all_nodes():
        for attr in node.attributes.values():
            if attr.name == "value" and isinstance(attr.value, ir.TensorProtocol):
                value = attr.value.numpy()
                if value.dtype == np.int64:
                    ints |= set(value.reshape(-1).tolist())
    for graph in bundle.components["decoder_model_merged"].graphs():
        for v in graph.initializers.values():
            if v.const_value.dtype == ir.DataType.INT64:
                ints |= set(v.const_value.numpy().reshape(-1).tolist())
    assert not ints & {5, 7, 17}, "a traced example length was baked into a constant"


def _hf(model, features, ids, past=None):
    with torch.no_grad():
        return model(
            input_features=torch.from_numpy(features) if past is None else None,
            encoder_outputs=None if past is None else past[0],
            decoder_input_ids=torch.from_numpy(ids),
            past_key_values=None if past is None else past[1],
            use_cache=True,
        )


def test_numerics_both_branches_match_pytorch(model, sessions) -> None:
    rng = np.random.default_rng(1)
    features = rng.standard_normal((2, 80, 3000)).astype(np.float32)
    hidden = sessions["encoder_model"].run(None, {"input_features": features})[0]
    with torch.no_grad():
        ref_hidden = model.model.encoder(torch.from_numpy(features)).last_hidden_state
    np.testing.assert_allclose(hidden, ref_hidden.numpy(), atol=1e-4)

    dec = sessions["decoder_model_merged"]
    names = [o.name for o in dec.get_outputs()]
    ids = np.array([[257, 264, 40], [257, 264, 72]], dtype=np.int64)
    feeds = {
        "input_ids": ids,
        "encoder_hidden_states": hidden,
        "use_cache_branch": np.array([False]),
    }
    for i in dec.get_inputs():
        if i.name.startswith("past_key_values."):
            feeds[i.name] = np.zeros((2, H, 0, HD), np.float32)
    first = dict(zip(names, dec.run(None, feeds), strict=True))
    ref = _hf(model, features, ids)
    np.testing.assert_allclose(first["logits"], ref.logits.numpy(), atol=1e-4)

    step_ids = np.array([[101, 33], [44, 120]], dtype=np.int64)  # two tokens with a past
    feeds = {
        "input_ids": step_ids,
        "encoder_hidden_states": hidden,
        "use_cache_branch": np.array([True]),
    }
    feeds |= {
        k.replace("present.", "past_key_values."): v for k, v in first.items() if k != "logits"
    }
    second = dict(zip(names, dec.run(None, feeds), strict=True))
    ref2 = _hf(model, features, step_ids, ((ref.encoder_last_hidden_state,), ref.past_key_values))
    np.testing.assert_allclose(second["logits"], ref2.logits.numpy(), atol=1e-4)
    assert second["present.0.decoder.key"].shape == (2, H, 5, HD)
    assert second["present.1.encoder.value"].shape[0] == 0  # "keep the cross cache you have"
