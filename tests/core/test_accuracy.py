"""``qgraph compile --check-accuracy`` and ``qgraph eval --against`` (``qgraph.accuracy``) on the
tiny random Qwen3-ASR: a lossless compile passes a zero budget, a lossy one fails it and writes
nothing (an existing output stays as it was), ``--accept-loss`` lets it through with the result in
the manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qgraph.accuracy import AccuracyReport, ClipResult, load_clips
from qgraph.cli import main
from qgraph.examples import example_audio
from qgraph.validation import first_mismatch as _first_divergence

FAST = ["--max-tokens", "8", "--max-files", "1"]
LOSSY = "fp32,quantize-int4{block_size=128}"


@pytest.fixture
def untranscribed(tmp_path: Path) -> Path:
    """One clip without a transcript: the loss is the token disagreement."""
    folder = tmp_path / "audio"
    folder.mkdir()
    shutil.copy(example_audio(), folder / "clip.wav")
    return folder


def _compile(raw: Path, out: Path, passes: str, audio: Path, *extra: str) -> int:
    argv = ["compile", str(raw), "-o", str(out), "--passes", passes, "-q"]
    return main([*argv, "--check-accuracy", str(audio), "--budget", "0", *FAST, *extra])


def test_lossless_compile_passes_a_zero_budget(tiny_raw, untranscribed, tmp_path, capsys):
    out = tmp_path / "fp32"
    assert _compile(tiny_raw, out, "fp32", untranscribed) == 0
    acc = json.loads((out / "qgraph.json").read_text())["accuracy"]
    assert acc["within_budget"] and not acc["accepted_loss"]
    assert acc["token_agreement"] == 1.0 and acc["kl_nats_per_token"] < 1e-6
    assert acc["metric"] == "token_disagreement_pp" and acc["loss_pp"] == 0
    assert "within the budget" in capsys.readouterr().out


def test_over_budget_writes_nothing_and_accept_loss_records_it(
    tiny_raw, untranscribed, tmp_path, capsys
):
    out = tmp_path / "int4"
    assert _compile(tiny_raw, out, LOSSY, untranscribed) == 4
    err = capsys.readouterr().err
    assert "exceeds the budget" in err and "nothing was written" in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # --force over an existing output: the old output survives a failed check
    old = tmp_path / "old"
    shutil.copytree(tiny_raw, old)
    assert _compile(tiny_raw, old, LOSSY, untranscribed, "--force") == 4
    assert json.loads((old / "qgraph.json").read_text()) == json.loads(
        (tiny_raw / "qgraph.json").read_text()
    )
    assert _compile(tiny_raw, out, LOSSY, untranscribed, "--accept-loss") == 0
    acc = json.loads((out / "qgraph.json").read_text())["accuracy"]
    assert acc["accepted_loss"] and not acc["within_budget"] and acc["loss_pp"] > 0
    assert acc["first_divergence"] and acc["token_agreement"] < 1
    # the same check on two saved bundles
    assert main(["eval", str(out), "--against", str(tiny_raw), "--data", str(untranscribed),
                 "--budget", "0", *FAST]) == 4  # fmt: skip
    report = tmp_path / "report.json"
    argv = ["eval", str(out), "--against", str(tiny_raw), "--data", str(untranscribed)]
    assert main([*argv, "--budget", "0", "--accept-loss", "--json", str(report), *FAST]) == 0
    assert json.loads(report.read_text())["loss_pp"] == acc["loss_pp"]


def test_loss_is_the_wer_delta_with_transcripts_and_loops_fail() -> None:
    clips = load_clips(None, 16000)
    assert [c.text is not None for c in clips] == [True, True]
    good = ClipResult("a", 1.0, [1, 2, 3], [1, 2, 3], "eos", "eos", None, 0.0, 1.0, 10, 1, 1)
    worse = ClipResult("b", 1.0, [1, 2, 3], [1, 5, 3], "eos", "eos", 1, 0.5, 0.5, 10, 1, 2)
    report = AccuracyReport("ref", "out", "x", 5.0, [good, worse])
    assert report.metric == "wer_delta_pp" and report.loss == pytest.approx(5.0)
    assert report.within_budget and report.agreement == pytest.approx(4 / 6)
    loop = ClipResult("c", 1.0, [1, 2], [1, 2, 2, 2], "eos", "max_tokens", 2, 0.1, 1.0, 10, 0, 0)
    report.clips.append(loop)
    assert report.loops == ["c"] and not report.within_budget
    assert _first_divergence([1, 2], [1, 2, 3]) == 2 and _first_divergence([1], [1]) is None
