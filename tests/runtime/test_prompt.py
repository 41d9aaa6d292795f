"""Prompt layout, audio-token count, language handling and transcript parsing."""

from __future__ import annotations

import pytest

from qgraph.errors import RuntimeInputError
from qgraph.examples import example_tokenizer
from qgraph.runtime.prompt import (
    SpecialTokens,
    build_prompt_ids,
    n_audio_tokens,
    parse_transcript,
    resolve_language,
    split_language_prefix,
)

SP = SpecialTokens()


def _template(n: int, language: str | None = None, context: str = "") -> str:
    text = (
        f"<|im_start|>system\n{context}<|im_end|>\n<|im_start|>user\n<|audio_start|>"
        + "<|audio_pad|>" * n
        + "<|audio_end|><|im_end|>\n<|im_start|>assistant\n"
    )
    if language:
        text += f"language {language}<asr_text>"
    return text


def test_layout_without_language() -> None:
    tok = example_tokenizer()
    ids, offset = build_prompt_ids(tok, 7)
    nl = tok.token_to_id("Ċ")
    assert ids[0] == SP.im_start
    assert tok.decode(ids[1:offset], skip_special_tokens=False).startswith("system\n")
    assert ids[offset - 1] == SP.audio_start
    assert ids[offset : offset + 7] == [SP.audio_pad] * 7
    assert ids.count(SP.audio_pad) == 7
    assert ids[offset + 7 : offset + 10] == [SP.audio_end, SP.im_end, nl]
    assert ids[-1] == nl and ids[-3] == SP.im_start
    assert tok.decode(ids[-2:]) == "assistant\n"
    assert ids.count(SP.im_start) == 3 and ids.count(SP.im_end) == 2
    # same as the seed's fixed layout: 9 + N + 6 tokens with the audio at offset 9
    assert offset == 9 and len(ids) == 9 + 7 + 6


@pytest.mark.parametrize(
    ("language", "context"), [(None, ""), ("English", ""), (None, "Names: Qwen, qgraph.")]
)
def test_matches_tokenizing_the_whole_template(language: str | None, context: str) -> None:
    tok = example_tokenizer()
    ids, offset = build_prompt_ids(tok, 13, language=language, context=context)
    expected = tok.encode(_template(13, language, context), add_special_tokens=False).ids
    assert ids == expected
    assert ids[offset - 1] == SP.audio_start and ids[offset] == SP.audio_pad


def test_language_prefill() -> None:
    tok = example_tokenizer()
    plain, offset = build_prompt_ids(tok, 5)
    forced, offset2 = build_prompt_ids(tok, 5, language="en")
    assert offset == offset2
    assert forced[: len(plain)] == plain
    tail = forced[len(plain) :]
    assert tail[-1] == SP.asr_text
    assert tok.decode(tail[:-1]) == "language English"


def test_special_ids_come_from_config() -> None:
    tok = example_tokenizer()
    special = SpecialTokens.from_config({"special_tokens": {"audio_pad": 42, "im_start": 7}})
    ids, offset = build_prompt_ids(tok, 3, special=special)
    assert ids[0] == 7 and ids[offset : offset + 3] == [42, 42, 42]
    assert special.audio_start == 151669  # absent keys keep the Qwen3-ASR defaults


def test_special_tokens_from_config() -> None:
    sp = SpecialTokens.from_config(
        {"special_tokens": {"eos_token_ids": [1, 2], "asr_text": 9, "future_token": 5}}
    )
    assert sp.eos_token_ids == (1, 2) and sp.asr_text == 9
    assert sp.extra == {"future_token": 5}
    assert SpecialTokens.from_config({}) == SpecialTokens()


@pytest.mark.parametrize(
    ("frames", "tokens"),
    [(0, 0), (1, 1), (8, 1), (9, 2), (50, 7), (99, 13), (100, 13), (101, 14), (383, 50)],
)
def test_n_audio_tokens_values(frames: int, tokens: int) -> None:
    assert n_audio_tokens(frames) == tokens


def test_n_audio_tokens_matches_transformers() -> None:
    pytest.importorskip("torch")
    modeling = pytest.importorskip("transformers.models.qwen3_asr.modeling_qwen3_asr")
    for frames in range(0, 3001, 7):
        assert n_audio_tokens(frames) == int(modeling._get_feat_extract_output_lengths(frames))


def test_n_audio_tokens_is_three_stride_two_convs() -> None:
    def conv(n: int) -> int:
        return (n + 2 * 1 - 3) // 2 + 1 if n > 0 else 0

    for frames in range(0, 1000):
        rest = frames % 100
        assert n_audio_tokens(frames) == frames // 100 * 13 + conv(conv(conv(rest)))


@pytest.mark.parametrize(
    ("text", "language", "transcript"),
    [
        ("language English<asr_text>Hello world.", "English", "Hello world."),
        ("language Chinese<asr_text>你好", "Chinese", "你好"),
        ("  language German <asr_text> Hallo  ", "German", "Hallo"),
        ("language None<asr_text>", None, ""),
        ("no marker at all", None, "no marker at all"),
        ("English<asr_text>hi", "English", "hi"),
        ("", None, ""),
    ],
)
def test_parse_transcript(text: str, language: str | None, transcript: str) -> None:
    assert parse_transcript(text) == (language, transcript)


def test_split_language_prefix() -> None:
    assert split_language_prefix([1, 2, SP.asr_text, 3, 4], SP) == ([1, 2], [3, 4])
    assert split_language_prefix([3, 4], SP) == ([], [3, 4])


def test_resolve_language() -> None:
    assert resolve_language("en") == "English"
    assert resolve_language("ENGLISH") == "English"
    assert resolve_language("yue") == "Cantonese"
    with pytest.raises(RuntimeInputError, match="unknown language 'Klingon'"):
        resolve_language("Klingon")
    with pytest.raises(RuntimeInputError):
        build_prompt_ids(example_tokenizer(), 3, language="xx")


def test_rejects_no_audio() -> None:
    with pytest.raises(ValueError):
        build_prompt_ids(example_tokenizer(), 0)
