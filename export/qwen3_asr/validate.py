"""Compare a qwen3-asr bundle with the PyTorch reference model it was exported from.

For every clip, both sides get the same log-mel (``qgraph.runtime.mel.log_mel``) and the same
prompt ids (``qgraph.runtime.prompt.build_prompt_ids``, no forced language):

- encoder: ONNX ``audio_features`` vs HF ``get_audio_features`` (max abs diff);
- prefill: ONNX ``decoder_init`` logits at the last prompt position vs the HF forward (max abs
  diff; the ONNX side uses the ONNX encoder output, so the diff is end to end);
- greedy decode: ``qgraph.runtime`` greedy tokens vs HF ``generate(do_sample=False)``, token for
  token, EOS included, with the same token budget.

A clip passes when both diffs are within ``tolerance * max(1, max|reference|)`` and the token
lists are equal. The PyTorch side runs first and is freed before ONNX Runtime loads the bundle,
so peak memory is one copy of the model, not two.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qgraph.errors import VerificationError
from qgraph.families import open_session
from qgraph.runtime import AsrSession, default_max_tokens
from qgraph.runtime.files import load_tokenizer, read_config
from qgraph.runtime.mel import log_mel
from qgraph.runtime.prompt import SpecialTokens, build_prompt_ids
from qgraph.validation import (
    DEFAULT_TOLERANCE,
    ClipResult,
    ValidationReport,
    first_mismatch,
    max_diff,
)

from .configs import build_model

logger = logging.getLogger(__name__)

_CHECKED_SHAPES = (
    ("decoder", "num_layers", "num_hidden_layers"),
    ("decoder", "hidden_size", "hidden_size"),
    ("decoder", "vocab_size", "vocab_size"),
    ("encoder", "num_layers", "encoder_layers"),
    ("encoder", "hidden_size", "d_model"),
)


@dataclass
class _Reference:
    features: np.ndarray
    last_logits: np.ndarray
    tokens: list[int]


def validate_bundle(
    bundle_dir: str | Path,
    reference: str,
    clips: Sequence[tuple[str, np.ndarray]],
    *,
    max_tokens: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ValidationReport:
    """Compare ``bundle_dir`` with ``reference`` (checkpoint folder, hub id or built-in name).

    ``clips`` are ``(name, float32 mono samples at 16 kHz)``. ``max_tokens`` defaults to the
    runtime's budget for each clip's length. Returns the report; never raises for a mismatch
    (call ``report.raise_for_failure()``), only for unusable inputs.
    """
    if not clips:
        raise VerificationError("no audio to validate with; pass at least one clip")
    bundle_dir = Path(bundle_dir)
    config = read_config(bundle_dir)
    tokenizer = load_tokenizer(bundle_dir)
    special = SpecialTokens.from_config(config)
    mels = [log_mel(np.asarray(samples, dtype=np.float32)) for _, samples in clips]
    budgets = [
        max_tokens if max_tokens is not None else default_max_tokens(len(s) / 16000)
        for _, s in clips
    ]

    model, description = build_model(reference)
    _check_same_architecture(config, model)
    refs = []
    for (name, _), mel, budget in zip(clips, mels, budgets, strict=True):
        logger.info("PyTorch reference for %s", name)
        refs.append(_torch_reference(model, tokenizer, special, mel, budget))
    del model
    gc.collect()

    session = open_session(bundle_dir)  # either layout
    results = []
    for (name, samples), mel, ref, budget in zip(clips, mels, refs, budgets, strict=True):
        logger.info("ONNX Runtime for %s", name)
        results.append(_compare(session, name, samples, mel, ref, budget, special, tolerance))
    return ValidationReport(str(bundle_dir), description, tolerance, results)


def _check_same_architecture(config: dict[str, Any], model: torch.nn.Module) -> None:
    sub = {"decoder": model.config.text_config, "encoder": model.config.audio_config}
    for section, key, attr in _CHECKED_SHAPES:
        have = (config.get(section) or {}).get(key)
        want = getattr(sub[section], attr)
        if have is not None and have != want:
            raise VerificationError(
                f"the bundle's {section}.{key} is {have} but the reference has {want}; "
                "validate against the checkpoint the bundle was exported from"
            )


def _hf_features(mel: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The processor's padded ``input_features`` and ``input_features_mask`` for one mel."""
    frames = mel.shape[1]
    padded = np.pad(mel, ((0, 0), (0, (100 - frames % 100) % 100)))
    mask = torch.zeros(1, padded.shape[1], dtype=torch.long)
    mask[:, :frames] = 1
    return torch.from_numpy(padded)[None], mask


@torch.no_grad()
def _torch_reference(
    model: torch.nn.Module,
    tokenizer: Any,
    special: SpecialTokens,
    mel: np.ndarray,
    budget: int,
) -> _Reference:
    feats, mask = _hf_features(mel)
    audio = model.get_audio_features(feats, mask).pooler_output
    ids, _ = build_prompt_ids(tokenizer, int(audio.shape[0]), None, special=special)
    input_ids = torch.tensor([ids])
    attention = torch.ones_like(input_ids)
    inputs = {
        "input_ids": input_ids,
        "input_features": feats,
        "input_features_mask": mask,
        "attention_mask": attention,
    }
    logits = model(**inputs, logits_to_keep=1).logits[0, -1]
    out = model.generate(
        **inputs,
        max_new_tokens=budget,
        do_sample=False,
        num_beams=1,
        eos_token_id=list(special.eos_token_ids),
        pad_token_id=special.pad_token_id,
    )
    return _Reference(audio.numpy(), logits.numpy(), out[0, len(ids) :].tolist())


def _compare(
    session: AsrSession,
    name: str,
    samples: np.ndarray,
    mel: np.ndarray,
    ref: _Reference,
    budget: int,
    special: SpecialTokens,
    tolerance: float,
) -> ClipResult:
    problems: list[str] = []
    feats = session.encode(mel[None])
    enc_diff = max_diff(feats[0], ref.features)
    if feats.shape[1] != ref.features.shape[0]:
        problems.append(
            f"encoder gives {feats.shape[1]} audio tokens, PyTorch {ref.features.shape[0]}"
        )
    elif enc_diff > tolerance * max(1.0, float(np.abs(ref.features).max())):
        problems.append(f"encoder features differ by {enc_diff:.3g} (tolerance {tolerance:g})")
    ids, offset = build_prompt_ids(session.tokenizer, int(feats.shape[1]), None, special=special)
    logits_diff = float("nan")
    if not problems:
        last, _, _ = session.prefill(ids, feats, offset)
        logits_diff = max_diff(last, ref.last_logits)
        if logits_diff > tolerance * max(1.0, float(np.abs(ref.last_logits).max())):
            problems.append(f"prefill logits differ by {logits_diff:.3g} (tolerance {tolerance:g})")
    decode_log = logging.getLogger("qgraph.runtime.qwen3")
    level = decode_log.level
    decode_log.setLevel(logging.ERROR)  # running out of budget is expected here, not a warning
    try:
        tokens = session.transcribe(samples, max_tokens=budget).token_ids
    finally:
        decode_log.setLevel(level)
    mismatch = first_mismatch(tokens, ref.tokens)
    if mismatch is not None:
        got = tokens[mismatch] if mismatch < len(tokens) else "end"
        want = ref.tokens[mismatch] if mismatch < len(ref.tokens) else "end"
        problems.append(f"greedy tokens differ at position {mismatch}: ONNX {got}, PyTorch {want}")
    return ClipResult(
        name=name,
        seconds=len(samples) / 16000,
        frames=int(mel.shape[1]),
        audio_tokens=int(feats.shape[1]),
        encoder_max_abs=enc_diff,
        logits_max_abs=logits_diff,
        onnx_tokens=list(tokens),
        torch_tokens=list(ref.tokens),
        first_mismatch=mismatch,
        problems=problems,
    )
