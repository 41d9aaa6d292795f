"""The ``fusions`` pipeline on the tiny Qwen3-ASR: coverage counts, I/O, --verify-each, tokens."""

import io
from collections import Counter
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from qgraph.bundle import Bundle, signature
from qgraph.cli import main
from qgraph.examples import example_audio
from qgraph.runtime import AsrSession

# 2 encoder layers + projector; 2 decoder layers of 4 RMSNorms each + the final norm; q/k/v of
# every layer and gate/up of every decoder layer share one MatMul.
STATS = {
    "fuse-rms-norm": {"fused": 18},
    "fuse-skip-rms-norm": {"fused": 8},
    "fuse-skip-layer-norm": {"fused": 3},
    "fuse-gelu": {"fused": 6},
    "fuse-bias-gelu": {"fused": 3},
    "fuse-rotary-embedding": {"fused": 8},
    "fuse-gqa": {"fused": 4, "skipped:mask is not causal": 2},
    "fuse-mha": {"fused": 2},
    "fuse-sibling-matmuls": {"fused": 10},
}
DECODER_OPS = {
    "SimplifiedLayerNormalization": 5,
    "SkipSimplifiedLayerNormalization": 4,
    "RotaryEmbedding": 4,
    "GroupQueryAttention": 2,
    "Softmax": 0,
}
OPS = {
    "encoder": {
        "SkipLayerNormalization": 3,
        "LayerNormalization": 2,
        "BiasGelu": 3,
        "Gelu": 3,
        "MultiHeadAttention": 2,
        "Erf": 0,
        "Softmax": 0,
    },
    "decoder_init": DECODER_OPS,
    "decoder_step": DECODER_OPS,
}


@pytest.fixture(scope="module")
def compiled(tiny_clean: Path) -> tuple[Path, str]:
    """The hygiene'd tiny bundle compiled with ``fusions --verify-each``, and the CLI's output."""
    out = tiny_clean.parent / "fused"
    argv = ["compile", str(tiny_clean), "-o", str(out), "--passes", "fusions", "--verify-each"]
    with redirect_stdout(io.StringIO()) as printed:
        assert main([*argv, "--force"]) == 0
    return out, printed.getvalue()


@pytest.fixture(scope="module")
def fused(compiled: tuple[Path, str]) -> Path:
    return compiled[0]


def test_coverage_counts(fused):
    bundle = Bundle.load(fused)
    assert {h["pass"]: h["stats"] for h in bundle.history if h["pass"] in STATS} == STATS
    for name, expected in OPS.items():
        ops = Counter(n.op_type for n in bundle.components[name].graph)
        assert {op: ops[op] for op in expected} == expected, name


def test_component_io_unchanged(tiny_raw, fused):
    raw, out = Bundle.load(tiny_raw), Bundle.load(fused)
    for name, model in raw.components.items():
        before, after = signature(model), signature(out.components[name])
        assert (before["inputs"], before["outputs"]) == (after["inputs"], after["outputs"])


def test_verify_each_passes(compiled):
    """Every pass's declared tolerance holds on every component it changed."""
    verified = [line.strip() for line in compiled[1].splitlines() if "verify " in line]
    assert len(verified) >= 15 and all(line.endswith(": ok") for line in verified), verified


def test_greedy_tokens_and_logits_match_raw(tiny_raw, fused):
    raw, out = AsrSession(tiny_raw), AsrSession(fused)
    audio = example_audio()
    expected, got = raw.transcribe(audio), out.transcribe(audio)
    assert got.token_ids == expected.token_ids and len(got.token_ids) > 10
    features = raw.encode(raw.features(raw.read_audio(audio)))
    np.testing.assert_allclose(out.encode(out.features(out.read_audio(audio))), features, atol=1e-4)
    prompt, offset = raw.prompt(int(features.shape[1]))
    logits, keys, values = raw.prefill(prompt, features, offset)
    logits2, keys2, values2 = out.prefill(prompt, features, offset)
    np.testing.assert_allclose(logits2, logits, atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(keys2, keys, atol=1e-4, rtol=1e-3)
    step = raw.step(expected.token_ids[0], len(prompt), keys, values)
    step2 = out.step(expected.token_ids[0], len(prompt), keys, values)
    for a, b in zip(step2, step, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-3)
