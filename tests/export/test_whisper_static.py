"""``static-kv-cache`` on Whisper's merged decoder, and the runtime on the static layout.

The pass on the tiny random bundle compiled with ``fp32`` (self-attention fused into
MultiHeadAttention in the cached branch and GroupQueryAttention in the prompt branch): numerics
of both branches against the dynamic layout (buffers holding the past, positions continuing
it), the four pass properties, the cases where it must not fire. The runtime: greedy decoding
through the bound buffers is token-exact with the default layout, logits within 1e-4; on the
real tiny.en with espeak-ng speech when the wheel is installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from qgraph.bundle import Bundle  # noqa: E402
from qgraph.errors import RuntimeInputError  # noqa: E402
from qgraph.instruments import verify  # noqa: E402
from qgraph.passes.static_kv_cache import StaticKvCache  # noqa: E402
from qgraph.runtime.audio import load_audio  # noqa: E402
from qgraph.runtime.whisper import WhisperSession  # noqa: E402
from qgraph.testing import check_pass  # noqa: E402
from tests.export.whisper_bundles import (  # noqa: E402
    SENTENCES,
    compiled,
    espeak,
    real_whisper,
    tiny_whisper,
)

MAX_LEN = 32
DECODER = "decoder_model_merged"


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_whisper(tmp_path_factory)


@pytest.fixture(scope="module")
def fp32(raw: Path) -> Path:
    return compiled(raw, "whisper-tiny-fp32", "fp32")


@pytest.fixture(scope="module")
def static(fp32: Path) -> Path:
    return compiled(fp32, "whisper-tiny-static", "static-kv-cache,remove-unused")


def _feeds(model, use_cache: bool, past: int, new: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Dynamic-layout feeds of batch 1: ``past`` cached tokens (``new`` after them)."""
    rng = np.random.default_rng(seed)
    feeds = {
        "input_ids": rng.integers(0, 200, (1, new)),
        "encoder_hidden_states": rng.standard_normal((1, 11, 64)).astype(np.float32),
        "use_cache_branch": np.asarray([use_cache]),
    }
    for v in model.graph.inputs:
        if v.name.startswith("past_key_values."):
            length = past if ".decoder." in v.name else (11 if use_cache else 0)
            feeds[v.name] = rng.standard_normal((1, v.shape[1], length, v.shape[3]))
            feeds[v.name] = feeds[v.name].astype(np.float32)
    return feeds


@pytest.mark.parametrize(("use_cache", "past", "new"), [(True, 7, 1), (False, 0, 3), (True, 5, 3)])
def test_both_branches_match_the_dynamic_layout(fp32: Path, use_cache, past, new) -> None:
    bundle = Bundle.load(fp32)
    model = bundle.components[DECODER]
    before = Bundle.load(fp32).components[DECODER]
    feeds = _feeds(model, use_cache, past, new)
    reference = verify.run_model(before, feeds)
    p = StaticKvCache(max_len=MAX_LEN)
    assert p(model).modified
    run = p.adapt_feeds(DECODER, feeds, bundle)
    assert run["position_ids"].tolist() == [list(range(past, past + new))]
    after = verify.run_model(model, run)
    assert not verify.compare(p.adapt_reference(DECODER, reference), after, p.tolerance)
    for name, value in after.items():
        if ".decoder." in name:  # the past stays, the new tokens land after it, zeros beyond
            assert value.shape == (1, 4, MAX_LEN, 16)
            if use_cache:
                np.testing.assert_array_equal(
                    value[:, :, :past], run[name.replace("present", "past_key_values")][:, :, :past]
                )
            assert np.any(value[:, :, past + new - 1]) and not np.any(value[:, :, past + new :])
    np.testing.assert_allclose(after["logits"], reference["logits"], atol=1e-5)


def test_layout_and_idempotence(fp32: Path) -> None:
    bundle = Bundle.load(fp32)
    model = bundle.components[DECODER]
    p = StaticKvCache()
    assert p(model).modified and p.stats == {"layers": 2}
    names = [v.name for v in model.graph.inputs]
    assert names[:3] == ["input_ids", "position_ids", "encoder_hidden_states"]
    shape = [str(d) for d in model.graph.inputs[3].shape]
    assert names[3] == "past_key_values.0.decoder.key"
    assert shape == ["batch_size", "4", "max_len", "16"]
    assert [str(d) for d in model.graph.outputs[1].shape] == shape  # present.0.decoder.key
    cross = next(v for v in model.graph.inputs if v.name == "past_key_values.0.encoder.key")
    assert str(cross.shape[2]) == "encoder_sequence_length"
    branches = [
        a.as_graph() for a in next(n for n in model.graph if n.op_type == "If").attributes.values()
    ]
    for branch in branches:  # self-attention: GQA on the buffers; cross-attention: MHA as was
        kinds = [n.op_type for n in branch]
        assert kinds.count("GroupQueryAttention") == 2 and kinds.count("MultiHeadAttention") == 2
        readers = {
            n.op_type
            for n in branch
            if any(i is not None and i.name.startswith("past_key_values.") for i in n.inputs)
        }
        assert "Concat" not in readers and "Shape" not in readers
    cached = next(b for b in branches if b.name == "with_past")
    cross = [n for n in cached if n.op_type == "MultiHeadAttention"]
    assert [n.inputs[1].name for n in cross] == [  # fuse-mha: the stored BNSH cache, no copy
        f"past_key_values.{i}.encoder.key" for i in range(2)
    ]
    p.reset_stats()
    assert not p(model).modified and p.stats == {"skipped:already static": 1}


def _in_memory(bundle: Path, component: str):
    """A component with its weights in memory (``check_pass`` copies the model)."""
    model = ir.load(bundle / "onnx" / f"{component}.onnx")
    return ir.external_data.load_to_model(model)


def test_does_not_fire_on_the_encoder(fp32: Path) -> None:
    check = check_pass(StaticKvCache(), _in_memory(fp32, "encoder_model"), expect_modified=False)
    assert check.stats == {"skipped:no GroupQueryAttention": 1}


def test_does_not_fire_without_fused_attention(raw: Path) -> None:
    model = _in_memory(raw, DECODER)
    check = check_pass(
        StaticKvCache(), model, expect_modified=False, dims={"past_decoder_sequence_length": 3}
    )
    assert check.stats == {"skipped:cached self-attention is not one MultiHeadAttention": 1}


def test_does_not_fire_twice(static: Path) -> None:
    model = _in_memory(static, DECODER)
    check = check_pass(StaticKvCache(), model, expect_modified=False, dims={"max_len": 8})
    assert check.stats == {"skipped:already static": 1}


# -- the runtime ----------------------------------------------------------------------------
def _greedy_logits(session: WhisperSession, hidden, prompt: list[int], steps: int):
    logits, state = session.start(prompt, hidden, steps)
    out = [logits]
    for _ in range(steps - 1):
        logits, state = session.advance(int(np.argmax(out[-1])), state)
        out.append(logits)
    return np.stack(out)


def test_greedy_decode_is_token_exact(fp32: Path, static: Path) -> None:
    from qgraph.examples import example_audio

    dynamic, bound = WhisperSession(fp32), WhisperSession(static)
    assert dynamic.static_kv is None and bound.static_kv is not None
    hidden = dynamic.encode(dynamic.features(load_audio(example_audio())))
    prompt = dynamic.prompt()
    a = _greedy_logits(dynamic, hidden, prompt, 40)
    b = _greedy_logits(bound, hidden, prompt, 40)
    assert len(set(np.argmax(a, axis=1).tolist())) > 3, "the tiny model should not repeat one token"
    np.testing.assert_array_equal(np.argmax(a, axis=1), np.argmax(b, axis=1))
    np.testing.assert_allclose(a, b, atol=1e-4)
    samples = load_audio(example_audio())
    assert (
        bound.transcribe(samples, max_tokens=40).token_ids
        == dynamic.transcribe(samples, max_tokens=40).token_ids
    )
    with pytest.raises(RuntimeInputError, match="start"):
        bound.decode(prompt, hidden, None)


def test_buffers_are_bound_once_and_updated_in_place(static: Path) -> None:
    session = WhisperSession(static)
    hidden = session.encode(session.features(np.zeros(16000, np.float32)))
    kv = session.static_kv
    _, state = session.start(session.prompt(), hidden, 10)
    buffers = {n: b.__array_interface__["data"][0] for n, b in kv.buffers.items()}
    for token in (5, 6, 7):
        _, state = session.advance(token, state)
    assert {n: b.__array_interface__["data"][0] for n, b in kv.buffers.items()} == buffers
    key = kv.buffers["past_key_values.1.decoder.key"]
    assert np.any(key[:, :, state - 1]) and not np.any(key[:, :, state:])
    assert kv.capacity == 64  # prompt + budget, rounded up to the growth step


def test_fixed_capacity(fp32: Path, tmp_path: Path) -> None:
    out = compiled(fp32, "whisper-tiny-static-48", "static-kv-cache{max_len=48},remove-unused")
    session = WhisperSession(out)
    assert session.static_kv.fixed == 48
    hidden = session.encode(session.features(np.zeros(16000, np.float32)))
    tokens, _ = session.generate(hidden, session.prompt(), 40, stop_on_eos=False)
    reference, _ = WhisperSession(fp32).generate(hidden, session.prompt(), 40, stop_on_eos=False)
    assert tokens == reference
    with pytest.raises(RuntimeInputError, match="holds 48 positions"):
        session.generate(hidden, session.prompt(), 47)


def test_real_tiny_en_transcripts_equal(tmp_path_factory: pytest.TempPathFactory) -> None:
    """tiny.en (real weights), espeak-ng sentences: the same tokens in both layouts."""
    raw = real_whisper(tmp_path_factory)
    fp32 = compiled(raw, "whisper-tiny-en-fp32", "fp32")
    static = compiled(fp32, "whisper-tiny-en-static", "static-kv-cache,remove-unused")
    dynamic, bound = WhisperSession(fp32), WhisperSession(static)
    tmp = tmp_path_factory.mktemp("speech")
    clips = [espeak(text, tmp / f"s{i}.wav") for i, text in enumerate(SENTENCES[:2])]
    if any(c is None for c in clips):
        pytest.skip("espeak-ng is not installed")
    for samples in clips:
        a, b = dynamic.transcribe(samples), bound.transcribe(samples)
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason == "eos"
        assert len(b.text.split()) >= 5
