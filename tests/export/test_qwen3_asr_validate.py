"""``validate_bundle`` / ``qgraph validate``: pass on the exported bundle, fail on another model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from qgraph.cli import main  # noqa: E402
from qgraph.errors import VerificationError  # noqa: E402
from qgraph.examples import example_audio, example_tokenizer  # noqa: E402
from qgraph.export.qwen3_asr import build_model  # noqa: E402, TID251
from qgraph.export.qwen3_asr.validate import validate_bundle  # noqa: E402, TID251
from qgraph.runtime.audio import load_audio  # noqa: E402


@pytest.fixture(scope="module")
def perturbed_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny with a shifted projector bias, saved as a checkpoint folder."""
    model, _ = build_model("tiny")
    with torch.no_grad():
        model.model.multi_modal_projector.linear_2.bias.add_(0.5)
    folder = tmp_path_factory.mktemp("perturbed") / "tiny-changed"
    model.save_pretrained(folder)
    example_tokenizer().save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text("{}")
    return folder


def test_report_passes_for_the_exported_bundle(tiny_bundle: Path, make_clip) -> None:
    clips = [("speech", load_audio(example_audio())), ("short", make_clip(0.4))]
    report = validate_bundle(tiny_bundle, "tiny", clips, max_tokens=12)
    assert report.ok, report.table()
    for clip in report.clips:
        assert clip.encoder_max_abs < 1e-4 and clip.logits_max_abs < 1e-4
        assert clip.onnx_tokens == clip.torch_tokens and len(clip.onnx_tokens) >= 1
    assert report.clips[1].frames == 50, "clips under 0.5 s are padded to 0.5 s"
    table = report.table()
    assert table.splitlines()[0].split()[:2] == ["clip", "sec"]
    assert table.splitlines()[-1].startswith("PASS: 2/2")
    report.raise_for_failure()


def test_cli_json_report(tiny_bundle: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["validate", str(tiny_bundle), "--reference", "tiny", "--max-tokens", "6", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["ok"] is True and out["clips"][0]["name"] == example_audio().name
    assert len(out["clips"][0]["onnx_tokens"]) == 6


def test_cli_fails_against_another_model(
    tiny_bundle: Path, perturbed_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["validate", str(tiny_bundle), "--reference", str(perturbed_checkpoint)]
    rc = main([*args, "--max-tokens", "4"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "NO" in captured.out and "FAIL: 0/1" in captured.out
    error = captured.err.strip().splitlines()[-1]
    assert error.startswith("qgraph: error: 1 of 1 clips differ") and "encoder features" in error


def test_no_clips_is_an_error(tiny_bundle: Path) -> None:
    with pytest.raises(VerificationError, match="no audio"):
        validate_bundle(tiny_bundle, "tiny", [])


def test_first_mismatch_counts_length_differences() -> None:
    from qgraph.validation import first_mismatch

    assert first_mismatch([1, 2, 3], [1, 2, 3]) is None
    assert first_mismatch([1, 2, 3], [1, 5, 3]) == 1
    assert first_mismatch([1, 2], [1, 2, 3]) == 2
    assert first_mismatch([], [7]) == 0
