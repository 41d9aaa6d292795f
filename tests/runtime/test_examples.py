"""The built-in example tokenizer and speech clips."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time

import pytest
import soundfile as sf

from qgraph.examples import (
    EXAMPLE_TEXT,
    QWEN3_ASR_ADDED_TOKENS,
    _example_tokenizer_json,
    example_audio,
    example_long_audio,
    example_tokenizer,
)

QWEN_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|object_ref_start|>": 151646,
    "<|vision_start|>": 151652,
    "<tool_call>": 151657,
    "<|fim_prefix|>": 151659,
    "<think>": 151667,
    "</think>": 151668,
    "<|audio_start|>": 151669,
    "<|audio_end|>": 151670,
    "<|audio_pad|>": 151676,
    "<asr_text>": 151704,
}


@pytest.mark.parametrize(("token", "token_id"), sorted(QWEN_IDS.items()))
def test_special_ids(token: str, token_id: int) -> None:
    tok = example_tokenizer()
    assert tok.token_to_id(token) == token_id
    assert tok.id_to_token(token_id) == token
    assert tok.encode(f"a{token}b", add_special_tokens=False).ids[1] == token_id


def test_vocab_is_dense_and_within_qwen_size() -> None:
    tok = example_tokenizer()
    size = tok.get_vocab_size(with_added_tokens=True)
    assert size == 151643 + len(QWEN3_ASR_ADDED_TOKENS) == 151705 <= 151936
    for token_id in (0, 255, 1000, 100000, 151642, 151675, 151700):
        assert tok.id_to_token(token_id) is not None
        tok.decode([token_id])  # every id decodes


@pytest.mark.parametrize(
    "text",
    [
        EXAMPLE_TEXT,
        "Hello, world! It's 3.14 o'clock.\nNew line\ttab",
        "Ünïcödé 日本語 😀 and emoji",
        "  leading and trailing spaces  ",
    ],
)
def test_round_trip(text: str) -> None:
    tok = example_tokenizer()
    assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text


def test_skip_special_keeps_asr_text() -> None:
    tok = example_tokenizer()
    ids = tok.encode("<|im_start|>language English<asr_text>Hi<|im_end|>").ids
    assert tok.decode(ids, skip_special_tokens=True) == "language English<asr_text>Hi"


def test_merges_compress_english() -> None:
    tok = example_tokenizer()
    assert len(tok.encode(EXAMPLE_TEXT).ids) <= 12


def test_build_is_fast_and_deterministic() -> None:
    start = time.perf_counter()
    first = _example_tokenizer_json.__wrapped__()
    assert time.perf_counter() - start < 2.0
    assert _example_tokenizer_json.__wrapped__() == first
    # another process (other hash seeds in Rust and Python) builds the same bytes
    code = (
        "import hashlib; from qgraph.examples import _example_tokenizer_json as j; "
        "print(hashlib.sha256(j().encode()).hexdigest())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == hashlib.sha256(first.encode()).hexdigest()


@pytest.mark.parametrize(
    ("path", "low", "high"), [(example_audio(), 3, 5), (example_long_audio(), 9, 14)]
)
def test_example_audio_files(path, low: float, high: float) -> None:
    info = sf.info(path)
    assert info.samplerate == 16000 and info.channels == 1
    assert low < info.duration < high


def test_runtime_imports_no_torch_or_exporter() -> None:
    code = (
        "import sys, qgraph.runtime as r, qgraph.runtime.bench, qgraph.commands.transcribe, "
        "qgraph.commands.bench, qgraph.examples; r.AsrSession; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers') "
        "or m.startswith('qgraph.export')]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
