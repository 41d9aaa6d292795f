"""``qgraph bench BUNDLE``: per-component latency, real-time factor and memory of a bundle."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from qgraph.errors import RuntimeInputError

NAME = "bench"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help="measure latency, real-time factor and memory of a bundle",
        description="Load the bundle with the reference runtime (ONNX Runtime, CPU), run one "
        "warm-up round (not counted) and REPEAT measured rounds. A round transcribes "
        "--audio-seconds of speech end to end with exactly --steps decode steps, then times "
        "--steps decoder_step calls at 100 past tokens. Prints medians per component, the "
        "real-time factor (end-to-end time / audio duration), tokens/s and peak RSS.",
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle folder (raw or compiled)")
    p.add_argument(
        "--audio-seconds",
        type=_positive_float,
        default=11.0,
        metavar="S",
        help="length of the benchmark audio in seconds (default: 11)",
    )
    p.add_argument(
        "--audio",
        type=Path,
        metavar="FILE",
        help="speech to tile or cut to --audio-seconds (default: the built-in example speech)",
    )
    p.add_argument(
        "--steps",
        type=_positive_int,
        default=30,
        metavar="N",
        help="decoder_step calls per round (default: 30)",
    )
    p.add_argument(
        "--repeat",
        type=_positive_int,
        default=5,
        metavar="N",
        help="measured rounds after the warm-up round; medians are reported (default: 5)",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        help="ONNX Runtime intra-op threads (default: ONNX Runtime's choice)",
    )
    p.add_argument(
        "--separate-decoders",
        action="store_true",
        help="qwen3-asr: open decoder_init and decoder_step as two ONNX Runtime sessions, as "
        "most runtimes do (default: one merged session, one pre-packed copy of the weights)",
    )
    p.add_argument(
        "--prepack-dir",
        type=Path,
        metavar="DIR",
        help="qwen3-asr: load pre-packed weights memory-mapped from a per-machine cache in DIR "
        "(written on the first load; the decoder only in the static-kv-cache layout)",
    )
    p.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="also write all results as a JSON object to FILE",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    from qgraph.families import PREFILL, STEP, family_of
    from qgraph.runtime.bench import bench_audio, run_bench

    family = family_of(args.bundle)
    if args.separate_decoders and not {PREFILL, STEP} <= set(family.components.values()):
        raise RuntimeInputError(
            f"--separate-decoders applies to bundles with prefill and step graphs, not to "
            f"{family.name} bundles"
        )

    audio = None
    if args.audio is not None:
        if not args.audio.is_file():
            raise RuntimeInputError(f"audio file not found: {args.audio}")
        audio = bench_audio(args.audio_seconds, source=args.audio)
    result = run_bench(
        args.bundle,
        audio_seconds=args.audio_seconds,
        steps=args.steps,
        repeat=args.repeat,
        threads=args.threads,
        audio=audio,
        share_weights=not args.separate_decoders,
        prepack_dir=args.prepack_dir,
    )

    r = result
    print(f"bundle          {r.bundle}")
    print(
        f"audio           {r.audio_seconds:.2f} s, {r.mel_frames} mel frames, "
        f"{r.audio_tokens} audio tokens, prompt {r.prompt_length} tokens"
    )
    print(f"load            {r.load_s:.2f} s")
    print(f"mel             {r.mel_ms:9.2f} ms")
    print(f"encoder         {r.encoder_ms:9.2f} ms")
    print(f"decoder_init    {r.decoder_init_ms:9.2f} ms")
    print(
        f"decoder_step    {r.decoder_step_ms:9.2f} ms at {r.past_tokens} past tokens "
        f"({r.tokens_per_s:.1f} tokens/s)"
    )
    print(
        f"end to end      {r.end_to_end_ms:9.2f} ms with {r.steps} steps "
        f"({r.decode_step_e2e_ms:.2f} ms/step), RTF {r.rtf:.3f}"
    )
    print(
        f"memory          {r.rss_after_load_mb:.0f} MiB after load, {r.peak_rss_mb:.0f} MiB peak "
        f"({r.decoder_sessions} decoder session{'s' if r.decoder_sessions > 1 else ''})"
    )
    if r.floor_ms is not None:
        print(
            f"step floor      {r.floor_ms:9.2f} ms = ({r.step_weight_mb:.1f} MiB weights + "
            f"{r.step_cache_mb:.1f} MiB cache) / {r.bandwidth_gbs:.1f} GB/s read with "
            f"{r.floor_threads} thread{'s' if r.floor_threads != 1 else ''}: step at "
            f"{r.decoder_step_ms / r.floor_ms:.2f}x the floor"
        )
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        except OSError as err:
            raise RuntimeInputError(f"cannot write {args.json}: {err.strerror or err}") from None
    return 0
