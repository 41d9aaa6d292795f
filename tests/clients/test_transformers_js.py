"""Transformers.js v4 (Node) loads our Whisper bundles offline and generates our tokens.

Needs node and ``@huggingface/transformers`` installed in this folder's ``transformers_js/``
(``cd tests/clients/transformers_js && ONNXRUNTIME_NODE_INSTALL=skip npm install``); skipped
otherwise. ``transcribe.mjs`` loads the bundle folder with ``WhisperForConditionalGeneration`` and
``AutoProcessor`` (its own mel, its own prompt from generation_config.json, its own
``suppress_tokens`` / ``begin_suppress_tokens`` handling) and prints the token ids and text.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from qgraph.runtime.whisper import WhisperSession

CLIENT = Path(__file__).parent / "transformers_js"
INSTALL = "cd tests/clients/transformers_js && ONNXRUNTIME_NODE_INSTALL=skip npm install"


@pytest.fixture(scope="module")
def node() -> str:
    exe = shutil.which("node")
    if exe is None:
        pytest.skip("node is not installed")
    if not (CLIENT / "node_modules" / "@huggingface" / "transformers").is_dir():
        pytest.skip(f"Transformers.js is not installed: {INSTALL}")
    return exe


def _transformers_js(node: str, bundle: Path, wav: Path, max_new: int | None = None) -> dict:
    args = [node, str(CLIENT / "transcribe.mjs"), str(bundle), str(wav)]
    args += [str(max_new)] if max_new else []
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=CLIENT)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _wav(tmp_path: Path, samples: np.ndarray) -> Path:
    path = tmp_path / "clip.wav"
    sf.write(path, samples, 16000, subtype="PCM_16")
    return path


@pytest.mark.parametrize("bundle", ["tiny_whisper", "tiny_whisper_fp32"])
def test_tiny_bundle_tokens_equal_ours(node: str, bundle: str, clips, tmp_path, request) -> None:
    """The raw export and the fp32 compile (fused com.microsoft ops) alike."""
    folder = request.getfixturevalue(bundle)
    wav = _wav(tmp_path, clips["example"])
    got = _transformers_js(node, folder, wav, max_new=20)
    session = WhisperSession(folder)
    ours = session.transcribe(wav, max_tokens=20)
    assert got["tokens"] == [session.sot, session.no_timestamps, *ours.token_ids]


def test_real_transcripts_equal_ours(node: str, real_whisper: Path, clips, tmp_path) -> None:
    session = WhisperSession(real_whisper)
    for name, samples in clips.items():
        wav = _wav(tmp_path, samples)
        got = _transformers_js(node, real_whisper, wav)
        ours = session.transcribe(wav)
        assert got["tokens"] == [session.sot, session.no_timestamps, *ours.token_ids], name
        assert got["text"].strip() == ours.text
