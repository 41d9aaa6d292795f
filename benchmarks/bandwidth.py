"""This machine's memory read bandwidth with 1 and 2 threads, and the decode-step floors.

The floor of a decode step is the bytes it must read (the step graph's weights once, plus the
KV cache it attends over) divided by the read bandwidth (``qgraph.runtime.floor``). Bandwidth
is measured two ways, each the best of several passes over a 512 MiB buffer: a numpy reduction
split over the threads, and ONNX Runtime's ReduceSum with that many intra-op threads. The load
average before and after is recorded: on a shared machine other processes take bandwidth too.

    python benchmarks/bandwidth.py [--bundle NAME=DIR ...] [--past 100] [--rounds 3]

Writes ``benchmarks/results/bandwidth.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from qgraph.runtime.floor import floor_ms, read_bandwidth, step_bytes

RESULTS = Path(__file__).parent / "results"


def step_path(bundle: Path) -> Path:
    for name in ("decoder_step.onnx", "onnx/decoder_model_merged.onnx", "decoder.onnx"):
        if (bundle / name).is_file():
            return bundle / name
    raise SystemExit(f"{bundle}: no step graph")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", action="append", default=[], metavar="NAME=DIR")
    ap.add_argument("--past", type=int, default=100, help="past tokens for the cache bytes")
    ap.add_argument("--rounds", type=int, default=3, help="measurements per thread count")
    ap.add_argument("--out", type=Path, default=RESULTS / "bandwidth")
    args = ap.parse_args()

    load_before = os.getloadavg()
    bandwidth: dict[int, dict[str, float]] = {}
    for threads in (1, 2):
        runs = [read_bandwidth(threads) for _ in range(args.rounds)]
        bandwidth[threads] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    load_after = os.getloadavg()

    floors = []
    for spec in args.bundle:
        name, _, folder = spec.partition("=")
        read = step_bytes(step_path(Path(folder)), args.past)
        floors.append(
            {
                "bundle": name,
                "path": folder,
                "weights_mb": read.weights / 2**20,
                "cache_mb": read.cache / 2**20,
                **{f"floor_ms_{t}t": floor_ms(read, bandwidth[t]["best"]) for t in (1, 2)},
            }
        )
    result = {
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "bandwidth_gbs": {
            t: {k: v / 1e9 for k, v in rates.items()} for t, rates in bandwidth.items()
        },
        "past_tokens": args.past,
        "floors": floors,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Read bandwidth and decode-step floors",
        "",
        f"`python benchmarks/bandwidth.py {' '.join('--bundle ' + b for b in args.bundle)}`"
        f" (median of {args.rounds} measurements, each the best of 5 passes over 512 MiB; "
        f"{os.cpu_count()} CPUs; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after: a shared machine, so these are lower bounds).",
        "",
        "| threads | numpy GB/s | onnxruntime GB/s | best GB/s |",
        "|---|---|---|---|",
    ]
    for t, rates in bandwidth.items():
        g = {k: v / 1e9 for k, v in rates.items()}
        lines.append(f"| {t} | {g['numpy']:.1f} | {g['onnxruntime']:.1f} | {g['best']:.1f} |")
    if floors:
        lines += [
            "",
            f"Floor of one decode step at {args.past} past tokens = (step weights + cache) / "
            "best bandwidth:",
            "",
            "| bundle | weights MiB | cache MiB | floor ms, 1 thread | floor ms, 2 threads |",
            "|---|---|---|---|---|",
        ]
        for f in floors:
            lines.append(
                f"| {f['bundle']} | {f['weights_mb']:.1f} | {f['cache_mb']:.1f} | "
                f"{f['floor_ms_1t']:.2f} | {f['floor_ms_2t']:.2f} |"
            )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
