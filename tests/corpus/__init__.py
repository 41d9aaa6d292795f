"""The fusion corpus of issue #14: graphs that several exporters write, with their fusible sites.

``build_corpus(folder, ours=...)`` returns the ``Case`` list (``cases.Case``: name, pattern
family, source, model path, expected sites per kind, tolerance, feeds). Everything is built at
call time from tiny random-weight configs (no download) and cached under ``folder`` (a model file
that exists is reused), so a test session or a benchmark run builds each export once:

- ``hf``: Llama, Qwen3 (decoders with a KV cache and a 2-D attention mask), BERT (erf GELU, and
  a tanh-GELU variant), the Whisper encoder and decoder (self-attention cache, cross-attention),
  each by TorchScript opset 17, dynamo opset 18 ``optimize=False`` and dynamo with the default
  optimizer (``hf.py``);
- ``qgraph-export``: the tiny Qwen3-ASR (``encoder``, ``decoder_init``, ``decoder_step``) and the
  tiny Whisper (``encoder_model``, ``decoder_model_merged``: both ``If`` branches), exported by
  ``qgraph.export`` into the folders given as ``ours`` (``ours.py``);
- ``hand``: the spellings the issue lists, written as ONNX text (``hand.py``).

Sources per family: decoder (TorchScript, dynamo, dynamo-opt, ours, hand), encoder (the same),
norms (TorchScript, dynamo, dynamo-opt, ours, hand), rotary (Llama/Qwen3 by the three torch
exporters, ours, hand), GELU (BERT/Whisper by the three, ours, hand). A case belongs to the
family of its graph (a decoder graph also holds norms and rotary sites: those count in the score
of their op type, whatever the case's family).
"""

from __future__ import annotations

from pathlib import Path

import onnx_ir as ir

from . import hand, hf
from .cases import FAMILIES, SITE_KINDS, Case
from .ours import qwen3_asr_cases, whisper_cases

__all__ = [
    "FAMILIES",
    "SITE_KINDS",
    "Case",
    "build_corpus",
    "case_kinds",
    "hand_cases",
    "hf_cases",
]

L = hf.LAYERS
HF_EXPECTED: dict[str, tuple[str, dict[str, int]]] = {
    "llama": (
        "decoder",
        {"rms-norm": 2 * L + 1, "skip-rms-norm": 2 * L, "rotary": 2 * L, "attention-decoder": L},
    ),
    "qwen3": (
        "decoder",
        {"rms-norm": 4 * L + 1, "skip-rms-norm": 2 * L, "rotary": 2 * L, "attention-decoder": L},
    ),
    "bert": ("encoder", {"skip-layer-norm": 2 * L + 1, "gelu": L, "attention-encoder": L}),
    "bert_tanh": ("gelu", {"skip-layer-norm": 2 * L + 1, "fast-gelu": L, "attention-encoder": L}),
    "whisper_encoder": (
        "encoder",
        {"skip-layer-norm": 2 * L + 1, "gelu": L + 2, "attention-encoder": L},
    ),
    "whisper_decoder": (
        "decoder",
        {"skip-layer-norm": 3 * L + 1, "gelu": L, "attention-decoder": L, "attention-cross": L},
    ),
}
HF_DIMS = {"whisper_decoder": {"encoder_seq": hf.SOURCE_POSITIONS}}
ENCODERS = {"bert", "bert_tanh", "whisper_encoder"}


def hf_cases(folder: Path, archs: tuple[str, ...] | None = None) -> list[Case]:
    cases = []
    for arch in archs or tuple(hf.ARCHITECTURES):
        family, expected = HF_EXPECTED[arch]
        for source, path in hf.export_all(arch, folder / "hf").items():
            cases.append(
                Case(
                    name=f"{arch}/{source}",
                    family=family,
                    source=source,
                    path=path,
                    expected=expected,
                    num_heads=hf.HEADS,
                    hidden_size=hf.HIDDEN,
                    dims=HF_DIMS.get(arch, {}),
                    vocab=hf.VOCAB,
                    pad_mask=arch in ENCODERS,
                )
            )
    return cases


def hand_cases(folder: Path) -> list[Case]:
    out = folder / "hand"
    out.mkdir(parents=True, exist_ok=True)
    cases = []
    for name, (family, build, expected) in hand.CASES.items():
        path = out / f"{name}.onnx"
        if not path.is_file():
            model: ir.Model = build()
            ir.save(model, path)
        cases.append(Case(f"hand/{name}", family, "hand", path, expected, dims={"past": 3}))
    return cases


OURS_KINDS: dict[str, tuple[str, ...]] = {
    "qwen3-asr/encoder": ("skip-layer-norm", "gelu", "attention-encoder"),
    "qwen3-asr/decoder_init": ("rms-norm", "skip-rms-norm", "rotary", "attention-decoder"),
    "qwen3-asr/decoder_step": ("rms-norm", "skip-rms-norm", "rotary", "attention-decoder"),
    "whisper/encoder_model": ("skip-layer-norm", "gelu", "attention-encoder"),
    "whisper/decoder_model_merged": (
        "skip-layer-norm",
        "gelu",
        "attention-decoder",
        "attention-cross",
    ),
}


def case_kinds() -> dict[str, tuple[str, ...]]:
    """``{case name: expected site kinds}`` without building anything (for test ids)."""
    out: dict[str, tuple[str, ...]] = {}
    for arch, (_, expected) in HF_EXPECTED.items():
        sources = (hf.TORCHSCRIPT,) if arch in hf.ONLY_TORCHSCRIPT else hf.SOURCES
        out |= {f"{arch}/{s}": tuple(expected) for s in sources}
    out |= {f"hand/{name}": tuple(expected) for name, (_, _, expected) in hand.CASES.items()}
    return out | OURS_KINDS


def build_corpus(
    folder: Path,
    *,
    qwen3_asr: Path | None = None,
    whisper: Path | None = None,
    archs: tuple[str, ...] | None = None,
) -> list[Case]:
    """Every case, exporting what ``folder`` does not hold yet. ``qwen3_asr`` / ``whisper``:
    raw bundles of our exporter's ``tiny`` models (their cases are left out when None)."""
    cases = hf_cases(folder, archs) + hand_cases(folder)
    if qwen3_asr is not None:
        cases += qwen3_asr_cases(qwen3_asr)
    if whisper is not None:
        cases += whisper_cases(whisper)
    return cases
