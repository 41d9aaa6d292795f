"""Model sources for the Qwen3-ASR exporter: built-in random configs and local or hub checkpoints.

``build_model(name_or_dir)`` returns an FP32, eval-mode ``Qwen3ASRForConditionalGeneration`` with
eager attention and a one-line description of where it came from:

- ``tiny``: a ~20 M-parameter model with fixed random weights (seed 0, identical on every call),
  full Qwen vocabulary, wide enough init that greedy decoding does not echo one token;
- ``random-0.6b`` / ``random-1.7b``: random weights with the real Qwen3-ASR shapes, for
  export-scale benchmarks (same seed, but meant for timing and memory, not for accuracy);
- a local folder with ``config.json`` (``model_type: qwen3_asr``) and safetensors/bin weights in
  the native transformers layout;
- a hub id (``Qwen/Qwen3-ASR-0.6B-hf``), fetched with ``huggingface_hub`` when the hub is reachable.

Every failure a user can cause raises ``ExportError`` with a one-line message.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Qwen3ASRConfig, Qwen3ASRForConditionalGeneration

from qgraph.errors import ExportError

logger = logging.getLogger(__name__)

SEED = 0
"""Seed for every built-in random model."""

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
"""A checkpoint folder needs one of these."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class Shape:
    """The architecture numbers that differ between the built-in configs."""

    enc_layers: int
    enc_d_model: int
    enc_heads: int
    enc_ffn: int
    enc_downsample: int
    text_layers: int
    text_hidden: int
    text_heads: int
    text_kv_heads: int
    text_head_dim: int
    text_ffn: int
    initializer_range: float = 0.02
    embed_scale: float = 1.0


BUILTIN: dict[str, Shape] = {
    "tiny": Shape(2, 64, 4, 128, 32, 2, 128, 4, 2, 32, 256, initializer_range=0.1, embed_scale=0.1),
    "random-0.6b": Shape(18, 896, 14, 3584, 480, 28, 1024, 16, 8, 128, 3072),
    "random-1.7b": Shape(24, 1024, 16, 4096, 480, 28, 2048, 16, 8, 128, 6144),
}
"""Built-in configs. ``tiny``'s wide init (0.1, embedding x0.1) keeps greedy output varied."""


def builtin_config(name: str) -> Qwen3ASRConfig:
    """The ``Qwen3ASRConfig`` of a built-in model (see ``BUILTIN``)."""
    s = BUILTIN[name]
    audio = {
        "num_mel_bins": 128,
        "encoder_layers": s.enc_layers,
        "encoder_attention_heads": s.enc_heads,
        "encoder_ffn_dim": s.enc_ffn,
        "d_model": s.enc_d_model,
        "output_dim": s.text_hidden,
        "downsample_hidden_size": s.enc_downsample,
        "n_window": 50,
        "n_window_infer": 800,
        "max_position_embeddings": 13,
        "initializer_range": s.initializer_range,
    }
    text = {
        "vocab_size": 151936,
        "hidden_size": s.text_hidden,
        "intermediate_size": s.text_ffn,
        "num_hidden_layers": s.text_layers,
        "num_attention_heads": s.text_heads,
        "num_key_value_heads": s.text_kv_heads,
        "head_dim": s.text_head_dim,
        "max_position_embeddings": 65536,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
        "tie_word_embeddings": True,
        "initializer_range": s.initializer_range,
    }
    return Qwen3ASRConfig(
        audio_config={"model_type": "qwen3_asr_encoder", **audio},
        text_config={"model_type": "qwen3", **text},
        initializer_range=s.initializer_range,
        tie_word_embeddings=True,
    )


def resolve_source(name_or_dir: str | Path) -> Path | None:
    """The checkpoint folder for ``name_or_dir`` (None for a built-in name).

    A hub id is downloaded (or taken from the local hub cache); a folder is checked for
    ``config.json`` with ``model_type: qwen3_asr`` and weight files.
    """
    name = str(name_or_dir)
    if name in BUILTIN:
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        check_checkpoint_folder(path)
        return path
    if path.exists():
        raise ExportError(f"{path} is a file; pass the checkpoint folder that holds config.json")
    if _HUB_ID.match(name) and not name.startswith((".", "/", "~")):
        folder = _download(name)
        check_checkpoint_folder(folder)
        return folder
    choices = ", ".join(BUILTIN)
    raise ExportError(
        f"no checkpoint folder {name!r}; pass a folder, a hub id or one of: {choices}"
    )


def build_model(name_or_dir: str | Path) -> tuple[Qwen3ASRForConditionalGeneration, str]:
    """Return ``(model, description)`` for a built-in name, a checkpoint folder or a hub id."""
    return build_resolved(str(name_or_dir), resolve_source(name_or_dir))


def build_resolved(name: str, folder: Path | None) -> tuple[Qwen3ASRForConditionalGeneration, str]:
    """``build_model`` for a source already resolved by ``resolve_source``."""
    if folder is None:
        return _build_random(name), f"built-in {name} (random weights, seed {SEED})"
    where = f"checkpoint {folder}" if Path(name).expanduser() == folder else f"hub {name}"
    return load_checkpoint(folder), where


def _build_random(name: str) -> Qwen3ASRForConditionalGeneration:
    config = builtin_config(name)
    config._attn_implementation = "eager"
    logger.info("building %s with random weights (seed %d)", name, SEED)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = Qwen3ASRForConditionalGeneration(config)
    scale = BUILTIN[name].embed_scale
    if scale != 1.0:
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(scale)
    return model.float().eval()


def check_checkpoint_folder(path: Path) -> dict[str, Any]:
    """Return the folder's parsed ``config.json`` or raise ExportError saying what is missing."""
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{path}: no config.json; this is not a transformers checkpoint folder")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ExportError(f"{cfg_path}: not valid JSON ({err})") from None
    model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
    if model_type != "qwen3_asr":
        raise ExportError(
            f"{path}: model_type is {model_type!r}, expected 'qwen3_asr'; "
            "the qwen3-asr exporter only reads Qwen3-ASR checkpoints"
        )
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise ExportError(
            f"{path}: no weights (expected one of {', '.join(WEIGHT_FILES)}); "
            "the checkpoint folder is incomplete"
        )
    return cfg


def load_checkpoint(path: Path) -> Qwen3ASRForConditionalGeneration:
    """Load a native-layout Qwen3-ASR checkpoint folder in FP32, offline."""
    check_checkpoint_folder(path)
    logger.info("loading checkpoint %s", path)
    try:
        model, info = Qwen3ASRForConditionalGeneration.from_pretrained(
            path,
            dtype=torch.float32,
            local_files_only=True,
            attn_implementation="eager",
            output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        raise ExportError(f"{path}: cannot load the checkpoint ({_first_line(err)})") from None
    missing = [k for k in info.get("missing_keys", []) if k != "lm_head.weight"]
    if missing:
        raise ExportError(
            f"{path}: {len(missing)} weights are missing (e.g. {missing[0]}); the checkpoint is "
            "incomplete or not in the native transformers Qwen3-ASR layout (use a '-hf' one)"
        )
    return model.float().eval()


def _download(repo_id: str) -> Path:
    """Fetch a hub checkpoint (config, weights, tokenizer) or raise a one-line ExportError."""
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            repo_id,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"],
        )
    except Exception as err:  # the hub client raises many types (offline, 404, auth, ...)
        raise ExportError(
            f"cannot fetch {repo_id!r} from the Hugging Face hub ({_first_line(err)}); "
            "the hub may be unreachable (offline?): download the checkpoint elsewhere and pass "
            "its local folder"
        ) from None
    return Path(folder)


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:200]
