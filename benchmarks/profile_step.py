"""Where the time of a decode step and a prefill goes: an ONNX Runtime profile, attributed.

Each bundle loads in qgraph's runtime with ONNX Runtime's profiler on (the merged decoder
session); the script runs a warm-up and 3 prefills on ``--audio-seconds`` of the built-in
speech, then 2 warm-up and ``--steps`` steps at ``--past`` past tokens (``fixed_step``, as
``qgraph bench`` times it), and reads the profile back. Per run (``model_run`` event),
kernel time is summed by group (the If node that holds both decoder branches is not counted:
its branch nodes are); ``dispatch gaps`` is the run's time not spent in any kernel (ORT's
executor between nodes); ``Python`` is the wall time of the runtime call minus the run
(binding, embedding lookup, numpy).

    python benchmarks/profile_step.py NAME=DIR [NAME=DIR ...] [--past 100] [--steps 20]
                                      [--threads N] [--out profile_step]

Writes ``benchmarks/results/<out>.{json,md}``: medians per step in ms and shares.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import qgraph.runtime.qwen3 as qwen3
from qgraph.runtime.bench import bench_audio
from qgraph.runtime.ort import session_options

RESULTS = Path(__file__).parent / "results"

GROUPS = {
    "MatMulNBits": "MatMulNBits",
    "MatMul": "MatMul (fp32)",
    "Gemm": "MatMul (fp32)",
    "MatMulInteger": "MatMul (int8)",
    "DynamicQuantizeLinear": "MatMul (int8)",
    "GroupQueryAttention": "attention",
    "MultiHeadAttention": "attention",
    "Softmax": "attention",
    "RotaryEmbedding": "rotary",
    "SimplifiedLayerNormalization": "norms",
    "SkipSimplifiedLayerNormalization": "norms",
    "LayerNormalization": "norms",
    "SkipLayerNormalization": "norms",
    "Concat": "KV copies / shapes",
    "Split": "KV copies / shapes",
    "Gather": "KV copies / shapes",
    "Slice": "KV copies / shapes",
    "Squeeze": "KV copies / shapes",
    "Unsqueeze": "KV copies / shapes",
    "Reshape": "KV copies / shapes",
    "Transpose": "KV copies / shapes",
    "Expand": "KV copies / shapes",
    "Shape": "KV copies / shapes",
    "Cast": "KV copies / shapes",
    "ReduceMax": "KV copies / shapes",
}
ORDER = [
    "MatMulNBits",
    "MatMul (fp32)",
    "MatMul (int8)",
    "attention",
    "KV copies / shapes",
    "norms",
    "rotary",
    "elementwise / other",
    "dispatch gaps",
    "Python",
]


def profiled_options(prefix: str):
    def options(threads, optimization, **kwargs):
        o = session_options(threads, optimization, **kwargs)
        o.enable_profiling = True
        o.profile_file_prefix = prefix
        return o

    return options


def write_json(out: Path, args: argparse.Namespace, load_before: tuple, results: dict) -> tuple:
    """``out.json``: the arguments, the load average around the run and the results; returns
    the load average after."""
    load_after = os.getloadavg()
    record = {
        "args": vars(args),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "results": results,
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return load_after


def attribute(events: list[dict]) -> list[dict[str, float]]:
    """Per model_run (chronological): ms per group, from the profile's events."""
    runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
        key=lambda e: e["ts"],
    )
    nodes = [
        e
        for e in events
        if e.get("cat") == "Node"
        and str(e.get("name", "")).endswith("_kernel_time")
        and e.get("args", {}).get("op_name") != "If"
    ]
    out = []
    for run in runs:
        lo, hi = run["ts"], run["ts"] + run["dur"]
        groups: dict[str, float] = defaultdict(float)
        for e in nodes:
            if lo <= e["ts"] <= hi:
                op = e["args"].get("op_name", "")
                groups[GROUPS.get(op, "elementwise / other")] += e["dur"] / 1000.0
        groups["dispatch gaps"] = run["dur"] / 1000.0 - sum(groups.values())
        groups["run"] = run["dur"] / 1000.0
        out.append(dict(groups))
    return out


def profile(bundle: Path, past: int, steps: int, seconds: float, threads: int | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        original = qwen3.session_options
        qwen3.session_options = profiled_options(str(Path(tmp) / "ort"))
        try:
            session = qwen3.AsrSession(bundle, threads=threads)
        finally:
            qwen3.session_options = original
        samples = bench_audio(seconds, session.sample_rate)
        features = session.encode(session.features(samples))
        prompt = session.prompt_for(features)
        walls = []
        for _ in range(4):  # the first prefill warms up
            start = time.perf_counter()
            session.prefill(prompt.ids, features, prompt.offset)
            walls.append(time.perf_counter() - start)
        step = session.fixed_step(past, features, prompt)
        for _ in range(steps + 2):
            start = time.perf_counter()
            step()
            walls.append(time.perf_counter() - start)
        path = session.decoder_step.session.end_profiling()
        events = json.loads(Path(path).read_text())
    runs = attribute(events)
    if len(runs) != len(walls):
        raise SystemExit(f"{bundle}: {len(runs)} profiled runs for {len(walls)} calls")
    for run, wall in zip(runs, walls, strict=True):
        run["Python"] = wall * 1000.0 - run["run"]
        run["wall"] = wall * 1000.0

    def median(rows: list[dict]) -> dict[str, float]:
        keys = {k for r in rows for k in r}
        return {k: statistics.median(r.get(k, 0.0) for r in rows) for k in keys}

    return {
        "prefill": median(runs[1:4]),
        "step": median(runs[6:]),
        "prompt_length": len(prompt.ids),
    }


def table(name: str, phase: str, row: dict[str, float]) -> list[str]:
    total = sum(row.get(g, 0.0) for g in ORDER)
    cells = [f"{row.get(g, 0.0):.2f} ({100 * row.get(g, 0.0) / total:.0f} %)" for g in ORDER]
    return [f"| {name} | {phase} | {row['wall']:.2f} | {total:.2f} | " + " | ".join(cells) + " |"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", metavar="NAME=DIR")
    ap.add_argument("--past", type=int, default=100)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--audio-seconds", type=float, default=11.0)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", default="profile_step")
    args = ap.parse_args()

    load_before = os.getloadavg()
    results = {}
    for spec in args.bundles:
        name, _, folder = spec.partition("=")
        results[name] = profile(
            Path(folder), args.past, args.steps, args.audio_seconds, args.threads
        )
        print(name, {k: round(v, 2) for k, v in results[name]["step"].items()}, flush=True)
    out = RESULTS / args.out
    load_after = write_json(out, args, load_before, results)
    lines = [
        "# Profile of the decode step and the prefill (ONNX Runtime profiler, attributed)",
        "",
        f"`python benchmarks/profile_step.py {' '.join(args.bundles)} --past {args.past} "
        f"--steps {args.steps} --audio-seconds {args.audio_seconds}`",
        "",
        f"Medians over {args.steps} steps at {args.past} past tokens (prefill: 3 runs after a "
        f"warm-up), per group; `sum` is the sum of the group medians and the shares are of it "
        f"(`wall` is the median wall time of the call). Profiling adds overhead to every node; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        f"({os.cpu_count()} CPUs, shared machine).",
        "",
        "| bundle | phase | wall ms | sum ms | " + " | ".join(ORDER) + " |",
        "|---|---|---|---|" + "---|" * len(ORDER),
    ]
    for name, r in results.items():
        lines += table(name, "step", r["step"]) + table(name, "prefill", r["prefill"])
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
