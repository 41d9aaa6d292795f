"""Whisper sources: CTranslate2 import (offline round trip), transformers folders, errors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from qgraph.errors import ExportError  # noqa: E402
from qgraph.export.whisper import build_model, export_whisper, resolve_source  # noqa: E402
from qgraph.export.whisper.sidefiles import side_files  # noqa: E402
from qgraph.export.whisper.tokens import tiny_tokenizer  # noqa: E402
from tests.export.whisper_bundles import write_model_bin  # noqa: E402

CT2_CONFIG = {
    "alignment_heads": [[1, 0], [1, 3]],
    "lang_ids": [258],
    "suppress_ids": [257, 259, 260],
    "suppress_ids_begin": [32, 256],
}


@pytest.fixture(scope="module")
def tiny():
    return build_model(resolve_source("tiny"))[0]


def _ct2_folder(tmp: Path, model, **kwargs) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    write_model_bin(model, tmp / "model.bin", **kwargs)
    tiny_tokenizer().save(str(tmp / "tokenizer.json"))
    (tmp / "config.json").write_text(json.dumps(CT2_CONFIG))
    return tmp


def test_ctranslate2_round_trip_is_exact_in_fp32(tmp_path: Path, tiny) -> None:
    folder = _ct2_folder(tmp_path / "ct2", tiny, dtype=np.float32)
    source = resolve_source(str(folder))
    assert source.kind == "ctranslate2"
    model, description = build_model(source)
    assert description.startswith("CTranslate2")
    want, got = tiny.state_dict(), model.state_dict()
    assert set(got) == set(want)
    for name, value in want.items():
        assert torch.equal(got[name], value), name
    assert model.proj_out.weight is model.model.decoder.embed_tokens.weight
    assert model.config.suppress_tokens == [257, 259, 260]
    assert model.config.begin_suppress_tokens == [32, 256]


def test_ctranslate2_fp16_weights_become_fp32(tmp_path: Path, tiny) -> None:
    model, _ = build_model(resolve_source(str(_ct2_folder(tmp_path / "ct2", tiny))))
    weight = model.model.encoder.layers[1].fc1.weight
    assert weight.dtype == torch.float32
    expected = tiny.model.encoder.layers[1].fc1.weight.half().float()
    assert torch.equal(weight, expected)


def test_ctranslate2_side_files_carry_its_generation_settings(tmp_path: Path, tiny) -> None:
    source = resolve_source(str(_ct2_folder(tmp_path / "ct2", tiny)))
    model, _ = build_model(source)
    files = side_files(model, source, ["encoder_model", "decoder_model_merged"])
    gen = json.loads(files["generation_config.json"])
    assert gen["suppress_tokens"] == [257, 259, 260]
    assert gen["alignment_heads"] == [[1, 0], [1, 3]]
    assert gen["task_to_id"] == {"transcribe": 260, "translate": 259}
    assert json.loads(files["vocab.json"])["!"] == 33


def _corrupt(folder: Path, fn) -> None:
    path = folder / "model.bin"
    path.write_bytes(fn(path.read_bytes()))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: struct.pack("<I", 5) + b[4:], "version 5 is not supported"),
    ],
)
def test_ctranslate2_bad_files(tmp_path: Path, tiny, mutate, message) -> None:
    folder = _ct2_folder(tmp_path / "ct2", tiny)
    _corrupt(folder, mutate)
    with pytest.raises(ExportError, match=message):
        build_model(resolve_source(str(folder)))


def test_ctranslate2_wrong_spec_and_nonzero_k_bias(tmp_path: Path, tiny) -> None:
    folder = _ct2_folder(tmp_path / "spec", tiny, spec="TransformerSpec")
    with pytest.raises(ExportError, match="expected 'WhisperSpec'"):
        build_model(resolve_source(str(folder)))
    with torch.no_grad():
        tiny.model.encoder.layers[0].self_attn.k_proj.register_parameter(
            "bias", torch.nn.Parameter(torch.ones(64))
        )
    try:
        folder = _ct2_folder(tmp_path / "kbias", tiny)
        with pytest.raises(ExportError, match="non-zero k bias"):
            build_model(resolve_source(str(folder)))
    finally:
        tiny.model.encoder.layers[0].self_attn.k_proj.bias = None


def test_ctranslate2_int8_models_are_refused(tmp_path: Path, tiny) -> None:
    scale = {"encoder/layer_0/ffn/linear_0/weight_scale": np.ones(128, np.float32)}
    folder = _ct2_folder(tmp_path / "int8", tiny, extra=scale)
    with pytest.raises(ExportError, match="int8-quantized CTranslate2 models are not supported"):
        build_model(resolve_source(str(folder)))


def test_transformers_folder_source(tmp_path: Path, tiny) -> None:
    folder = tmp_path / "hf"
    tiny.save_pretrained(folder)
    tiny_tokenizer().save(str(folder / "tokenizer.json"))
    (folder / "generation_config.json").write_text(json.dumps({"marker": 1}))
    source = resolve_source(str(folder))
    assert source.kind == "transformers"
    model, _ = build_model(source)
    for name, value in tiny.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    files = side_files(model, source, ["encoder_model", "decoder_model_merged"])
    assert json.loads(files["generation_config.json"]) == {"marker": 1}


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: None, "no checkpoint folder"),
        (lambda d: d.write_text("x"), "is a file"),
        (lambda d: d.mkdir(), "neither a CTranslate2 folder"),
        (
            lambda d: (d.mkdir(), (d / "config.json").write_text('{"model_type": "bert"}')),
            "expected 'whisper'",
        ),
        (
            lambda d: (d.mkdir(), (d / "config.json").write_text('{"model_type": "whisper"}')),
            "no weights",
        ),
    ],
)
def test_bad_sources(tmp_path: Path, setup, message) -> None:
    target = tmp_path / "src"
    setup(target)
    with pytest.raises(ExportError, match=message):
        resolve_source(str(target))


def test_export_refuses_bad_opset_and_existing_output(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="opset 17 is not supported"):
        export_whisper("tiny", tmp_path / "out", opset=17)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ExportError, match="already exists"):
        export_whisper("tiny", tmp_path / "full")


def test_ctranslate2_folder_without_tokenizer(tmp_path: Path, tiny) -> None:
    folder = _ct2_folder(tmp_path / "ct2", tiny)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ExportError, match="no tokenizer.json"):
        build_model(resolve_source(str(folder)))
