"""qgraph.runtime.whisper on the tiny bundle, and validate_whisper against PyTorch."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from qgraph.bundle import Bundle  # noqa: E402
from qgraph.errors import RuntimeInputError  # noqa: E402
from qgraph.examples import example_audio  # noqa: E402
from qgraph.export.whisper.validate import validate_whisper  # noqa: E402
from qgraph.families import family_of  # noqa: E402
from qgraph.runtime.audio import load_audio  # noqa: E402
from qgraph.runtime.bench import run_bench  # noqa: E402
from qgraph.runtime.whisper import WhisperSession  # noqa: E402
from tests.export.whisper_bundles import tiny_whisper  # noqa: E402


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_whisper(tmp_path_factory)


@pytest.fixture(scope="module")
def session(bundle_dir: Path) -> WhisperSession:
    return WhisperSession(bundle_dir)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio(example_audio())


def test_cached_steps_equal_full_recomputation(session: WhisperSession, speech) -> None:
    hidden = session.encode(session.features(speech))
    prompt = session.prompt()
    tokens, _ = session.generate(hidden, prompt, 12, stop_on_eos=False)
    assert len(set(tokens)) > 3, "the tiny model should not repeat one token"
    _, past = session.decode(prompt, hidden, None)
    ids = list(prompt)
    for token in tokens[:-1]:
        cached, past = session.decode([token], hidden, past)
        ids.append(token)
        full, _ = session.decode(ids, hidden, None)
        np.testing.assert_allclose(cached, full, atol=1e-4)


def test_suppression_rules(session: WhisperSession, speech) -> None:
    hidden = session.encode(session.features(speech))
    tokens, _ = session.generate(hidden, session.prompt(), 40, stop_on_eos=False)
    assert not set(tokens) & set(session.suppress.tolist())
    assert tokens[0] not in session.begin_suppress.tolist()


def test_transcribe_windows_and_timings(session: WhisperSession, speech) -> None:
    long = np.tile(speech, 10)[: 35 * 16000]  # two 30 s windows
    result = session.transcribe(long, max_tokens=6)
    assert result.n_audio_tokens == 2 * 1500
    assert len(result.token_ids) == 12 and result.finish_reason == "max_tokens"
    assert result.language == "en" and result.prompt_length == 2
    t = result.timings
    assert t.audio_s == pytest.approx(35.0) and t.encoder_s > 0 and len(t.step_s) == 10
    first, second = (session.transcribe(w, max_tokens=6) for w in np.split(long, [30 * 16000]))
    assert first.token_ids + second.token_ids == result.token_ids


def test_bad_inputs(session: WhisperSession) -> None:
    with pytest.raises(RuntimeInputError, match="English-only"):
        session.transcribe(np.zeros(16000, np.float32), language="German")
    with pytest.raises(RuntimeInputError, match="1-D"):
        session.transcribe(np.zeros((2, 16000), np.float32))
    with pytest.raises(RuntimeInputError, match="max_tokens"):
        session.generate(np.zeros((1, 1500, 64), np.float32), [257, 264], 0)


def test_family_detection_and_folder_without_manifest(bundle_dir: Path, tmp_path: Path) -> None:
    assert family_of(bundle_dir).name == "whisper"
    plain = tmp_path / "plain"
    shutil.copytree(bundle_dir, plain)
    (plain / "qgraph.json").unlink()  # an onnx-community style folder
    assert family_of(plain).name == "whisper"  # config.json's model_type
    assert Bundle.load(plain).roles() == {
        "encoder_model": "encoder",
        "decoder_model_merged": "merged-decoder",
    }
    (plain / "config.json").write_text('{"model_type": "qwen3_asr"}')
    assert family_of(plain).name == "whisper"  # its two components
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "qwen3_asr"}')
    assert family_of(other).name == "generic"


def test_bench(bundle_dir: Path, speech) -> None:
    result = run_bench(bundle_dir, steps=2, repeat=1, audio=speech)
    assert result.audio_tokens == 1500 and result.prompt_length == 2
    assert result.decoder_step_ms > 0 and result.rtf > 0


def test_validate_passes_on_the_export(bundle_dir: Path, speech) -> None:
    report = validate_whisper(bundle_dir, "tiny", [("example", speech)], max_tokens=24)
    assert report.ok, report.table()
    clip = report.clips[0]
    assert len(clip.onnx_tokens) == 24 and clip.encoder_max_abs < 1e-3


def test_validate_catches_a_changed_weight(bundle_dir: Path, tmp_path: Path, speech) -> None:
    bundle = Bundle.load(bundle_dir)
    value = bundle.components["encoder_model"].graph.initializers["model.encoder.layer_norm.bias"]
    value.const_value = ir.tensor(value.const_value.numpy() + 0.5, name=value.name)
    broken = bundle.save(tmp_path / "broken")
    report = validate_whisper(broken, "tiny", [("example", speech)], max_tokens=8)
    assert not report.ok
    assert "encoder output differs" in report.clips[0].problems[0]
