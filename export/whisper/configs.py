"""Model sources for the Whisper exporter: the built-in random model and local checkpoints.

``resolve_source(name)`` says what ``name`` is; ``build_model(source)`` returns an FP32,
eval-mode ``WhisperForConditionalGeneration`` with eager attention plus a one-line description:

- ``tiny``: a ~0.3 M-parameter English-only model with fixed random weights (seed 0, identical on
  every call), a 265-id byte-level vocabulary (``tokens.tiny_tokenizer``), real Whisper
  audio shapes (80 mels, 3000 frames -> 1500 encoder positions);
- a CTranslate2 folder (faster-whisper format: ``model.bin`` + ``tokenizer.json`` +
  ``config.json``), converted in memory (``ctranslate2``);
- a transformers folder (``config.json`` with ``model_type: whisper``, safetensors/bin weights,
  ``tokenizer.json``), read offline.

The tokenizer comes with the source: ``Source.tokenizer()`` (timestamp tokens completed to the
model's vocabulary size by the exporter). Every failure a user can cause is an ExportError.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from transformers import WhisperConfig, WhisperForConditionalGeneration

from qgraph.errors import ExportError

from . import tokens
from .ctranslate2 import is_ctranslate2_folder, load_ctranslate2

logger = logging.getLogger(__name__)

SEED = 0
BUILTIN = ("tiny",)
TINY_VOCAB = 265
"""256 bytes + 9 special tokens; no timestamp tokens, so the random model cannot emit one (a
timestamp would send transformers' ``generate`` into its long-form segment loop)."""

HF_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True)
class Source:
    """Where a model comes from: ``kind`` is ``builtin``, ``ctranslate2`` or ``transformers``."""

    name: str
    kind: str
    folder: Path | None = None

    def tokenizer(self) -> Tokenizer:
        """The source's tokenizer as shipped (no timestamp completion)."""
        if self.folder is None:
            return tokens.tiny_tokenizer()
        path = self.folder / "tokenizer.json"
        if not path.is_file():
            raise ExportError(
                f"{self.folder}: no tokenizer.json; the checkpoint folder is incomplete"
            )
        try:
            return Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises plain Exceptions from Rust
            raise ExportError(f"{path}: unreadable tokenizer ({_first_line(err)})") from None

    def read_json(self, name: str) -> dict[str, Any]:
        """A JSON file of the source folder (``{}`` when absent or for built-in models)."""
        if self.folder is None or not (self.folder / name).is_file():
            return {}
        try:
            data = json.loads((self.folder / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ExportError(f"{self.folder / name}: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise ExportError(f"{self.folder / name}: expected a JSON object")
        return data


def resolve_source(name_or_dir: str | Path) -> Source:
    """Classify ``name_or_dir``: a built-in name, a CTranslate2 folder or a transformers folder."""
    name = str(name_or_dir)
    if name in BUILTIN:
        return Source(name, "builtin")
    path = Path(name).expanduser()
    if is_ctranslate2_folder(path):
        return Source(name, "ctranslate2", path)
    if path.is_dir():
        config = Source(name, "transformers", path).read_json("config.json")
        if not config:
            raise ExportError(
                f"{path}: neither a CTranslate2 folder (model.bin) nor a transformers checkpoint "
                "(config.json)"
            )
        if config.get("model_type") != "whisper":
            raise ExportError(
                f"{path}: model_type is {config.get('model_type')!r}, expected 'whisper'"
            )
        if not any((path / f).is_file() for f in HF_WEIGHTS):
            raise ExportError(f"{path}: no weights (expected one of {', '.join(HF_WEIGHTS)})")
        return Source(name, "transformers", path)
    if path.exists():
        raise ExportError(f"{path} is a file; pass the checkpoint folder")
    raise ExportError(
        f"no checkpoint folder {name!r}; pass a CTranslate2 or transformers Whisper folder, "
        f"or one of: {', '.join(BUILTIN)}"
    )


def special_config(tok: Tokenizer) -> dict[str, Any]:
    """Token-id fields of ``WhisperConfig`` for a tokenizer."""
    ids = tokens.special_ids(tok)
    return {
        "decoder_start_token_id": ids["sot"],
        "eos_token_id": ids["eos"],
        "bos_token_id": ids["eos"],
        "pad_token_id": ids["eos"],
    }


def tiny_config() -> WhisperConfig:
    """The built-in ``tiny`` configuration (English-only layout, real audio shapes)."""
    tok = tokens.tiny_tokenizer()
    ids = tokens.special_ids(tok)
    config = WhisperConfig(
        vocab_size=TINY_VOCAB,
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=448,
        init_std=0.2,
        suppress_tokens=[ids["sot"], *range(ids["translate"], ids["no_timestamps"])],
        begin_suppress_tokens=[tok.token_to_id("Ġ"), ids["eos"]],
        **special_config(tok),
    )
    config._attn_implementation = "eager"
    return config


def build_model(source: Source) -> tuple[WhisperForConditionalGeneration, str]:
    """``(model, description)`` for a resolved source."""
    if source.kind == "builtin":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            model = WhisperForConditionalGeneration(tiny_config())
        return model.float().eval(), f"built-in {source.name} (random weights, seed {SEED})"
    assert source.folder is not None
    if source.kind == "ctranslate2":
        generation = source.read_json("config.json")
        special = special_config(source.tokenizer())
        special["suppress_tokens"] = list(generation.get("suppress_ids", []))
        special["begin_suppress_tokens"] = list(generation.get("suppress_ids_begin", []))
        return load_ctranslate2(source.folder, **special), f"CTranslate2 {source.folder}"
    return _load_transformers(source.folder), f"checkpoint {source.folder}"


def _load_transformers(path: Path) -> WhisperForConditionalGeneration:
    logger.info("loading checkpoint %s", path)
    try:
        model = WhisperForConditionalGeneration.from_pretrained(
            path, dtype=torch.float32, local_files_only=True, attn_implementation="eager"
        )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        raise ExportError(f"{path}: cannot load the checkpoint ({_first_line(err)})") from None
    return model.float().eval()


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:200]
