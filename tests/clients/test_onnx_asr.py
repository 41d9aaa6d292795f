"""onnx-asr (PyPI) loads our Whisper bundles offline and transcribes like qgraph.runtime.whisper.

onnx-asr drives ``decoder_model_merged`` its own way: an empty ``[0, heads, 0, head_dim]`` past
on the first call, ``use_cache_branch``, and "a present with batch 0 keeps the previous cache".
Its prompt is ``<|startoftranscript|> X <|transcribe|> <|notimestamps|>`` where X is the argmax
after ``<|startoftranscript|>`` (language detection), and it decodes by plain argmax.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qgraph.runtime.whisper import WhisperSession

onnx_asr = pytest.importorskip("onnx_asr")


def _onnx_asr_protocol(session: WhisperSession, samples: np.ndarray) -> str:
    """What onnx-asr should print, computed with our decoder calls under its protocol."""
    hidden = session.encode(session.features(samples))
    logits, _ = session.decode([session.sot], hidden, None)
    detected = int(np.argmax(logits))
    ids = [session.sot, detected, session.task_to_id["transcribe"], session.no_timestamps]
    tokens, past, feed = [], None, ids
    while len(ids) + len(tokens) < session.max_length:
        logits, past = session.decode(feed, hidden, past)
        tokens.append(int(np.argmax(logits)))
        feed = tokens[-1:]
        if tokens[-1] == session.eos:
            break
    text_ids = [t for t in [detected, *tokens] if t < session.eos]
    return session.tokenizer.decode(text_ids).removeprefix(" ")


@pytest.mark.parametrize("bundle", ["tiny_whisper", "tiny_whisper_fp32"])
def test_tiny_bundle_follows_the_merged_decoder_contract(bundle: str, clips, request) -> None:
    folder = request.getfixturevalue(bundle)
    model = onnx_asr.load_model("whisper", str(folder))
    expected = _onnx_asr_protocol(WhisperSession(folder), clips["example"])
    assert len(expected) > 20
    assert model.recognize(clips["example"]) == expected


def test_real_transcripts(real_whisper: Path, clips) -> None:
    """Exactly what our decoder gives under onnx-asr's prompt; the same words as our runtime."""
    model = onnx_asr.load_model("whisper", str(real_whisper))
    session = WhisperSession(real_whisper)
    for name, samples in clips.items():
        text = model.recognize(samples)
        assert text == _onnx_asr_protocol(session, samples), name
        assert _words(text) == _words(session.transcribe(samples).text), name


def _words(text: str) -> list[str]:
    return text.lower().replace(".", "").replace(",", "").split()
