"""The named pipelines end to end on the tiny Qwen3-ASR: layout, sizes, token-exact decoding."""

from pathlib import Path

import numpy as np
import pytest

from qgraph.bundle import Bundle
from qgraph.examples import example_audio
from qgraph.manager import Instruments, run_pipeline
from qgraph.pipeline import expand
from qgraph.registry import default_registry
from qgraph.runtime import AsrSession
from qgraph.runtime.audio import load_audio


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    return load_audio(example_audio())


@pytest.fixture(scope="module")
def raw_tokens(tiny_raw: Path, audio: np.ndarray) -> list[int]:
    return AsrSession(tiny_raw).transcribe(audio).token_ids


def compile_with(raw: Path, pipeline: str, out: Path, **instruments) -> Bundle:
    bundle = Bundle.load(raw)
    result = run_pipeline(bundle, expand(pipeline, default_registry()), Instruments(**instruments))
    bundle.save(out)
    return bundle, result


@pytest.mark.parametrize("pipeline", ["fp32", "fp16"])
def test_lossless_pipeline_is_token_exact(tiny_raw, tmp_path, audio, raw_tokens, pipeline):
    bundle, result = compile_with(tiny_raw, pipeline, tmp_path / pipeline, verify_each=True)
    out = tmp_path / pipeline
    files = sorted(p.name for p in out.iterdir())
    assert "decoder_weights.data" in files and "embed_tokens.bin" in files
    assert "decoder_init.onnx.data" not in files and "decoder_step.onnx.data" not in files
    tokens = AsrSession(out).transcribe(audio).token_ids
    assert tokens == raw_tokens
    again = Bundle.load(out)
    second = run_pipeline(again, expand(pipeline, default_registry()))
    assert not any(r.modified for r in second.records), "a second compile changed something"


def test_fp32_layout_and_sizes(tiny_raw, tmp_path):
    bundle, result = compile_with(tiny_raw, "fp32", tmp_path / "fp32")
    step = bundle.components["decoder_step"]
    init = bundle.components["decoder_init"]
    assert [v.name for v in step.graph.inputs][0] == "input_embeds"
    assert list(init.graph.outputs[0].shape)[1] == 1  # last-position logits
    config = bundle.read_json("config.json")
    assert config["embed_tokens_dtype"] == "float32"
    raw_size = sum(f["bytes"] for f in Bundle.load(tiny_raw).manifest["files"].values())
    size = sum(f["bytes"] for f in bundle.manifest["files"].values())
    assert size < raw_size  # shared decoder weights outweigh the extra untied lm_head
    history = {r.text: r for r in result.records}
    assert history["share-weights"].stats["tensors shared"] > 0


def test_default_is_int4_within_its_budget(tiny_raw, tmp_path, audio):
    # --verify-each checks every pass's declared budget (int4: cosine / top-1 on logits)
    bundle, result = compile_with(tiny_raw, "default", tmp_path / "default", verify_each=True)
    ops = {n.op_type for n in bundle.components["decoder_step"].graph}
    assert "MatMulNBits" in ops and "MatMul" not in ops
    assert "MatMulNBits" not in {n.op_type for n in bundle.components["encoder"].graph}
    verdicts = [v for r in result.records for v in r.verified.values()]
    assert verdicts and all(v == "ok" or v.startswith("skipped") for v in verdicts)
    raw_size = sum(f["bytes"] for f in Bundle.load(tiny_raw).manifest["files"].values())
    size = sum(f["bytes"] for f in bundle.manifest["files"].values())
    assert size < raw_size / 2
    transcript = AsrSession(tmp_path / "default").transcribe(audio)
    assert transcript.token_ids


def test_small_adds_an_int8_encoder_within_its_budget(tiny_raw, tmp_path, audio):
    bundle, result = compile_with(tiny_raw, "small", tmp_path / "small", verify_each=True)
    encoder_ops = {n.op_type for n in bundle.components["encoder"].graph}
    assert "MatMulInteger" in encoder_ops and "MatMulNBits" not in encoder_ops
    assert "MatMulNBits" in {n.op_type for n in bundle.components["decoder_step"].graph}
    verdicts = [v for r in result.records for v in r.verified.values()]
    assert verdicts and all(v == "ok" or v.startswith("skipped") for v in verdicts)
    assert AsrSession(tmp_path / "small").transcribe(audio).token_ids
