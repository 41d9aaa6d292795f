"""qgraph.runtime.eval: normalisation, WER arithmetic, data folders, both families end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from qgraph.errors import RuntimeInputError
from qgraph.examples import EXAMPLE_LONG_TEXT, EXAMPLE_TEXT, example_audio, example_long_audio
from qgraph.families import open_session
from qgraph.runtime.eval import evaluate, load_dataset, normalize, score
from qgraph.runtime.session import Timings, Transcript

pytest.importorskip("jiwer")


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("The quick, brown fox!", "the quick brown fox"),
        ("Don't  STOP [noise] now (laughs)", "dont stop now"),
        ("well-known 3.14 <unk> a/b", "well known 3 14 a b"),
        ("Ｆｕｌｌ\u2019width ÉTÉ", "fullwidth été"),
        ("?!", ""),
    ],
)
def test_normalize(raw: str, want: str) -> None:
    assert normalize(raw) == want


def test_score_counts() -> None:
    assert score("the cat sat on the mat", "The cat sat on a mat.") == (6, 1, 0, 0)
    assert score("a b c", "") == (3, 0, 3, 0)
    assert score("a b", "a x b y") == (2, 0, 0, 2)
    with pytest.raises(RuntimeInputError, match="empty"):
        score("[noise]", "x")


def _clip(path: Path, seconds: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(16000 * seconds), np.float32), 16000)
    return path


def test_dataset_formats_and_errors(tmp_path: Path) -> None:
    _clip(tmp_path / "a" / "one.wav")
    (tmp_path / "a" / "one.txt").write_text("Hello there.\n")
    _clip(tmp_path / "b" / "84-121-0000.flac")
    _clip(tmp_path / "b" / "84-121-0001.flac")
    (tmp_path / "b" / "84-121.trans.txt").write_text("84-121-0000 GO ON\n84-121-0001 STOP\n")
    data = load_dataset(tmp_path)
    assert [(u.id, u.text) for u in data] == [
        ("a/one", "Hello there.\n"),
        ("b/84-121-0000", "GO ON"),
        ("b/84-121-0001", "STOP"),
    ]
    _clip(tmp_path / "c" / "orphan.ogg")
    with pytest.raises(RuntimeInputError, match="orphan.ogg: no transcript"):
        load_dataset(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeInputError, match="no audio files"):
        load_dataset(tmp_path / "empty")


class _Fake:
    """A session that answers from a table and takes a known time."""

    sample_rate = 16000

    def __init__(self, answers: dict[int, str]) -> None:
        self.answers = answers

    def transcribe(self, audio: np.ndarray, *, language: str | None = None) -> Transcript:
        text = self.answers[audio.size]
        return Transcript([], text, language, Timings(audio_s=audio.size / 16000), "eos", 0, 0)


def test_evaluate_report(tmp_path: Path) -> None:
    _clip(tmp_path / "x.wav", 1.0)
    (tmp_path / "x.txt").write_text("one two three four")
    _clip(tmp_path / "y.wav", 2.0)
    (tmp_path / "y.txt").write_text("five six")
    fake = _Fake({16000: "one too three four", 32000: "five six seven"})
    report = evaluate("bundle", tmp_path, session=fake)
    assert [u.id for u in report.utterances] == ["x", "y"]
    assert (report.words, report.errors) == (6, 2)
    assert report.wer == pytest.approx(2 / 6)
    assert report.utterances[0].wer == pytest.approx(0.25)
    assert report.utterances[1].insertions == 1
    assert report.audio_s == pytest.approx(3.0) and 0 < report.rtf < 1
    data = json.loads(report.to_json())
    assert data["wer"] == pytest.approx(2 / 6) and len(data["utterances"]) == 2
    assert "WER 33.33% (2/6 words)" in report.table()
    assert len(evaluate("bundle", tmp_path, session=fake, limit=1).utterances) == 1


def _examples(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    for path, text in ((example_audio(), EXAMPLE_TEXT), (example_long_audio(), EXAMPLE_LONG_TEXT)):
        shutil.copy(path, data / path.name)
        (data / path.name).with_suffix(".txt").write_text(text)
    return data


def test_both_families(tmp_path: Path, tiny_raw: Path, tmp_path_factory) -> None:
    pytest.importorskip("torch")
    from tests.export.whisper_bundles import tiny_whisper

    data = _examples(tmp_path)
    whisper = tiny_whisper(tmp_path_factory)
    assert type(open_session(whisper)).__name__ == "WhisperSession"
    assert type(open_session(tiny_raw)).__name__ == "AsrSession"
    for bundle in (whisper, tiny_raw):
        report = evaluate(bundle, data)
        assert report.words == 36 and len(report.utterances) == 2
        assert report.wer > 0.5  # random weights
        assert all(u.seconds > 0 for u in report.utterances)


def test_real_whisper_wer(tmp_path: Path, tmp_path_factory) -> None:
    pytest.importorskip("torch")
    from tests.export.whisper_bundles import real_whisper

    report = evaluate(real_whisper(tmp_path_factory), _examples(tmp_path))
    assert report.wer < 0.25, report.table()  # tiny.en measures 16.7 % on these two clips


def _clips(tmp_path: Path, seconds: tuple[float, ...]) -> Path:
    """A data folder of speech cut to ``seconds`` (different lengths), each with a reference."""
    from qgraph.runtime.bench import bench_audio

    data = tmp_path / "clips"
    data.mkdir()
    for i, s in enumerate(seconds):
        sf.write(data / f"u{i}.wav", bench_audio(s), 16000)
        (data / f"u{i}.txt").write_text(EXAMPLE_TEXT)
    return data


def test_batched_eval_matches_batch_one(tmp_path: Path, tiny_static_bundles) -> None:
    data = _clips(tmp_path, (2.0, 3.3, 1.2, 2.6, 4.0))
    session = open_session(tiny_static_bundles["static"])
    one = evaluate("static", data, session=session)
    for batch in (2, 4):
        report = evaluate("static", data, session=session, batch=batch)
        assert [u.id for u in report.utterances] == [f"u{i}" for i in range(5)]
        assert [u.hypothesis for u in report.utterances] == [u.hypothesis for u in one.utterances]
        assert (report.words, report.errors) == (one.words, one.errors)
        assert report.audio_s == pytest.approx(one.audio_s)
        assert all(u.seconds > 0 for u in report.utterances) and report.rtf > 0
    # a batch 1 decode of distinct texts: the comparison above is not vacuous
    assert len({u.hypothesis for u in one.utterances}) > 1


def test_batched_eval_cli_and_bad_bundle(tmp_path: Path, tiny_static_bundles, capsys) -> None:
    from qgraph.cli import main

    data = _clips(tmp_path, (1.2, 2.0, 2.6))
    out = tmp_path / "report.json"
    static = str(tiny_static_bundles["static"])
    assert main(["eval", static, "--data", str(data), "--batch", "2", "--json", str(out)]) == 0
    assert "3 utterances" in capsys.readouterr().out
    want = evaluate(static, data).to_dict()["utterances"]
    got = json.loads(out.read_text())["utterances"]
    assert [u["hypothesis"] for u in got] == [u["hypothesis"] for u in want]

    stacked = str(tiny_static_bundles["default"])
    assert main(["eval", stacked, "--data", str(data), "--batch", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "static-kv-cache" in err[0], err
    with pytest.raises(RuntimeInputError, match="static-kv-cache"):
        evaluate(stacked, data, batch=4)
    with pytest.raises(RuntimeInputError, match="static-kv-cache"):
        evaluate("whisper", data, session=_Fake({}), batch=2)
    assert main(["eval", static, "--against", stacked, "--batch", "2"]) != 0
    assert "--batch applies" in capsys.readouterr().err
