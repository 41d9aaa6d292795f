"""Compare a whisper bundle with the PyTorch model it was exported from.

For every clip both sides get the same 30 s log-mel (``WhisperSession.features``) and the same
prompt (``WhisperSession.prompt``):

- encoder: ONNX ``last_hidden_state`` vs HF ``model.encoder`` (max abs diff);
- first decoder call: ONNX logits at the last prompt position vs the HF forward (max abs diff;
  the ONNX side uses the ONNX encoder output, so the diff is end to end);
- greedy decode: ``qgraph.runtime.whisper`` tokens vs HF ``generate`` with the bundle's
  ``generation_config.json`` (greedy, same ``suppress_tokens`` / ``begin_suppress_tokens``, same
  budget), token for token; the ONNX side's final ``<|endoftext|>`` is not compared (HF strips it).

Reports use ``qgraph.validation``'s ``ClipResult`` / ``ValidationReport`` (the same table, JSON
and verdict as every family). Clips longer than one 30 s window are refused.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import GenerationConfig

from qgraph.errors import VerificationError
from qgraph.runtime.whisper import WhisperSession
from qgraph.validation import (
    DEFAULT_TOLERANCE,
    ClipResult,
    ValidationReport,
    first_mismatch,
    max_diff,
)

from .configs import build_model, resolve_source

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_TOLERANCE", "validate_whisper"]


@torch.no_grad()
def _reference(
    model: torch.nn.Module,
    config: GenerationConfig,
    mel: np.ndarray,
    prompt: list[int],
    budget: int,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(encoder output, last-position logits of the prompt, greedy tokens) from PyTorch eager."""
    features = torch.from_numpy(mel)
    hidden = model.model.encoder(features).last_hidden_state
    ids = torch.tensor([prompt])
    logits = model(encoder_outputs=(hidden,), decoder_input_ids=ids).logits[0, -1]
    settings = {"max_new_tokens": budget, "do_sample": False, "num_beams": 1}
    if config.is_multilingual:
        settings.update(language="en", task="transcribe")
    config = GenerationConfig.from_dict({**config.to_dict(), **settings})
    out = model.generate(features, generation_config=config)
    tokens = out[0].tolist()
    tokens = tokens[len(prompt) :] if tokens[: len(prompt)] == prompt else tokens
    return hidden[0].numpy(), logits.numpy(), tokens


def validate_whisper(
    bundle_dir: str | Path,
    reference: str,
    clips: Sequence[tuple[str, np.ndarray]],
    *,
    max_tokens: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ValidationReport:
    """Compare ``bundle_dir`` with ``reference`` (``tiny`` or the checkpoint folder it came from).

    ``clips`` are ``(name, float32 mono samples at 16 kHz)``, each at most 30 s. ``max_tokens``
    defaults to ``max_length`` minus the prompt. Returns the report; raises only for unusable
    inputs (call ``report.raise_for_failure()`` for the verdict).
    """
    if not clips:
        raise VerificationError("no audio to validate with; pass at least one clip")
    session = WhisperSession(bundle_dir)
    for name, samples in clips:
        if len(samples) > session.n_samples:
            raise VerificationError(f"{name} is longer than one 30 s window; cut it first")
    gen = json.loads((Path(bundle_dir) / "generation_config.json").read_text(encoding="utf-8"))
    config = GenerationConfig.from_dict(gen)
    mels = [session.features(np.asarray(s, dtype=np.float32)) for _, s in clips]
    prompt = session.prompt()
    budget = max_tokens or session.max_length - len(prompt)

    model, description = build_model(resolve_source(reference))
    if model.config.vocab_size != session.config.get("vocab_size"):
        raise VerificationError(
            f"the bundle's vocab_size is {session.config.get('vocab_size')} but the reference "
            f"has {model.config.vocab_size}; validate against the model it was exported from"
        )
    refs = []
    for (name, _), mel in zip(clips, mels, strict=True):
        logger.info("PyTorch reference for %s", name)
        refs.append(_reference(model, config, mel, prompt, budget))
    del model
    gc.collect()

    results = []
    for (name, samples), mel, (ref_hidden, ref_logits, ref_tokens) in zip(
        clips, mels, refs, strict=True
    ):
        logger.info("ONNX Runtime for %s", name)
        problems: list[str] = []
        hidden = session.encode(mel)
        enc_diff = max_diff(hidden[0], ref_hidden)
        if enc_diff > tolerance * max(1.0, float(np.abs(ref_hidden).max())):
            problems.append(f"encoder output differs by {enc_diff:.3g} (tolerance {tolerance:g})")
        logits, _ = session.decode(prompt, hidden, None)
        logits_diff = max_diff(logits, ref_logits)
        if logits_diff > tolerance * max(1.0, float(np.abs(ref_logits).max())):
            problems.append(
                f"first-call logits differ by {logits_diff:.3g} (tolerance {tolerance:g})"
            )
        tokens, _ = session.generate(hidden, prompt, budget)
        body = tokens[:-1] if tokens and tokens[-1] == session.eos else tokens
        mismatch = first_mismatch(body, ref_tokens)
        if mismatch is not None:
            got = body[mismatch] if mismatch < len(body) else "end"
            want = ref_tokens[mismatch] if mismatch < len(ref_tokens) else "end"
            problems.append(
                f"greedy tokens differ at position {mismatch}: ONNX {got}, PyTorch {want}"
            )
        results.append(
            ClipResult(
                name=name,
                seconds=len(samples) / session.sample_rate,
                frames=int(mel.shape[-1]),
                audio_tokens=int(hidden.shape[1]),
                encoder_max_abs=enc_diff,
                logits_max_abs=logits_diff,
                onnx_tokens=list(body),
                torch_tokens=list(ref_tokens),
                first_mismatch=mismatch,
                problems=problems,
            )
        )
    return ValidationReport(str(bundle_dir), description, tolerance, results)
