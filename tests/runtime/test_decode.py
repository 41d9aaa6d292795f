"""Greedy decoding on tiny hand-made bundles in every I/O form the runtime must accept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_runtime_bundle import BAD, EOS, TEXT_PART, MakeBundle, script_ids

from qgraph.errors import BundleError, RuntimeInputError
from qgraph.examples import example_audio, example_long_audio
from qgraph.runtime import AsrSession, default_max_tokens, transcribe
from qgraph.runtime.audio import load_audio

FORMS = [
    pytest.param({"step_input": "input_ids", "full_logits": True}, id="ids-full"),
    pytest.param(
        {"step_input": "input_ids", "full_logits": False, "manifest": False}, id="ids-last"
    ),
    pytest.param({"step_input": "input_embeds", "embed_dtype": "float16"}, id="embeds16-full"),
    pytest.param(
        {"step_input": "input_embeds", "embed_dtype": "float32", "full_logits": False},
        id="embeds32-last",
    ),
]


@pytest.mark.parametrize("form", FORMS)
def test_greedy_decode_detects_language(make_bundle: MakeBundle, form: dict) -> None:
    lang, text, _ = script_ids()
    result = transcribe(make_bundle(**form), example_audio())
    assert result.token_ids == [*lang, 151704, *text, EOS]
    assert result.text == TEXT_PART
    assert result.language == "English"
    assert result.finish_reason == "eos"
    assert result.n_audio_tokens == 50  # 383 mel frames
    assert result.prompt_length == 15 + 50
    t = result.timings
    assert len(t.step_s) == len(result.token_ids) - 1
    assert t.audio_s == pytest.approx(load_audio(example_audio()).size / 16000)
    assert t.total_s > 0 and t.rtf > 0 and t.mel_s > 0


@pytest.mark.parametrize("form", FORMS)
def test_forced_language(make_bundle: MakeBundle, form: dict) -> None:
    _, text, _ = script_ids()
    session = AsrSession(make_bundle(**form), threads=1)
    result = session.transcribe(load_audio(example_long_audio()), language="fr")
    assert result.token_ids == [*text, EOS]
    assert result.text == TEXT_PART and result.language == "French"
    assert result.n_audio_tokens == 13 * 12  # 192110 samples -> 1200 mel frames


def test_session_is_reusable_and_max_tokens_stops(make_bundle: MakeBundle) -> None:
    session = AsrSession(make_bundle())
    lang, _, _ = script_ids()
    short = session.transcribe(example_audio(), max_tokens=2)
    assert short.token_ids == lang[:2] and short.finish_reason == "max_tokens"
    one = session.transcribe(example_audio(), max_tokens=1)
    assert len(one.token_ids) == 1 and one.timings.step_s == []
    full = session.transcribe(example_audio())
    assert full.finish_reason == "eos"


class _WrongPosition(AsrSession):
    def step(self, token_id, position, past_keys, past_values):  # type: ignore[override]
        return super().step(token_id, position + 1, past_keys, past_values)


class _StaleCache(AsrSession):
    def step(self, token_id, position, past_keys, past_values):  # type: ignore[override]
        return super().step(token_id, position, past_keys[:, :, :, :-1], past_values[:, :, :, :-1])


class _WrongOffset(AsrSession):
    def prefill(self, prompt_ids, audio_features, audio_offset):  # type: ignore[override]
        return super().prefill(prompt_ids, audio_features, audio_offset + 1)


@pytest.mark.parametrize("broken", [_WrongPosition, _StaleCache, _WrongOffset])
def test_tiny_model_catches_runtime_mistakes(make_bundle: MakeBundle, broken: type) -> None:
    """The fixture is strict: a runtime that feeds wrong inputs gets BAD tokens."""
    result = broken(make_bundle()).transcribe(example_audio(), max_tokens=6)
    assert BAD in result.token_ids and result.finish_reason == "max_tokens"


def test_default_max_tokens_scales_with_audio() -> None:
    assert default_max_tokens(0) == 32
    assert default_max_tokens(3.84) == 32 + 39
    assert default_max_tokens(60) > default_max_tokens(10) > default_max_tokens(1)


def test_array_input_errors(make_bundle: MakeBundle) -> None:
    session = AsrSession(make_bundle())
    with pytest.raises(RuntimeInputError, match="1-D"):
        session.transcribe(np.zeros((2, 16000), dtype=np.float32))
    with pytest.raises(RuntimeInputError, match="empty"):
        session.transcribe(np.zeros(0, dtype=np.float32))
    with pytest.raises(RuntimeInputError, match="NaN"):
        session.transcribe(np.full(16000, np.nan, dtype=np.float32))
    with pytest.raises(RuntimeInputError, match="unknown language"):
        session.transcribe(example_audio(), language="Elvish")
    with pytest.raises(RuntimeInputError, match="max_tokens"):
        session.transcribe(example_audio(), max_tokens=0)


def test_to_dict_is_json(make_bundle: MakeBundle) -> None:
    data = transcribe(make_bundle(), example_audio()).to_dict()
    parsed = json.loads(json.dumps(data))
    assert parsed["text"] == TEXT_PART and parsed["language"] == "English"
    assert {"mel_s", "encoder_s", "prefill_s", "step_s", "rtf", "total_s"} <= set(parsed["timings"])


def test_missing_component(make_bundle: MakeBundle) -> None:
    root = make_bundle(manifest=False)
    (root / "decoder_step.onnx").unlink()
    with pytest.raises(BundleError, match="decoder_step"):
        AsrSession(root)


def test_manifest_file_names_are_used(make_bundle: MakeBundle) -> None:
    root = make_bundle(manifest=True)
    assert not (root / "encoder.onnx").exists() and (root / "tiny_encoder.onnx").exists()
    manifest = json.loads((root / "qgraph.json").read_text())
    manifest["components"]["encoder"]["file"] = "../escape.onnx"
    (root / "qgraph.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="leaves the bundle"):
        AsrSession(root)


def test_missing_config_and_tokenizer(make_bundle: MakeBundle) -> None:
    root = make_bundle()
    (root / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="tokenizer.json is missing"):
        AsrSession(root)
    (root / "config.json").unlink()
    with pytest.raises(BundleError, match="config.json is missing"):
        AsrSession(root)


def test_embed_table_size_is_checked(make_bundle: MakeBundle) -> None:
    root = make_bundle(step_input="input_embeds", embed_dtype="float16")
    config = json.loads((root / "config.json").read_text())
    config["embed_tokens_dtype"] = "float32"
    (root / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="embed_tokens_dtype"):
        AsrSession(root)


def test_contract_violation_is_reported(make_bundle: MakeBundle, tmp_path: Path) -> None:
    ids_root = make_bundle("ids", step_input="input_ids", manifest=False)
    root = make_bundle("mixed", step_input="input_embeds", manifest=False)
    # an init graph put where the step graph belongs: wrong inputs
    (root / "decoder_step.onnx").write_bytes((ids_root / "decoder_init.onnx").read_bytes())
    with pytest.raises(BundleError, match="I/O contract"):
        AsrSession(root)
    (root / "decoder_step.onnx").write_bytes(b"not onnx")
    with pytest.raises(BundleError, match="cannot load decoder_step"):
        AsrSession(root)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a bundle folder"):
        AsrSession(tmp_path / "missing")
