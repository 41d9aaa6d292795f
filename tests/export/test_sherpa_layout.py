"""The sherpa-onnx layout: its contract, the graphs against PyTorch, and sherpa-onnx itself.

The reference is the native PyTorch model decoding greedily with ``generate`` on the built-in
speech clip (qgraph's log-mel, which equals sherpa-onnx's to ~1e-5), stopping only at
``<|im_end|>`` as sherpa-onnx does. sherpa-onnx is given the exported bundle as it is.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from qgraph.bundle import Bundle
from qgraph.cli import main
from qgraph.errors import ExportError, RuntimeInputError
from qgraph.examples import example_audio, example_long_audio, example_tokenizer
from qgraph.export.qwen3_asr.sherpa import (
    FAMILY,
    TOKENIZER_FILES,
    cache_names,
    delta_names,
    export_sherpa,
    sherpa_tokenizer_files,
)
from qgraph.families import open_session
from qgraph.manager import run_pipeline
from qgraph.pipeline import expand
from qgraph.registry import default_registry
from qgraph.runtime.audio import load_audio
from qgraph.runtime.mel import log_mel
from qgraph.runtime.prompt import build_prompt_ids, n_audio_tokens
from qgraph.runtime.sherpa import SherpaSession

IM_END = 151645
MAX_NEW = 48  # below sherpa-onnx's 64-token repetition window, so it never truncates
MAX_TOTAL_LEN = 256


@pytest.fixture(scope="module")
def sherpa_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_sherpa(
        "tiny", tmp_path_factory.mktemp("sherpa") / "raw", max_total_len=MAX_TOTAL_LEN
    )


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    return load_audio(example_audio())


@pytest.fixture(scope="module")
def torch_tokens(reference, audio: np.ndarray) -> list[int]:
    """PyTorch greedy tokens for the example clip, without the final ``<|im_end|>``."""
    mel = log_mel(audio)
    prompt, _ = build_prompt_ids(example_tokenizer(), n_audio_tokens(mel.shape[1]))
    feats, mask = reference.inputs(mel)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = reference.model.generate(
            input_ids=ids,
            input_features=feats,
            input_features_mask=mask,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=MAX_NEW,
            do_sample=False,
            eos_token_id=[IM_END],
            pad_token_id=IM_END,
        )
    tokens = out[0, len(prompt) :].tolist()
    return tokens[:-1] if tokens[-1] == IM_END else tokens


def sherpa_strings(ids: list[int]) -> list[str]:
    """The per-token strings sherpa-onnx reports: special ``<|...|>`` tokens verbatim (minus
    ``<|im_start|>``/``<|im_end|>``), others byte-decoded."""
    tok = example_tokenizer()
    out = []
    for i in ids:
        text = tok.id_to_token(i)
        if text.startswith("<|") and text.endswith("|>"):
            out.append("" if text in ("<|im_start|>", "<|im_end|>") else text)
        else:
            out.append(tok.decode([i], skip_special_tokens=False))
    return out


def sherpa_transcribe(bundle: Path, audio: np.ndarray) -> list[str]:
    sherpa_onnx = pytest.importorskip("sherpa_onnx")
    recognizer = sherpa_onnx.OfflineRecognizer.from_qwen3_asr(
        conv_frontend=str(bundle / "conv_frontend.onnx"),
        encoder=str(bundle / "encoder.onnx"),
        decoder=str(bundle / "decoder.onnx"),
        tokenizer=str(bundle),
        max_total_len=MAX_TOTAL_LEN,
        max_new_tokens=MAX_NEW,
        num_threads=1,
    )
    stream = recognizer.create_stream()
    stream.accept_waveform(16000, audio)
    recognizer.decode_stream(stream)
    return list(stream.result.tokens)


# -- the contract -------------------------------------------------------------------------------
def test_bundle_holds_the_sherpa_contract(sherpa_bundle: Path):
    bundle = Bundle.load(sherpa_bundle)
    assert bundle.family == FAMILY
    assert list(bundle.components) == ["conv_frontend", "encoder", "decoder"]
    comps = bundle.manifest["components"]
    assert [v["name"] for v in comps["encoder"]["inputs"]] == [
        "conv_output",
        "feature_attention_mask",
    ]
    assert comps["encoder"]["inputs"][1]["dtype"] == "BOOL"
    dec = comps["decoder"]
    names = ["input_ids", "audio_features", "attention_mask", "cache_position", *cache_names(2)]
    assert [v["name"] for v in dec["inputs"]] == names
    assert [v["name"] for v in dec["outputs"]] == ["logits", *delta_names(2)]
    assert dec["inputs"][4]["shape"] == [1, MAX_TOTAL_LEN, 2, 32]
    assert dec["outputs"][0]["shape"] == [1, "seq", 151936]
    meta = bundle.components["decoder"].metadata_props
    assert "kv_delta" in meta["model_type"]
    assert (meta["num_layers"], meta["max_total_len"]) == ("2", str(MAX_TOTAL_LEN))
    assert all((sherpa_bundle / f).is_file() for f in TOKENIZER_FILES)


def test_tokenizer_files_round_trip(sherpa_bundle: Path):
    tok = json.loads(example_tokenizer().to_str())
    vocab = json.loads((sherpa_bundle / "vocab.json").read_text())
    assert vocab == tok["model"]["vocab"]
    merges = (sherpa_bundle / "merges.txt").read_text().splitlines()
    assert merges[0].startswith("#") and len(merges) - 1 == len(tok["model"]["merges"])
    added = json.loads((sherpa_bundle / "tokenizer_config.json").read_text())
    decoder = added["added_tokens_decoder"]
    assert decoder["151645"]["content"] == "<|im_end|>"
    assert decoder["151676"]["content"] == "<|audio_pad|>"
    assert added["eos_token"] == "<|im_end|>"  # the source config's keys are kept


def test_tokenizer_files_reject_what_merges_txt_cannot_hold():
    tok = json.loads(example_tokenizer().to_str())
    tok["model"]["merges"][0] = ["a b", "c"]
    with pytest.raises(ExportError, match="merges.txt"):
        sherpa_tokenizer_files(json.dumps(tok), {})
    tok["model"] = {"type": "WordPiece", "vocab": {}}
    with pytest.raises(ExportError, match="BPE"):
        sherpa_tokenizer_files(json.dumps(tok), {})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_total_len": 8}, "max_total_len"), ({"opset": 11}, "opset")],
)
def test_bad_options_fail_before_tracing(tmp_path: Path, kwargs: dict, message: str):
    with pytest.raises(ExportError, match=message):
        export_sherpa("tiny", tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


# -- the graphs against PyTorch, driven the way sherpa-onnx drives them ------------------------
def test_audio_features_match_pytorch(sherpa_bundle: Path, reference):
    conv = ort.InferenceSession(str(sherpa_bundle / "conv_frontend.onnx"))
    enc = ort.InferenceSession(str(sherpa_bundle / "encoder.onnx"))
    mel = log_mel(load_audio(example_long_audio()))  # 2 attention windows, a partial chunk
    n = n_audio_tokens(mel.shape[1])
    (tokens,) = conv.run(None, {"input_features": mel.T[None]})
    mask = np.arange(tokens.shape[1])[None] < n
    (feats,) = enc.run(None, {"conv_output": tokens, "feature_attention_mask": mask})
    want = reference.audio_features(mel)
    assert np.abs(feats[0, :n] - want.reshape(n, -1)).max() < 1e-4
    assert not feats[0, n:].any()  # sherpa-onnx trims the zero rows


def test_decoder_protocol_is_token_exact(sherpa_bundle: Path, audio, torch_tokens):
    """Prefill on empty static caches, then one token a step, deltas written at cache_position."""
    dec = ort.InferenceSession(str(sherpa_bundle / "decoder.onnx"))
    conv = ort.InferenceSession(str(sherpa_bundle / "conv_frontend.onnx"))
    enc = ort.InferenceSession(str(sherpa_bundle / "encoder.onnx"))
    mel = log_mel(audio)
    n = n_audio_tokens(mel.shape[1])
    (tokens,) = conv.run(None, {"input_features": mel.T[None]})
    mask = np.arange(tokens.shape[1])[None] < n
    (feats,) = enc.run(None, {"conv_output": tokens, "feature_attention_mask": mask})
    feats = feats[:, :n]
    prompt, _ = build_prompt_ids(example_tokenizer(), n)
    caches = {name: np.zeros((1, MAX_TOTAL_LEN, 2, 32), np.float32) for name in cache_names(2)}
    ids, pos, out = prompt, 0, []
    while len(out) < MAX_NEW:
        feed = {
            "input_ids": np.array([ids], np.int64),
            "audio_features": feats,
            "attention_mask": np.ones((1, len(ids)), np.int64),
            "cache_position": np.arange(pos, pos + len(ids), dtype=np.int64),
            **caches,
        }
        logits, *deltas = dec.run(None, feed)
        for name, delta in zip(cache_names(2), deltas, strict=True):
            caches[name][:, pos : pos + len(ids)] = delta
        pos += len(ids)
        token = int(logits[0, -1].argmax())
        if token == IM_END:
            break
        out.append(token)
        ids = [token]
    assert len(torch_tokens) == MAX_NEW  # the tiny model never says <|im_end|> here
    assert out == torch_tokens


# -- sherpa-onnx itself -------------------------------------------------------------------------
def test_sherpa_onnx_decodes_the_pytorch_tokens(sherpa_bundle: Path, audio, torch_tokens):
    assert sherpa_transcribe(sherpa_bundle, audio) == sherpa_strings(torch_tokens)


@pytest.mark.parametrize(
    ("pipeline", "fused"),
    [
        ("hygiene", {}),
        (
            "hygiene,fusions,inline-lm-head",
            {
                "decoder": {"RotaryEmbedding", "SkipSimplifiedLayerNormalization"},
                "encoder": {"MultiHeadAttention", "BiasGelu"},
                "conv_frontend": {"Gelu"},
            },
        ),
        ("hygiene,fusions,to-fp16", {"decoder": {"RotaryEmbedding"}}),
    ],
)
def test_compiled_bundle_stays_token_exact_in_sherpa_onnx(
    sherpa_bundle: Path, tmp_path: Path, audio, torch_tokens, pipeline: str, fused: dict
):
    pytest.importorskip("sherpa_onnx")
    bundle = Bundle.load(sherpa_bundle)
    result = run_pipeline(bundle, expand(pipeline, default_registry()))
    assert any(r.modified for r in result.records)
    for component, ops in fused.items():
        present = {n.op_type for n in bundle.components[component].graph}
        assert ops <= present, f"{component}: {sorted(ops - present)} did not fire"
    out = bundle.save(tmp_path / "compiled")
    assert sherpa_transcribe(out, audio) == sherpa_strings(torch_tokens)


# -- qgraph's runtime on the sherpa layout ------------------------------------------------------
def test_reference_runtime_decodes_the_pytorch_tokens(sherpa_bundle: Path, audio, torch_tokens):
    session = open_session(sherpa_bundle)
    assert isinstance(session, SherpaSession) and session.capacity == MAX_TOTAL_LEN
    result = session.transcribe(audio, max_tokens=MAX_NEW)
    assert result.token_ids == torch_tokens


def test_int4_bundle_decodes_alike_in_sherpa_onnx_and_qgraph(
    sherpa_bundle: Path, tmp_path: Path, audio
):
    """int4 is lossy, so the check is two runtimes agreeing on the same quantized graphs, up to
    the first near-tie: at token 39 the tiny random model's top two logits are 1e-3 apart, where
    the int8 activations of MatMulNBits (accuracy_level 4) in sherpa-onnx's own ONNX Runtime
    build and ours round differently."""
    bundle = Bundle.load(sherpa_bundle)
    pipeline = "sherpa,quantize-int4"
    run_pipeline(bundle, expand(pipeline, default_registry()))
    ops = Counter(n.op_type for n in bundle.components["decoder"].graph)
    # per layer: packed q/k/v, o, packed gate/up, down; then lm_head (also the embedding)
    assert (ops["MatMulNBits"], ops["GatherBlockQuantized"]) == (2 * 4 + 1, 1)
    out = bundle.save(tmp_path / "int4")
    ours = SherpaSession(out, threads=1).transcribe(audio, max_tokens=MAX_NEW).token_ids
    assert sherpa_transcribe(out, audio)[:36] == sherpa_strings(ours)[:36]


def test_decoding_stops_when_the_cache_is_full(sherpa_bundle: Path, audio):
    session = SherpaSession(sherpa_bundle)
    mel = session.features(audio)
    features = session.encode(mel)
    prompt, offset = session.prompt(features.shape[1])
    session.capacity = len(prompt) + 3
    tokens, reason = session.generate(features, prompt, offset, 100, stop_on_eos=False)
    assert (len(tokens), reason) == (4, "cache_full")
    session.capacity = len(prompt) - 1
    with pytest.raises(RuntimeInputError, match="--max-total-len"):
        session.prefill(prompt, features, offset)


def test_qgraph_bench_reads_the_sherpa_layout(sherpa_bundle: Path, tmp_path: Path, capsys):
    report = tmp_path / "bench.json"
    args = ["bench", str(sherpa_bundle), "--audio-seconds", "3", "--steps", "3", "--repeat", "1"]
    assert main([*args, "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["steps"] == 3 and result["audio_tokens"] == n_audio_tokens(300)
    assert 0 < result["decoder_step_ms"] < result["end_to_end_ms"]
    assert "decoder_step" in capsys.readouterr().out


def test_qgraph_validate_reads_the_sherpa_layout(sherpa_bundle: Path, capsys):
    rc = main(
        ["validate", str(sherpa_bundle), "--reference", "tiny", "--max-tokens", "8", "--json"]
    )
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["ok"] is True
    (clip,) = report["clips"]
    assert clip["encoder_max_abs"] < 1e-4 and clip["onnx_tokens"] == clip["torch_tokens"]
