"""Whisper tokenizers: the built-in tiny one, timestamp completion and the special-token ids.

- ``tiny_tokenizer()``: a byte-level tokenizer (256 byte tokens, no merges) followed by the
  English-only Whisper special tokens in their usual order (``<|endoftext|>``,
  ``<|startoftranscript|>``, ``<|en|>``, ``<|translate|>``, ``<|transcribe|>``, ``<|startoflm|>``,
  ``<|startofprev|>``, ``<|nocaptions|>``, ``<|notimestamps|>``); deterministic, for random models.
- ``complete_timestamps(tok, vocab_size)``: checkpoints whose ``tokenizer.json`` stops at
  ``<|notimestamps|>`` (CTranslate2 conversions) get the timestamp tokens ``<|0.00|>``,
  ``<|0.02|>``, ... up to the model's vocabulary size, as in the transformers tokenizers, so every
  id the model can emit decodes (onnx-asr looks every generated id up).
- ``special_ids(tok)``: the ids the prompt and decode loop use; ExportError if one is missing.
"""

from __future__ import annotations

import json
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from qgraph.errors import ExportError

ENGLISH_SPECIALS = (
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
)
"""Special tokens of an English-only Whisper tokenizer, in id order."""

SPECIAL_NAMES = {
    "eos": "<|endoftext|>",
    "sot": "<|startoftranscript|>",
    "translate": "<|translate|>",
    "transcribe": "<|transcribe|>",
    "sot_lm": "<|startoflm|>",
    "sot_prev": "<|startofprev|>",
    "no_timestamps": "<|notimestamps|>",
}
"""Key -> token text of the ids recorded in generation_config.json."""

TIMESTAMP_STEP = 0.02
"""Seconds per timestamp token."""


def tiny_tokenizer() -> Tokenizer:
    """The built-in tokenizer for random models: 256 byte tokens, then ``ENGLISH_SPECIALS``."""
    vocab = {ch: byte for byte, ch in _bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    for content in ENGLISH_SPECIALS:  # one by one so that each takes the next id
        tok.add_tokens([AddedToken(content, special=True, normalized=False)])
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE alphabet)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    return {
        **{b: chr(b) for b in printable},
        **{b: chr(256 + i) for i, b in enumerate(others)},
    }


def complete_timestamps(tok: Tokenizer, vocab_size: int) -> Tokenizer:
    """Append ``<|t.tt|>`` tokens after ``<|notimestamps|>`` up to ``vocab_size`` ids.

    Returns ``tok`` unchanged when it already covers ``vocab_size``. Raises ExportError when it
    has more ids than the model or when ``<|notimestamps|>`` is not its last id.
    """
    size = tok.get_vocab_size(with_added_tokens=True)
    if size == vocab_size:
        return tok
    no_ts = tok.token_to_id(SPECIAL_NAMES["no_timestamps"])
    if size > vocab_size or no_ts != size - 1:
        raise ExportError(
            f"tokenizer has {size} ids but the model has {vocab_size} outputs; "
            "they do not belong together"
        )
    for i in range(vocab_size - size):
        tok.add_tokens([AddedToken(f"<|{i * TIMESTAMP_STEP:.2f}|>", normalized=False)])
    return tok


def special_ids(tok: Tokenizer) -> dict[str, int]:
    """``{key: id}`` for ``SPECIAL_NAMES``; ExportError naming the first missing token."""
    out = {}
    for key, content in SPECIAL_NAMES.items():
        token_id = tok.token_to_id(content)
        if token_id is None:
            raise ExportError(f"tokenizer has no {content} token; this is not a Whisper tokenizer")
        out[key] = token_id
    return out


def language_ids(tok: Tokenizer, ids: dict[str, int]) -> dict[str, int]:
    """``{"<|en|>": id, ...}``: the tokens between ``<|startoftranscript|>`` and ``<|translate|>``.

    Multilingual models only; English-only tokenizers have just ``<|en|>`` there.
    """
    return {
        tok.id_to_token(i): i
        for i in range(ids["sot"] + 1, ids["translate"])
        if tok.id_to_token(i) is not None
    }


def vocab_files(tok: Tokenizer) -> dict[str, bytes]:
    """``vocab.json``, ``added_tokens.json`` and ``merges.txt`` (the slow-tokenizer files)."""
    data: dict[str, Any] = json.loads(tok.to_str())
    added = {t["content"]: t["id"] for t in data["added_tokens"]}
    vocab = {k: v for k, v in data["model"]["vocab"].items() if k not in added}
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    return {
        "vocab.json": _json(vocab),
        "added_tokens.json": _json(added),
        "merges.txt": ("#version: 0.2\n" + "".join(f"{m}\n" for m in merges)).encode(),
    }


def _json(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()
