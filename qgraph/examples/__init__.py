"""Built-in examples that need no download: a speech clip and a Qwen-compatible tokenizer.

``example_audio()`` returns the path of a short 16 kHz mono WAV of synthesised English speech
shipped inside the package. ``example_tokenizer()`` builds, deterministically and in well under a
second, a small byte-level BPE tokenizer whose special tokens sit at the ids Qwen3-ASR uses
(``<|endoftext|>`` 151643, ``<|im_start|>`` 151644, ``<|im_end|>`` 151645, ``<|audio_start|>``
151669, ``<|audio_end|>`` 151670, ``<|audio_pad|>`` 151676, ``<asr_text>`` 151704). Ids between
the trained vocabulary and 151643 are unreachable filler tokens, so every id below the vocabulary
size decodes. It is meant for tiny random models and tests, not for real checkpoints.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)

__all__ = [
    "EXAMPLE_TEXT",
    "EXAMPLE_LONG_TEXT",
    "QWEN3_ASR_ADDED_TOKENS",
    "FIRST_ADDED_ID",
    "example_audio",
    "example_long_audio",
    "example_tokenizer",
]

_HERE = Path(__file__).resolve().parent

EXAMPLE_TEXT = "The quick brown fox jumps over the lazy dog."
"""What ``example_audio()`` says."""

EXAMPLE_LONG_TEXT = (
    "Speech recognition turns spoken words into written text. "
    "This short recording was made by a speech synthesiser, "
    "so that the compiler can be tested without downloading anything."
)
"""What ``example_long_audio()`` says."""

FIRST_ADDED_ID = 151643
"""Id of ``<|endoftext|>``, the first added token in Qwen2/Qwen3 tokenizers."""

# (content, special) in id order from 151643; this is the Qwen3-ASR added vocabulary.
QWEN3_ASR_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),  # 151643
    ("<|im_start|>", True),  # 151644
    ("<|im_end|>", True),  # 151645
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),  # 151668
    ("<|audio_start|>", True),  # 151669
    ("<|audio_end|>", True),  # 151670
    ("<tts_pad>", True),
    ("<tts_text_bos>", True),
    ("<tts_text_eod>", True),
    ("<tts_text_bos_single>", True),
    ("<non_speech>", False),  # 151675
    ("<|audio_pad|>", True),  # 151676
    *((f"<blank{i}>", True) for i in range(1, 28)),  # 151677 .. 151703
    ("<asr_text>", False),  # 151704
)

# Qwen2/Qwen3 pre-tokenisation regex (single digits, contractions, letter runs, punctuation).
_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Small English training text for the BPE merges (written for this project).
_CORPUS = """\
The quick brown fox jumps over the lazy dog. The five boxing wizards jump quickly.
Speech recognition turns spoken words into written text. A model listens to the audio,
builds a picture of the sound, and then writes down what it hears, one token at a time.
This short recording was made by a speech synthesiser, so that the compiler can be tested
without downloading anything. A compiler rewrites a graph of operations into another graph
that computes the same numbers faster, or with less memory, on the same machine.
Hello, world! How are you today? I am fine, thank you. What time is it? It is half past ten.
She sells sea shells by the sea shore. Peter Piper picked a peck of pickled peppers.
Numbers such as 1, 2, 3, 10, 42, 100, 2024 and 3.14 appear in text, and so do dates,
names, places and questions. We were there when they said that this would work well.
In the beginning there was only noise; then there were words, sentences and stories.
language English language Chinese language German language French language Spanish
The system prompt, the user turn and the assistant turn: system, user, assistant.
system
user
assistant
It's, I'm, you're, we've, they'll, he'd: contractions are common in spoken English.
The weather is nice and the sun is shining over the hills, the rivers and the city.
"""

_TRAINED_VOCAB_SIZE = 1024


def example_audio() -> Path:
    """Path of a ~4 s, 16 kHz mono 16-bit WAV of synthesised speech saying ``EXAMPLE_TEXT``."""
    return _HERE / "speech.wav"


def example_long_audio() -> Path:
    """Path of a ~12 s, 16 kHz mono 16-bit WAV of speech saying ``EXAMPLE_LONG_TEXT``."""
    return _HERE / "speech_long.wav"


@functools.lru_cache(maxsize=1)
def _example_tokenizer_json() -> str:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TRAINED_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(keepends=True), trainer=trainer)

    vocab = tok.get_vocab()
    merges = _merges_of(tok)
    for token_id in range(len(vocab), FIRST_ADDED_ID):
        vocab[f"<|filler_{token_id}|>"] = token_id
    model = models.BPE(vocab=vocab, merges=merges, ignore_merges=False)
    full = Tokenizer(model)
    full.normalizer = tok.normalizer
    full.pre_tokenizer = tok.pre_tokenizer
    full.decoder = tok.decoder
    # Added one by one, in id order, so each lands on the next id (151643, 151644, ...).
    for content, special in QWEN3_ASR_ADDED_TOKENS:
        full.add_tokens([AddedToken(content, special=special, normalized=False)])
    return full.to_str()


def _merges_of(tok: Tokenizer) -> list[tuple[str, str]]:
    raw = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in raw]


def example_tokenizer() -> Tokenizer:
    """A fresh ``tokenizers.Tokenizer`` with Qwen3-ASR's special-token ids (cached build).

    The vocabulary size is 151705 (last id 151704 = ``<asr_text>``). Save it with
    ``example_tokenizer().save(path)`` to put a ``tokenizer.json`` into a bundle.
    """
    tok = Tokenizer.from_str(_example_tokenizer_json())
    last_id = FIRST_ADDED_ID + len(QWEN3_ASR_ADDED_TOKENS) - 1
    if tok.id_to_token(last_id) != "<asr_text>" or tok.token_to_id("<|audio_pad|>") != 151676:
        # Only a change in the tokenizers library could cause this.
        raise RuntimeError("example tokenizer special ids are misplaced")
    return tok
