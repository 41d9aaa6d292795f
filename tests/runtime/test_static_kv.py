"""The static KV-cache layout (``static-kv-cache``) at run time: token-exact with the stacked
layout, buffers updated in place through I/O binding, merged or as two sessions."""

import numpy as np

from qgraph.examples import example_audio
from qgraph.runtime import AsrSession


def decode(session: AsrSession, steps: int) -> tuple[list[int], list[np.ndarray]]:
    """Greedy tokens and every step's logits on the built-in speech."""
    samples = session.read_audio(example_audio())
    features = session.encode(session.features(samples))
    prompt, offset = session.prompt(int(features.shape[1]))
    logits, keys, values = session.prefill(prompt, features, offset)
    tokens, all_logits = [int(np.argmax(logits))], [np.array(logits)]
    for i in range(steps):
        logits, keys, values = session.step(tokens[-1], len(prompt) + i, keys, values)
        tokens.append(int(np.argmax(logits)))
        all_logits.append(np.array(logits))
    return tokens, all_logits


def test_token_exact_with_the_stacked_layout(tiny_static_bundles):
    ref_tokens, ref_logits = decode(AsrSession(tiny_static_bundles["default"]), 40)
    for name in ("static", "fixed"):
        for share in (True, False):
            session = AsrSession(tiny_static_bundles[name], share_weights=share)
            assert session.static_kv is not None and session.merged_decoders == share
            tokens, logits = decode(session, 40)
            assert tokens == ref_tokens, (name, share)
            np.testing.assert_allclose(np.stack(logits), np.stack(ref_logits), atol=1e-4)


def test_transcribe_and_capacity(tiny_static_bundles):
    ref = AsrSession(tiny_static_bundles["default"]).transcribe(example_audio(), max_tokens=30)
    grown = AsrSession(tiny_static_bundles["static"])
    assert grown.capacity is None
    assert grown.transcribe(example_audio(), max_tokens=30).token_ids == ref.token_ids
    assert grown.static_kv.capacity >= ref.prompt_length + 30
    fixed = AsrSession(tiny_static_bundles["fixed"])
    assert fixed.capacity == 128
    out = fixed.transcribe(example_audio(), max_tokens=200)
    assert out.finish_reason == "cache_full"
    assert out.prompt_length + len(out.token_ids) - 1 == 128
    assert out.token_ids[:30] == ref.token_ids[:30]


def test_buffers_are_updated_in_place(tiny_static_bundles):
    session = AsrSession(tiny_static_bundles["static"])
    keys, values = session.random_past(10)
    buffer = session.static_kv.buffers["past_key_values.1.key"]
    before = buffer.copy()
    session.step(5, 10, keys, values)
    assert session.static_kv.buffers["past_key_values.1.key"] is buffer
    np.testing.assert_array_equal(buffer[:, :, :10], before[:, :, :10])
    assert np.any(buffer[:, :, 10] != before[:, :, 10])
    np.testing.assert_array_equal(buffer[:, :, 11:], before[:, :, 11:])


def test_bench_runs_on_the_static_layout(tiny_static_bundles):
    from qgraph.runtime.bench import run_bench

    result = run_bench(
        tiny_static_bundles["static"], audio_seconds=2.0, steps=3, repeat=1, past_tokens=20
    )
    assert result.decoder_step_ms > 0 and result.decoder_sessions == 1


def test_batched_decoding_matches_batch_one(tiny_static_bundles):
    from qgraph.runtime.batch import transcribe_many
    from qgraph.runtime.bench import bench_audio

    session = AsrSession(tiny_static_bundles["static"])
    audios = [bench_audio(s) for s in (2.0, 3.3, 1.2, 2.6, 4.0)]
    reference = [session.transcribe(a, max_tokens=25).token_ids for a in audios]
    for size in (1, 2, 4):
        out = transcribe_many(session, audios, batch_size=size, max_tokens=25)
        assert [t.token_ids for t in out] == reference, size
        assert all(t.prompt_length > 0 and t.timings.step_s for t in out)


def test_batched_steps_share_one_cache_with_rows_at_their_own_positions(tiny_static_bundles):
    from qgraph.runtime.batch import greedy_batch

    session = AsrSession(tiny_static_bundles["static"])
    samples = session.read_audio(example_audio())
    features = session.encode(session.features(samples))
    prompt = session.prompt_for(features)
    short = session.prompt_for(features[:, :20])
    jobs = [(features, prompt, 12), (features[:, :20], short, 5)]
    out = greedy_batch(session, jobs, stop_on_eos=False)
    alone = [greedy_batch(session, [job], stop_on_eos=False)[0] for job in jobs]
    assert out == alone
    assert [len(t) for t, _ in out] == [12, 5] and {r for _, r in out} == {"max_tokens"}


def test_cli_batch(tiny_static_bundles, capsys):
    from qgraph.cli import main

    audio = str(example_audio())
    argv = [
        "transcribe",
        str(tiny_static_bundles["static"]),
        audio,
        audio,
        "--batch",
        "2",
        "--max-tokens",
        "4",
    ]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0] == lines[1] and lines[0].startswith(audio + "\t")
    assert main(["transcribe", str(tiny_static_bundles["default"]), audio, "--batch", "2"]) != 0


def test_prepacked_weights_cache(tiny_static_bundles, tmp_path):
    ref = (
        AsrSession(tiny_static_bundles["static"])
        .transcribe(example_audio(), max_tokens=20)
        .token_ids
    )
    for _ in range(2):  # the first load writes the cache, the second maps it
        session = AsrSession(tiny_static_bundles["static"], prepack_dir=tmp_path)
        assert session.transcribe(example_audio(), max_tokens=20).token_ids == ref
    assert len([p for p in tmp_path.iterdir() if (p / "model.data").is_file()]) == 2
    # the stacked layout's decoder packs at load (only its encoder is cached)
    AsrSession(tiny_static_bundles["default"], prepack_dir=tmp_path / "stacked")
    assert len(list((tmp_path / "stacked").iterdir())) == 1
