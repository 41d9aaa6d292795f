"""Shared fixtures for the exporter tests: the tiny model, its raw bundle and PyTorch references.

``tiny_bundle`` exports ``--model tiny`` once per session through the CLI; ``tiny_model`` is the
same deterministic PyTorch model; ``sessions`` opens the raw graphs in ONNX Runtime with graph
optimizations off, so the numbers checked are those of the exported graphs themselves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import onnxruntime as ort  # noqa: E402

from qgraph.examples import example_long_audio  # noqa: E402
from qgraph.runtime.audio import load_audio  # noqa: E402

EOS = (151643, 151645)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_raw: Path) -> Path:
    """The session's one tiny export (``tests/conftest.py``)."""
    return tiny_raw


@pytest.fixture(scope="session")
def tiny_model():
    from qgraph.export.qwen3_asr import build_model  # noqa: TID251 - tests of the exporter

    model, _ = build_model("tiny")
    return model


@pytest.fixture(scope="session")
def sessions(tiny_bundle: Path) -> dict[str, ort.InferenceSession]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return {
        name: ort.InferenceSession(str(tiny_bundle / f"{name}.onnx"), options)
        for name in ("encoder", "decoder_init", "decoder_step")
    }


@pytest.fixture(scope="session")
def speech() -> np.ndarray:
    """~12 s of synthesised speech at 16 kHz."""
    return load_audio(example_long_audio())


@pytest.fixture(scope="session")
def make_clip(speech: np.ndarray):
    """``make_clip(seconds)``: that much audio, the speech repeated as often as needed."""

    def make(seconds: float) -> np.ndarray:
        n = int(round(seconds * 16000))
        return np.tile(speech, -(-n // speech.size))[:n]

    return make


class HFReference:
    """The native transformers model, fed like ``Qwen3ASRProcessor`` feeds it."""

    def __init__(self, model) -> None:
        self.model = model

    @staticmethod
    def inputs(mel: np.ndarray) -> tuple:
        """Padded ``input_features`` and ``input_features_mask`` for one ``[128, T]`` mel."""
        frames = mel.shape[1]
        padded = np.pad(mel, ((0, 0), (0, (100 - frames % 100) % 100)))
        mask = torch.zeros(1, padded.shape[1], dtype=torch.long)
        mask[:, :frames] = 1
        return torch.from_numpy(padded)[None], mask

    def audio_features(self, mel: np.ndarray) -> np.ndarray:
        feats, mask = self.inputs(mel)
        with torch.no_grad():
            return self.model.get_audio_features(feats, mask).pooler_output.numpy()

    def greedy(self, mel: np.ndarray, prompt: list[int], max_new: int) -> tuple[np.ndarray, list]:
        """(last-position prefill logits, ``generate(do_sample=False)`` tokens)."""
        feats, mask = self.inputs(mel)
        ids = torch.tensor([prompt])
        kwargs = {
            "input_ids": ids,
            "input_features": feats,
            "input_features_mask": mask,
            "attention_mask": torch.ones_like(ids),
        }
        with torch.no_grad():
            logits = self.model(**kwargs).logits[0, -1].numpy()
            out = self.model.generate(
                **kwargs,
                max_new_tokens=max_new,
                do_sample=False,
                eos_token_id=list(EOS),
                pad_token_id=EOS[0],
            )
        return logits, out[0, len(prompt) :].tolist()


@pytest.fixture(scope="session")
def reference(tiny_model) -> HFReference:
    return HFReference(tiny_model)
