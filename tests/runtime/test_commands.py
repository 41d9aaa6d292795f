"""The ``transcribe`` and ``bench`` command modules."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from tiny_runtime_bundle import TEXT_PART, MakeBundle

from qgraph.commands import bench, transcribe
from qgraph.errors import QGraphError, RuntimeInputError
from qgraph.examples import example_audio


def _parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="qgraph")
    module.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def _run(module, argv: list[str]) -> int:
    args = _parse(module, argv)
    return args.run(args)


def test_every_option_has_help() -> None:
    for module in (transcribe, bench):
        parser = argparse.ArgumentParser(prog="qgraph")
        sub = parser.add_subparsers()
        module.add_parser(sub)
        for action in sub.choices[module.NAME]._actions:
            assert action.help, f"{module.NAME}: {action.dest} has no help"


def test_transcribe_prints_text(make_bundle: MakeBundle, capsys) -> None:
    assert _run(transcribe, ["transcribe", str(make_bundle()), str(example_audio())]) == 0
    assert capsys.readouterr().out.strip() == TEXT_PART


def test_transcribe_json_and_builtin_example(make_bundle: MakeBundle, capsys) -> None:
    root = make_bundle(step_input="input_embeds")
    argv = ["transcribe", str(root), "example", "--json", "--language", "en", "--threads", "1"]
    assert _run(transcribe, argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["text"] == TEXT_PART and data["language"] == "English"
    assert data["token_ids"][-1] == 151645 and data["finish_reason"] == "eos"
    assert data["timings"]["encoder_s"] >= 0


def test_transcribe_user_errors(make_bundle: MakeBundle, tmp_path: Path) -> None:
    root = make_bundle()
    with pytest.raises(RuntimeInputError, match="not found"):
        _run(transcribe, ["transcribe", str(root), str(tmp_path / "none.wav")])
    with pytest.raises(QGraphError):
        _run(transcribe, ["transcribe", str(tmp_path), str(example_audio())])
    with pytest.raises(SystemExit):
        _parse(transcribe, ["transcribe", str(root), "x.wav", "--max-tokens", "0"])


@pytest.mark.parametrize("separate", [False, True], ids=["merged", "separate-decoders"])
def test_bench_reports_and_writes_json(
    make_bundle: MakeBundle, tmp_path: Path, capsys, separate: bool
) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", str(make_bundle()), "--audio-seconds", "2.5", "--steps", "3", "--repeat", "2"]
    argv += ["--separate-decoders"] if separate else []
    assert _run(bench, [*argv, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for word in ("encoder", "decoder_init", "decoder_step", "RTF", "peak"):
        assert word in text
    data = json.loads(out.read_text())
    assert data["audio_seconds"] == pytest.approx(2.5)
    assert data["mel_frames"] == 250 and data["audio_tokens"] == 13 * 2 + 7
    assert data["steps"] == 3 and data["repeat"] == 2 and data["past_tokens"] == 100
    for key in ("encoder_ms", "decoder_init_ms", "decoder_step_ms", "end_to_end_ms", "rtf"):
        assert data[key] > 0
    assert data["peak_rss_mb"] >= data["rss_after_load_mb"] > 0
    assert data["decoder_sessions"] == (2 if separate else 1)


def test_bench_rejects_bad_options(make_bundle: MakeBundle, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        _parse(bench, ["bench", "b", "--audio-seconds", "-1"])
    with pytest.raises(RuntimeInputError, match="not found"):
        _run(bench, ["bench", str(make_bundle()), "--audio", str(tmp_path / "x.wav")])
