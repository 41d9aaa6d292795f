"""Qwen3-ASR chat prompt, audio-token count and transcript parsing.

The prompt is the chat template with a system turn holding the optional context and a user turn
holding only the audio::

    <|im_start|>system\\n{context}<|im_end|>\\n<|im_start|>user\\n
    <|audio_start|><|audio_pad|>xN<|audio_end|><|im_end|>\\n<|im_start|>assistant\\n
    [language {Name}<asr_text>]          (only when a language is forced)

Special-token ids come from the bundle config (``SpecialTokens``); the text between them is
encoded with the bundle's tokenizer, one piece per run of text, as the template tokenizer does.
The model answers ``language {Name}<asr_text>{transcript}``; ``parse_transcript`` splits that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from qgraph.errors import RuntimeInputError

__all__ = [
    "LANGUAGES",
    "SpecialTokens",
    "build_prompt_ids",
    "n_audio_tokens",
    "parse_transcript",
    "resolve_language",
    "split_language_prefix",
]

LANGUAGES: dict[str, str] = {
    "ar": "Arabic",
    "yue": "Cantonese",
    "zh": "Chinese",
    "cs": "Czech",
    "da": "Danish",
    "nl": "Dutch",
    "en": "English",
    "fil": "Filipino",
    "fi": "Finnish",
    "fr": "French",
    "de": "German",
    "el": "Greek",
    "hi": "Hindi",
    "hu": "Hungarian",
    "id": "Indonesian",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "mk": "Macedonian",
    "ms": "Malay",
    "fa": "Persian",
    "pl": "Polish",
    "pt": "Portuguese",
    "ro": "Romanian",
    "ru": "Russian",
    "es": "Spanish",
    "sv": "Swedish",
    "th": "Thai",
    "tr": "Turkish",
    "vi": "Vietnamese",
}
"""Language codes and the names Qwen3-ASR was trained with in ``language {Name}<asr_text>``."""


class TextEncoder(Protocol):
    """The part of ``tokenizers.Tokenizer`` the prompt builder uses."""

    def encode(self, sequence: str, add_special_tokens: bool = ...) -> Any: ...


@dataclass(frozen=True)
class SpecialTokens:
    """Special-token ids of the model (config.json ``special_tokens``); Qwen3-ASR defaults."""

    eos_token_ids: tuple[int, ...] = (151643, 151645)
    pad_token_id: int = 151643
    im_start: int = 151644
    im_end: int = 151645
    audio_start: int = 151669
    audio_end: int = 151670
    audio_pad: int = 151676
    asr_text: int = 151704
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SpecialTokens:
        """Read ``config["special_tokens"]``; keys that are absent keep their defaults."""
        raw = dict(config.get("special_tokens") or {})
        known = {"pad_token_id", "im_start", "im_end", "audio_start", "audio_end", "audio_pad"}
        known.add("asr_text")
        kwargs: dict[str, Any] = {k: int(raw[k]) for k in known if k in raw}
        if "eos_token_ids" in raw:
            eos = raw["eos_token_ids"]
            kwargs["eos_token_ids"] = tuple(
                int(i) for i in (eos if isinstance(eos, list) else [eos])
            )
        extra = {k: v for k, v in raw.items() if k not in known and k != "eos_token_ids"}
        return cls(**kwargs, extra=extra)


def n_audio_tokens(n_frames: int, chunk_frames: int = 100, tokens_per_chunk: int = 13) -> int:
    """Audio tokens the encoder emits for ``n_frames`` mel frames.

    Each full 100-frame chunk gives 13 tokens; the remainder ``r`` goes through three
    stride-2 convolutions (kernel 3, padding 1), giving ``ceil(ceil(ceil(r / 2) / 2) / 2)``.
    """
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    rest = n_frames % chunk_frames
    for _ in range(3):
        rest = (rest + 1) // 2
    return (n_frames // chunk_frames) * tokens_per_chunk + rest


def resolve_language(language: str) -> str:
    """Canonical language name for a code (``"en"``) or a name in any case (``"english"``)."""
    key = language.strip()
    if key.lower() in LANGUAGES:
        return LANGUAGES[key.lower()]
    by_name = {name.lower(): name for name in LANGUAGES.values()}
    if key.lower() in by_name:
        return by_name[key.lower()]
    known = ", ".join(sorted(LANGUAGES))
    raise RuntimeInputError(f"unknown language {language!r}; use a name or one of: {known}")


def _encode(tokenizer: TextEncoder, text: str) -> list[int]:
    if not text:
        return []
    return list(tokenizer.encode(text, add_special_tokens=False).ids)


def build_prompt_ids(
    tokenizer: TextEncoder,
    n_audio_tokens: int,
    language: str | None = None,
    context: str = "",
    special: SpecialTokens | None = None,
) -> tuple[list[int], int]:
    """Prompt token ids and ``audio_offset`` (index of the first ``<|audio_pad|>``).

    ``language`` (code or name) forces the output language with an assistant prefill;
    ``context`` is free text (names, terms) placed in the system turn.
    """
    if n_audio_tokens < 1:
        raise ValueError(f"n_audio_tokens must be >= 1, got {n_audio_tokens}")
    sp = special or SpecialTokens()
    ids: list[int] = [sp.im_start, *_encode(tokenizer, "system\n" + context), sp.im_end]
    ids += _encode(tokenizer, "\n")
    ids += [sp.im_start, *_encode(tokenizer, "user\n"), sp.audio_start]
    audio_offset = len(ids)
    ids += [sp.audio_pad] * n_audio_tokens
    ids += [sp.audio_end, sp.im_end, *_encode(tokenizer, "\n")]
    # The language prefill continues the assistant turn's text, so it is encoded with it.
    prefill = f"language {resolve_language(language)}" if language is not None else ""
    ids += [sp.im_start, *_encode(tokenizer, "assistant\n" + prefill)]
    if language is not None:
        ids.append(sp.asr_text)
    return ids, audio_offset


def parse_transcript(text: str) -> tuple[str | None, str]:
    """Split ``language X<asr_text>text`` into ``(X, text)``.

    Without ``<asr_text>`` the whole string is the transcript and the language is None;
    ``language None`` (the model's answer for silence) also gives None.
    """
    marker = "<asr_text>"
    text = text.strip()
    if marker not in text:
        return None, text
    prefix, transcript = text.split(marker, 1)
    language: str | None = None
    for line in prefix.strip().splitlines():
        line = line.strip()
        if not line:
            continue
        language = (
            line[len("language ") :].strip() if line.lower().startswith("language ") else line
        )
        break
    if language is not None and language.lower() == "none":
        language = None
    return language or None, transcript.strip()


def split_language_prefix(
    token_ids: Sequence[int], special: SpecialTokens
) -> tuple[list[int], list[int]]:
    """Split generated ids at the first ``<asr_text>``: (prefix ids, transcript ids).

    Without ``<asr_text>`` the prefix is empty. Works whether or not the tokenizer treats
    ``<asr_text>`` as special (and would drop it when decoding).
    """
    ids = list(token_ids)
    if special.asr_text in ids:
        cut = ids.index(special.asr_text)
        return ids[:cut], ids[cut + 1 :]
    return [], ids
