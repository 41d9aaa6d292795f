"""Bad sources and options fail early with one-line ExportErrors (and exit 1 on the CLI)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from qgraph.cli import main  # noqa: E402
from qgraph.errors import ExportError  # noqa: E402
from qgraph.export.qwen3_asr import build_model, export_qwen3_asr  # noqa: E402, TID251
from qgraph.export.qwen3_asr.sidefiles import tokenizer_files  # noqa: E402, TID251
from qgraph.families import Family  # noqa: E402


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_model) -> Path:
    """The tiny model saved as a native transformers checkpoint with the example tokenizer."""
    from qgraph.examples import example_tokenizer

    folder = tmp_path_factory.mktemp("ckpt") / "tiny-hf"
    tiny_model.save_pretrained(folder)
    example_tokenizer().save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<|endoftext|>"}))
    return folder


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ExportError) as err:
        build_model(str(tmp_path / "nope"))
    assert "no checkpoint folder" in _one_line(err)


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ExportError) as err:
        build_model(tmp_path)
    assert "no config.json" in _one_line(err)


def test_wrong_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ExportError) as err:
        build_model(tmp_path)
    assert "model_type is 'whisper', expected 'qwen3_asr'" in _one_line(err)


def test_missing_weight_files(tmp_path: Path, tiny_checkpoint: Path) -> None:
    shutil.copy(tiny_checkpoint / "config.json", tmp_path / "config.json")
    with pytest.raises(ExportError) as err:
        build_model(tmp_path)
    assert "no weights" in _one_line(err)


def test_missing_tensors_in_checkpoint(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from safetensors.torch import load_file, save_file

    shutil.copy(tiny_checkpoint / "config.json", tmp_path / "config.json")
    tensors = load_file(tiny_checkpoint / "model.safetensors")
    kept = {k: v for k, v in tensors.items() if ".layers.1." not in k}
    save_file(kept, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ExportError) as err:
        build_model(tmp_path)
    assert "weights are missing" in _one_line(err)


def test_offline_hub_id_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # never download in tests
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ExportError) as err:
        build_model("Qwen/Qwen3-ASR-0.6B-hf")
    message = _one_line(err)
    assert "hub" in message and "offline" in message and "local folder" in message


def test_checkpoint_folder_loads_the_same_weights(tiny_checkpoint: Path, tiny_model) -> None:
    import torch

    model, description = build_model(tiny_checkpoint)
    assert description == f"checkpoint {tiny_checkpoint}"
    loaded = model.state_dict()
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(loaded[key], value), key
    files, pad_id = tokenizer_files(tiny_checkpoint)
    assert files["tokenizer.json"] == tiny_checkpoint / "tokenizer.json"
    assert pad_id == 151643


def test_tokenizer_with_other_special_ids_is_rejected(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>"))
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ExportError) as err:
        tokenizer_files(tmp_path)
    assert "not a Qwen3-ASR tokenizer" in _one_line(err)


def test_bad_opset_and_existing_output(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="opset 12 is not supported"):
        export_qwen3_asr("tiny", tmp_path / "out", opset=12)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(ExportError, match="already exists"):
        export_qwen3_asr("tiny", tmp_path / "taken")


def test_cli_prints_one_line_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    rc = main(["export", "qwen3-asr", "--model", str(tmp_path), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1].startswith("qgraph: error: ") and "qwen3_asr" in err[-1]
    assert not (tmp_path / "o").exists()


def test_every_registered_exporter_and_validator_resolves() -> None:
    from qgraph.commands.export import exportable, import_exporter

    assert {name for name, _ in exportable()} == {"qwen3-asr", "whisper"}
    for family in exportable().values():
        assert callable(import_exporter(family, "exporter"))
        assert callable(import_exporter(family, "validate"))


def test_missing_torch_is_an_export_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qgraph.commands.export import import_exporter

    (tmp_path / "exporter_needing_torch.py").write_text("import torch\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ExportError, match=r"pip install 'qgraph\[export\]'"):
        import_exporter(Family("toy", "", exporter="exporter_needing_torch:export"))
