"""Decode-step time vs past length: the stacked (dynamic) KV cache vs ``static-kv-cache``.

Both bundles load once in this process (qgraph's runtime, merged decoder session). For each
past length, a random cache of that many positions is set up and ``--steps`` steps are timed
(after 3 warm-up steps), alternating dynamic / static within each round; the table holds the
median over ``--rounds`` rounds of each round's median. The static buffers are reserved once
for the longest past, so the static layout runs every length on the same buffers, as a long
transcript would. Writes ``benchmarks/results/<out>.{json,md,svg}`` (the SVG plots step ms vs
past length).

    python benchmarks/kv_cache.py --dynamic DIR --static DIR [--past 16,64,256,1024]
                                  [--steps 20] [--rounds 3] [--threads N] [--out kv_cache]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from qgraph.runtime.qwen3 import AsrSession

RESULTS = Path(__file__).parent / "results"


def step_ms(session: AsrSession, past: int, steps: int) -> float:
    keys, values = session.random_past(past)
    times = []
    for i in range(steps + 3):
        start = time.perf_counter()
        session.step(1, past, keys, values)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def svg(rows: list[dict], path: Path) -> None:
    """A small line plot: step ms vs past length, one line per layout."""
    w, h, pad = 480, 300, 50
    xs = [r["past"] for r in rows]
    top = max(max(r["dynamic_ms"], r["static_ms"]) for r in rows) * 1.1

    def point(x: float, y: float) -> str:
        px = pad + (w - 2 * pad) * (xs.index(x) / max(len(xs) - 1, 1))
        py = h - pad - (h - 2 * pad) * (y / top)
        return f"{px:.1f},{py:.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-size="11">',
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
        f'<text x="{w / 2 - 40}" y="{h - 15}">past tokens</text>',
        f'<text x="5" y="{pad - 10}">step ms (max {top / 1.1:.2f})</text>',
    ]
    for x in xs:
        px = point(x, 0).split(",")[0]
        parts.append(f'<text x="{float(px) - 10}" y="{h - pad + 15}">{x}</text>')
    for key, color in (("dynamic_ms", "#c0392b"), ("static_ms", "#2471a3")):
        pts = " ".join(point(r["past"], r[key]) for r in rows)
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
        label_y = pad + (15 if key == "dynamic_ms" else 30)
        parts.append(f'<text x="{w - pad - 90}" y="{label_y}" fill="{color}">{key[:-3]}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dynamic", type=Path, required=True)
    ap.add_argument("--static", type=Path, required=True)
    ap.add_argument("--past", default="16,64,256,1024")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", default="kv_cache")
    args = ap.parse_args()
    pasts = [int(p) for p in args.past.split(",")]

    load_before = os.getloadavg()
    dynamic = AsrSession(args.dynamic, threads=args.threads)
    static = AsrSession(args.static, threads=args.threads)
    if static.static_kv is None or dynamic.static_kv is not None:
        raise SystemExit("--static must be a static-kv-cache bundle, --dynamic a stacked one")
    if static.static_kv.fixed is None:
        static.static_kv.reserve(max(pasts) + 1)
    rows = []
    for past in pasts:
        runs: dict[str, list[float]] = {"dynamic": [], "static": []}
        for _ in range(args.rounds):
            runs["dynamic"].append(step_ms(dynamic, past, args.steps))
            runs["static"].append(step_ms(static, past, args.steps))
        row = {"past": past, **{f"{k}_ms": statistics.median(v) for k, v in runs.items()}}
        row["ratio"] = row["static_ms"] / row["dynamic_ms"]
        rows.append(row)
        print(row, flush=True)
    load_after = os.getloadavg()

    out = RESULTS / args.out
    result = {
        "dynamic": str(args.dynamic),
        "static": str(args.static),
        "static_capacity": static.static_kv.capacity,
        "threads": args.threads,
        "steps": args.steps,
        "rounds": args.rounds,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "rows": rows,
    }
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    svg(rows, out.with_suffix(".svg"))
    lines = [
        "# Decode step vs past length: stacked (dynamic) vs static KV cache",
        "",
        f"`python benchmarks/kv_cache.py --dynamic {args.dynamic} --static {args.static} "
        f"--past {args.past} --steps {args.steps} --rounds {args.rounds}"
        + (f" --threads {args.threads}`" if args.threads else "`"),
        "",
        f"Median over {args.rounds} alternating rounds of each round's median of {args.steps} "
        f"steps; static buffers of {static.static_kv.capacity} positions for every length; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        f"({os.cpu_count()} CPUs, shared). Plot: `{out.name}.svg`.",
        "",
        "| past tokens | dynamic step ms | static step ms | static / dynamic |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['past']} | {r['dynamic_ms']:.2f} | {r['static_ms']:.2f} | {r['ratio']:.2f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
