"""Decode throughput vs batch size: tokens/s of batched steps on a ``static-kv-cache`` bundle.

The utterances are ``--utterances`` cuts of the built-in speech (lengths spread from 2 s to
``--audio-seconds``), encoded and prefilled once each; ``greedy_batch`` then decodes them
``B`` at a time with exactly ``--steps`` steps per batch (EOS ignored, so every batch size
does the same token work). Per batch size: the median batched step (ms), decode tokens/s
(``B`` / step), and the whole run's tokens/s including prefills. Batch sizes alternate within
each round (``--rounds``); medians over rounds. Every batch size is checked against batch 1
(``identical``; ``rows equal``: utterances whose tokens equal batch 1's) and against the
smallest batched size (``same as batch 2``: ONNX Runtime's MatMulNBits takes a different
kernel for one row than for several, see ``benchmarks/results/perf.md``).

    python benchmarks/batch.py BUNDLE [--sizes 1,2,4,8] [--steps 30] [--utterances 8]
                                      [--audio-seconds 11] [--rounds 3] [--threads N]

Writes ``benchmarks/results/<out>.{json,md}`` (default ``batch``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from qgraph.runtime.batch import greedy_batch
from qgraph.runtime.bench import bench_audio
from qgraph.runtime.qwen3 import AsrSession
from qgraph.runtime.session import Timings

RESULTS = Path(__file__).parent / "results"


def run(session: AsrSession, jobs: list, size: int) -> tuple[list[list[int]], dict]:
    tokens, steps, prefill = [], [], 0.0
    start = time.perf_counter()
    for lo in range(0, len(jobs), size):
        timings = Timings()
        out = greedy_batch(session, jobs[lo : lo + size], stop_on_eos=False, timings=timings)
        tokens += [t for t, _ in out]
        steps += timings.step_s
        prefill += timings.prefill_s
    total = time.perf_counter() - start
    step_ms = 1000.0 * statistics.median(steps)
    n_tokens = sum(len(t) for t in tokens)
    return tokens, {
        "step_ms": step_ms,
        "decode_tokens_per_s": size * 1000.0 / step_ms,
        "run_tokens_per_s": n_tokens / total,
        "prefill_s": prefill,
        "total_s": total,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--sizes", default="1,2,4,8")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--utterances", type=int, default=8)
    ap.add_argument("--audio-seconds", type=float, default=11.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", default="batch")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    load_before = os.getloadavg()
    session = AsrSession(args.bundle, threads=args.threads)
    lengths = np.linspace(2.0, args.audio_seconds, args.utterances)
    jobs = []
    for seconds in lengths:
        features = session.encode(session.features(bench_audio(float(seconds))))
        jobs.append((features, session.prompt_for(features), args.steps + 1))
    reference, _ = run(session, jobs, 1)
    batched = min((s for s in sizes if s > 1), default=1)
    reference_batched, _ = run(session, jobs, batched)
    runs: dict[int, list[dict]] = {s: [] for s in sizes}
    identical = {s: True for s in sizes}
    same_batched = {s: True for s in sizes}
    rows_equal = {s: len(jobs) for s in sizes}
    for _ in range(args.rounds):
        for size in sizes:
            tokens, stats = run(session, jobs, size)
            identical[size] &= tokens == reference
            same_batched[size] &= tokens == reference_batched
            equal = sum(a == b for a, b in zip(tokens, reference, strict=True))
            rows_equal[size] = min(rows_equal[size], equal)
            runs[size].append(stats)
    load_after = os.getloadavg()
    rows = []
    for size in sizes:
        row = {
            "batch": size,
            "identical": identical[size],
            "rows_equal": rows_equal[size],
            f"same_as_batch_{batched}": same_batched[size],
        }
        row.update({k: statistics.median(r[k] for r in runs[size]) for k in runs[size][0]})
        rows.append(row)
    base = rows[0]["decode_tokens_per_s"]
    for row in rows:
        row["speedup"] = row["decode_tokens_per_s"] / base
        print(row, flush=True)

    out = RESULTS / args.out
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "args": vars(args),
                "audio_seconds": [float(x) for x in lengths],
                "load_average_before": load_before,
                "load_average_after": load_after,
                "rows": rows,
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    lines = [
        "# Decode throughput vs batch size (static KV cache, batched steps)",
        "",
        f"`python benchmarks/batch.py {args.bundle} --sizes {args.sizes} --steps {args.steps} "
        f"--utterances {args.utterances} --audio-seconds {args.audio_seconds} "
        f"--rounds {args.rounds}`",
        "",
        f"{args.utterances} utterances of {lengths[0]:.1f}-{lengths[-1]:.1f} s, {args.steps} "
        f"steps each (EOS ignored); medians over {args.rounds} alternating rounds; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after ({os.cpu_count()} CPUs, "
        f"shared). `identical`: the same tokens as batch 1 for every utterance; `rows equal`: "
        f"utterances whose tokens equal batch 1's (fewest over rounds); `same as batch "
        f"{batched}`: the same tokens as batch {batched} for every utterance.",
        "",
        "| batch | step ms | decode tokens/s | vs batch 1 | run tokens/s (incl. prefill) "
        f"| identical | rows equal | same as batch {batched} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['step_ms']:.2f} | {r['decode_tokens_per_s']:.1f} | "
            f"{r['speedup']:.2f}x | {r['run_tokens_per_s']:.1f} | {r['identical']} | "
            f"{r['rows_equal']}/{len(jobs)} | {r[f'same_as_batch_{batched}']} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
