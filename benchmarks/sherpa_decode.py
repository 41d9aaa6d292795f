"""Decode speed of the sherpa-onnx layout in sherpa-onnx vs qgraph's default layout in qgraph.

At the Qwen3-ASR-0.6B shapes (``random-0.6b``; random weights change no timing), on the same
11 s of built-in speech, with the same number of ONNX Runtime threads:

- ``qgraph``: ``qgraph export qwen3-asr`` compiled with ``--qgraph-pipeline`` (default ``fp32``:
  hygiene, fusions, the release layout in FP32), decoded by ``qgraph.runtime.AsrSession`` as
  ``qgraph bench`` does (its default ``share_weights=True``: decoder_init and decoder_step in
  one merged session, one pre-packed copy of the weights);
- ``qgraph-two-sessions``: the same with ``share_weights=False`` (two decoder sessions, each with
  its own pre-packed copy);
- ``sherpa-onnx``: ``export_sherpa`` compiled with ``--sherpa-pipeline`` (default hygiene,
  fusions, untied lm_head), decoded by ``sherpa_onnx.OfflineRecognizer.from_qwen3_asr``;
- ``ort-default-step`` / ``ort-sherpa-step``: each layout's decode-step graph alone in a plain
  ORT session on a random cache of ``PAST_TOKENS`` tokens: the layouts without their runtimes.

Each round decodes once with 1 and once with ``1 + steps`` new tokens (sherpa-onnx: the
``max_new_tokens`` stream option); a decode step is the difference over the extra tokens in
process CPU time (robust when other processes share the cores) and, for sherpa-onnx, which
reports no per-call timings, in wall time; qgraph's wall-time steps are its own per-call times.
Also reported: log-mel, audio to first token, end to end, session load, peak RSS.

Every export, compile and timing runs in a fresh process (one model in memory at a time); the
configurations alternate ``--passes`` times so that load from other processes hits them alike.
Bundles already under ``--work`` are reused. Results: ``--out`` ``.json`` and ``.md``::

    python benchmarks/sherpa_decode.py --work /tmp/sherpa-bench [--model random-0.6b]
        [--threads 2] [--steps 30] [--repeat 2] [--passes 3] [--out results/sherpa_decode]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

AUDIO_SECONDS = 11.0
PAST_TOKENS = 158
"""Cached tokens at the first decode step of the 11 s clip (prompt with 143 audio tokens)."""


# -- children (each runs in its own process) -----------------------------------------------------
def child_build(layout: str, model: str, pipeline: str, out: str, max_total_len: int) -> dict:
    """Export ``model`` in ``layout`` and compile it with ``pipeline`` into ``out``."""
    from qgraph.bundle import Bundle
    from qgraph.manager import run_pipeline
    from qgraph.pipeline import expand
    from qgraph.registry import default_registry

    raw = Path(out + ".raw")
    t0 = time.perf_counter()
    if layout == "sherpa":
        from qgraph.export.qwen3_asr.sherpa import export_sherpa

        export_sherpa(model, raw, max_total_len=max_total_len, overwrite=True)
    else:
        from qgraph.export.qwen3_asr import export_qwen3_asr

        export_qwen3_asr(model, raw, overwrite=True)
    t1 = time.perf_counter()
    bundle = Bundle.load(raw)
    run_pipeline(bundle, expand(pipeline, default_registry()))
    bundle.save(out, overwrite=True)
    shutil.rmtree(raw)
    return {"export_s": t1 - t0, "compile_s": time.perf_counter() - t1}


def child_qgraph(bundle: str, threads: int, steps: int, repeat: int, share: bool) -> dict:
    """Decodes with ``AsrSession`` (its public phases, as ``qgraph bench`` times them)."""
    from qgraph.runtime import AsrSession
    from qgraph.runtime.bench import bench_audio, peak_rss_bytes
    from qgraph.runtime.session import Timings

    t0 = time.perf_counter()
    session = AsrSession(bundle, threads=threads, share_weights=share)
    load_s = time.perf_counter() - t0
    audio = bench_audio(AUDIO_SECONDS)

    def decode(new_tokens: int) -> dict:
        timings = Timings(audio_s=AUDIO_SECONDS)
        t, c = time.perf_counter(), time.process_time()
        mel = session.features(audio)
        mel_s = time.perf_counter() - t
        features = session.encode(mel)
        ids, offset = session.prompt(int(features.shape[1]))
        out, _ = session.generate(
            features, ids, offset, new_tokens, stop_on_eos=False, timings=timings
        )
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        return {"mel": mel_s, "wall": wall, "cpu": cpu, "made": len(out), "steps": timings.step_s}

    return _rounds(decode, steps, repeat, load_s, peak_rss_bytes)


def child_sherpa(bundle: str, threads: int, steps: int, repeat: int, max_total_len: int) -> dict:
    """Whole decodes in sherpa-onnx (it reports no per-call timings)."""
    import sherpa_onnx

    from qgraph.runtime.bench import bench_audio, peak_rss_bytes

    root = Path(bundle)
    t0 = time.perf_counter()
    recognizer = sherpa_onnx.OfflineRecognizer.from_qwen3_asr(
        conv_frontend=str(root / "conv_frontend.onnx"),
        encoder=str(root / "encoder.onnx"),
        decoder=str(root / "decoder.onnx"),
        tokenizer=str(root),
        num_threads=threads,
        max_total_len=max_total_len,
        max_new_tokens=1 + steps,
    )
    load_s = time.perf_counter() - t0
    audio = bench_audio(AUDIO_SECONDS)

    def decode(new_tokens: int) -> dict:
        stream = recognizer.create_stream()
        stream.set_option("max_new_tokens", str(new_tokens))
        t, c = time.perf_counter(), time.process_time()
        stream.accept_waveform(16000, audio)  # sherpa-onnx's log-mel
        mel_s = time.perf_counter() - t
        recognizer.decode_stream(stream)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        return {"mel": mel_s, "wall": wall, "cpu": cpu, "made": len(stream.result.tokens)}

    return _rounds(decode, steps, repeat, load_s, peak_rss_bytes)


def child_graph(bundle: str, threads: int, steps: int, repeat: int, layout: str) -> dict:
    """The decode-step graph alone in an ORT session (ORT defaults, pre-packing on) at the past
    length of the first decode step of the 11 s clip: the layout without its runtime."""
    import numpy as np
    import onnxruntime as ort

    from qgraph.runtime.bench import peak_rss_bytes

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    root = Path(bundle)
    name = "decoder.onnx" if layout == "sherpa" else "decoder_step.onnx"
    t0 = time.perf_counter()
    session = ort.InferenceSession(str(root / name), options)
    load_s = time.perf_counter() - t0
    inputs = {i.name: i for i in session.get_inputs()}
    rng = np.random.default_rng(0)
    past = PAST_TOKENS
    if layout == "sherpa":
        hidden = inputs["audio_features"].shape[2]
        feeds = {
            "input_ids": np.full((1, 1), 100, np.int64),
            "audio_features": np.zeros((1, 143, hidden), np.float32),
            "attention_mask": np.ones((1, 1), np.int64),
            "cache_position": np.array([past], np.int64),
        }
        for key in list(inputs)[4:]:
            feeds[key] = 0.1 * rng.standard_normal(inputs[key].shape).astype(np.float32)
    else:
        layers, _, kv, _, head_dim = inputs["past_keys"].shape
        cache = (layers, 1, kv, past, head_dim)
        feeds = {
            "position_ids": np.array([[past]], np.int64),
            "past_keys": 0.1 * rng.standard_normal(cache).astype(np.float32),
            "past_values": 0.1 * rng.standard_normal(cache).astype(np.float32),
        }
        if "input_embeds" in inputs:
            hidden = inputs["input_embeds"].shape[2]
            feeds["input_embeds"] = rng.standard_normal((1, 1, hidden)).astype(np.float32)
        else:
            feeds["input_ids"] = np.full((1, 1), 100, np.int64)
    for _ in range(3):
        session.run(None, feeds)
    rounds = []
    for _ in range(repeat):
        walls, cpus = [], []
        for _ in range(steps):
            t, c = time.perf_counter(), time.process_time()
            session.run(None, feeds)
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        rounds.append({"step_wall": walls, "step_cpu": statistics.median(cpus)})
    return {"load_s": load_s, "rounds": rounds, "peak_rss_mb": peak_rss_bytes() / 2**20}


def _rounds(decode, steps: int, repeat: int, load_s: float, peak_rss) -> dict:
    """``repeat`` rounds (after a warm-up) of a decode with 1 and one with ``1 + steps`` tokens.

    A decode step is the difference of the two over the extra tokens, in wall and CPU time
    (the CPU time of the process holds up better when other processes share the cores); where
    the runtime times its steps (``steps`` in the result), their wall times are kept too.
    """
    decode(1)
    rounds: list[dict] = []
    for _ in range(repeat):
        one, full = decode(1), decode(1 + steps)
        extra = max(full["made"] - 1, 1)
        rounds.append(
            {
                "mel": one["mel"],
                "first_token": one["wall"],
                "end_to_end": full["wall"],
                "generated": full["made"],
                "step_wall": full.get("steps") or [(full["wall"] - one["wall"]) / extra],
                "step_cpu": (full["cpu"] - one["cpu"]) / extra,
            }
        )
    return {"load_s": load_s, "rounds": rounds, "peak_rss_mb": peak_rss() / 2**20}


CHILDREN = {
    "build": child_build,
    "qgraph": child_qgraph,
    "sherpa": child_sherpa,
    "graph": child_graph,
}


def run_child(name: str, **kwargs: Any) -> dict:
    cmd = [sys.executable, __file__, "--child", name, json.dumps(kwargs)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- driver --------------------------------------------------------------------------------------
RUNNERS = {
    "qgraph": ("qgraph.runtime.AsrSession", "default layout"),
    "qgraph-two-sessions": ("qgraph.runtime.AsrSession(share_weights=False)", "default layout"),
    "sherpa-onnx": ("sherpa-onnx", "sherpa layout"),
    "ort-default-step": ("ORT, decoder_step alone", "default layout"),
    "ort-sherpa-step": ("ORT, decoder alone", "sherpa layout"),
}
"""What is timed: runtime and bundle of each configuration."""


def summarize(runs: list[dict]) -> dict:
    """Medians (ms) over every round of every run of one configuration."""
    rounds = [r for run in runs for r in run["rounds"]]
    step = statistics.median(x for r in rounds for x in r["step_wall"])
    out = {
        "decode_step_ms": 1000 * step,
        "tokens_per_s": 1 / step,
        "decode_step_cpu_ms": 1000 * statistics.median(r["step_cpu"] for r in rounds),
        "rounds": len(rounds),
        "load_s": statistics.median(run["load_s"] for run in runs),
        "peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
    }
    for key in ("mel", "first_token", "end_to_end"):
        if key in rounds[0]:
            out[f"{key}_ms"] = 1000 * statistics.median(r[key] for r in rounds)
    if "generated" in rounds[0]:
        out["generated_tokens"] = min(r["generated"] for r in rounds)
    return out


def markdown(report: dict) -> str:
    res = report["results"]
    names = list(res)
    head = " | ".join(f"{RUNNERS[n][0]} on the {RUNNERS[n][1]}" for n in names)
    rows = [
        ("decode step during decoding, median (ms)", "decode_step_ms", "{:.1f}"),
        ("decode speed (tokens/s)", "tokens_per_s", "{:.1f}"),
        ("decode step, process CPU time (ms)", "decode_step_cpu_ms", "{:.1f}"),
        ("log-mel of the audio (ms)", "mel_ms", "{:.0f}"),
        ("audio to first token: log-mel, encoder, prefill (ms)", "first_token_ms", "{:.0f}"),
        (f"end to end, 1 + {report['steps']} tokens (ms)", "end_to_end_ms", "{:.0f}"),
        ("session load (s)", "load_s", "{:.1f}"),
        ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
    ]
    lines = [
        f"# Decode speed, sherpa-onnx layout vs default layout: {report['model']}, "
        f"{report['audio_seconds']:.0f} s of speech, ORT intra-op threads: {report['threads']}",
        "",
        f"| | {head} |",
        "|---|" + "---|" * len(names),
        *(
            f"| {label} | "
            + " | ".join(fmt.format(res[n][key]) if key in res[n] else "-" for n in names)
            + " |"
            for label, key, fmt in rows
        ),
        "",
        f"Bundles: default layout compiled with `{report['qgraph_pipeline']}`; sherpa layout "
        f"(max_total_len {report['max_total_len']}) compiled with `{report['sherpa_pipeline']}`. "
        f"sherpa-onnx {report['sherpa_onnx']}, onnxruntime {report['onnxruntime']} for qgraph.",
        f"Medians over {report['passes']} alternating passes x {report['repeat']} rounds "
        f"(after a warm-up) on {report['machine']}. sherpa-onnx reports no per-call timings: its "
        "wall-time decode step is (decode with 1 + steps new tokens - decode with 1) / steps, "
        "its log-mel the time of `accept_waveform`; the CPU-time step is computed that way for "
        "the three runtimes. The ORT rows time the step graph alone (random cache of "
        f"{PAST_TOKENS} tokens): the layouts without their runtimes.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", nargs=2, metavar=("NAME", "JSON"), help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, default=Path("/tmp/sherpa-bench"))
    p.add_argument("--model", default="random-0.6b")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeat", type=int, default=2, help="rounds per process")
    p.add_argument("--passes", type=int, default=3, help="alternating processes per config")
    p.add_argument("--max-total-len", type=int, default=512)
    p.add_argument("--qgraph-pipeline", default="fp32")
    p.add_argument("--sherpa-pipeline", default="sherpa")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results/sherpa_decode")
    args = p.parse_args(argv)
    if args.child:
        name, kwargs = args.child
        print(json.dumps(CHILDREN[name](**json.loads(kwargs))))
        return 0

    import platform

    import onnxruntime
    import sherpa_onnx

    args.work.mkdir(parents=True, exist_ok=True)
    bundles = {"default": args.work / "default", "sherpa": args.work / "sherpa"}
    pipelines = {"default": args.qgraph_pipeline, "sherpa": args.sherpa_pipeline}
    builds = {}
    for layout, folder in bundles.items():
        if (folder / "qgraph.json").is_file():
            continue
        print(f"building {folder} ({args.model}, {pipelines[layout]})", flush=True)
        builds[layout] = run_child(
            "build",
            layout=layout,
            model=args.model,
            pipeline=pipelines[layout],
            out=str(folder),
            max_total_len=args.max_total_len,
        )
    common = {"threads": args.threads, "steps": args.steps, "repeat": args.repeat}
    jobs = {
        "qgraph": ("qgraph", {"bundle": str(bundles["default"]), "share": True}),
        "qgraph-two-sessions": ("qgraph", {"bundle": str(bundles["default"]), "share": False}),
        "sherpa-onnx": (
            "sherpa",
            {"bundle": str(bundles["sherpa"]), "max_total_len": args.max_total_len},
        ),
    }
    for layout in ("default", "sherpa"):
        jobs[f"ort-{layout}-step"] = ("graph", {"bundle": str(bundles[layout]), "layout": layout})
    runs: dict[str, list[dict]] = {name: [] for name in jobs}
    for i in range(args.passes):
        for name, (child, kwargs) in jobs.items():
            print(f"pass {i + 1}/{args.passes}: timing {name}", flush=True)
            runs[name].append(run_child(child, **kwargs, **common))
    report = {
        "model": args.model,
        "audio_seconds": AUDIO_SECONDS,
        "sherpa_onnx": sherpa_onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "qgraph_pipeline": args.qgraph_pipeline,
        "sherpa_pipeline": args.sherpa_pipeline,
        "max_total_len": args.max_total_len,
        "passes": args.passes,
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "builds": builds,
        "results": {name: summarize(rs) for name, rs in runs.items()},
        "runs": runs,
        **common,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
