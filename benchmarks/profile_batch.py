"""Where a batched decode step's time goes, per batch size: an ONNX Runtime profile, attributed.

The bundles (``static-kv-cache`` ones) load side by side in qgraph's runtime with ONNX
Runtime's profiler on; for each batch size a ``StaticKvCache`` of that many rows
(``qgraph.runtime.batch``) holds ``--past`` random past positions per row, and a step is what
``greedy_batch`` does per step: the embedding lookup of ``B`` tokens, the bound run, and one
argmax per row. Batch sizes and bundles alternate within each round (``--rounds``, ``--steps``
steps each after 2 warm-ups), so a change of machine load hits every cell alike. Kernel time is
summed per group as in ``profile_step.py``, with the MatMuls (MatMulNBits,
DynamicQuantizeMatMul, ...) split into the decoder layers and ``lm_head`` (the last one);
``dispatch gaps`` is the run's time outside any kernel; ``Python`` is the call's wall time
minus the run (lookup, argmax, binding). The table gives medians per step and each group's
growth over batch 1.

    python benchmarks/profile_batch.py NAME=DIR [NAME=DIR ...] [--sizes 1,2,4,8] [--past 100]
                                       [--steps 10] [--rounds 2] [--threads N]
                                       [--out profile_batch]

Writes ``benchmarks/results/<out>.{json,md}``.
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

import numpy as np
from profile_step import GROUPS, profiled_options, write_json

import qgraph.runtime.qwen3 as qwen3
from qgraph.runtime.batch import _cache

RESULTS = Path(__file__).parent / "results"

ORDER = [
    "MatMul (layers)",
    "MatMul (lm_head)",
    "attention",
    "KV copies / shapes",
    "norms",
    "rotary",
    "elementwise / other",
    "dispatch gaps",
    "Python",
]


MATMULS = {"MatMulNBits", "DynamicQuantizeMatMul", "MatMulInteger", "MatMul", "Gemm"}


def lm_head_node(bundle: Path) -> str:
    """Name of the step's last MatMul-kind node (the vocabulary projection)."""
    import onnx

    model = onnx.load(str(bundle / "decoder_step.onnx"), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in MATMULS][-1]


def attribute(events: list[dict], lm_head: str) -> list[dict[str, float]]:
    runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
        key=lambda e: e["ts"],
    )
    nodes = sorted(
        (
            e
            for e in events
            if e.get("cat") == "Node"
            and str(e.get("name", "")).endswith("_kernel_time")
            and e.get("args", {}).get("op_name") != "If"
        ),
        key=lambda e: e["ts"],
    )
    out, i = [], 0
    for run in runs:
        lo, hi = run["ts"], run["ts"] + run["dur"]
        groups: dict[str, float] = defaultdict(float)
        while i < len(nodes) and nodes[i]["ts"] < lo:
            i += 1
        while i < len(nodes) and nodes[i]["ts"] <= hi:
            e = nodes[i]
            op = e["args"].get("op_name", "")
            group = GROUPS.get(op, "elementwise / other")
            if op in MATMULS:
                lm = e["name"].removesuffix("_kernel_time").split("/")[-1] == lm_head
                group = "MatMul (lm_head)" if lm else "MatMul (layers)"
            groups[group] += e["dur"] / 1000.0
            i += 1
        groups["dispatch gaps"] = run["dur"] / 1000.0 - sum(groups.values())
        groups["run"] = run["dur"] / 1000.0
        out.append(dict(groups))
    return out


class Profiled:
    """One bundle loaded with the profiler on, a cache per batch size, and its timed calls."""

    def __init__(self, bundle: Path, sizes: list[int], past: int, threads: int | None, tmp: str):
        self.bundle = bundle
        original = qwen3.session_options
        qwen3.session_options = profiled_options(str(Path(tmp) / bundle.name))
        try:
            self.session = qwen3.AsrSession(bundle, threads=threads)
        finally:
            qwen3.session_options = original
        self.caches = {}
        for size in sizes:
            self.caches[size] = _cache(self.session, size)
            self.caches[size].fill_random(past)
        self.past = past
        self.calls: list[tuple[int, bool, float]] = []
        self.rng = np.random.default_rng(0)

    def run(self, size: int, steps: int) -> None:
        """2 warm-up steps and ``steps`` timed ones at batch ``size``."""
        cache, session = self.caches[size], self.session
        positions = np.full((size, 1), self.past, np.int64)
        for k in range(steps + 2):
            ids = self.rng.integers(0, 150000, (size, 1))
            start = time.perf_counter()
            token = session.embed_table.lookup(ids) if session.embed_table else ids
            logits = cache.step(token, positions)
            _ = [int(np.argmax(logits[r, -1])) for r in range(size)]
            self.calls.append((size, k >= 2, time.perf_counter() - start))

    def collect(self) -> dict[int, dict[str, float]]:
        path = self.session.decoder_step.session.end_profiling()
        events = json.loads(Path(path).read_text())
        runs = attribute(events, lm_head_node(self.bundle))
        if len(runs) != len(self.calls):
            raise SystemExit(f"{self.bundle}: {len(runs)} profiled runs, {len(self.calls)} calls")
        per: dict[int, list[dict[str, float]]] = {s: [] for s in self.caches}
        for run, (size, kept, wall) in zip(runs, self.calls, strict=True):
            if kept:
                row = {**run, "Python": wall * 1000.0 - run["run"], "wall": wall * 1000.0}
                per[size].append(row)
        out = {}
        for size, rows in per.items():
            keys = {k for r in rows for k in r}
            out[size] = {k: statistics.median(r.get(k, 0.0) for r in rows) for k in keys}
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", metavar="NAME=DIR")
    ap.add_argument("--sizes", default="1,2,4,8")
    ap.add_argument("--past", type=int, default=100)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", default="profile_batch")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    load_before = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        loaded = {}
        for spec in args.bundles:
            name, _, folder = spec.partition("=")
            loaded[name] = Profiled(Path(folder), sizes, args.past, args.threads, tmp)
        for _ in range(args.rounds):
            for size in sizes:
                for profiled in loaded.values():
                    profiled.run(size, args.steps)
        for name, profiled in loaded.items():
            results[name] = profiled.collect()
            for size, row in results[name].items():
                print(name, size, {k: round(v, 2) for k, v in sorted(row.items())}, flush=True)
    out = RESULTS / args.out
    load_after = write_json(out, args, load_before, results)
    lines = [
        "# Profile of a batched decode step per batch size (ONNX Runtime profiler, attributed)",
        "",
        f"`python benchmarks/profile_batch.py {' '.join(args.bundles)} --sizes {args.sizes} "
        f"--past {args.past} --steps {args.steps} --rounds {args.rounds}`",
        "",
        f"Medians over {args.rounds} alternating rounds of {args.steps} steps at {args.past} past "
        "tokens per row; ms per step per group, and in brackets the group's time over its batch "
        "1 time. `tokens/s`: batch / wall. Profiling adds overhead to every node; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after ({os.cpu_count()} CPUs, "
        "shared machine).",
        "",
        "| bundle | batch | wall ms | tokens/s | vs batch 1 | " + " | ".join(ORDER) + " |",
        "|---|---|---|---|---|" + "---|" * len(ORDER),
    ]
    for name, rows in results.items():
        base = rows[sizes[0]]
        for size in sizes:
            r = rows[size]
            tps = size * 1000.0 / r["wall"]
            speed = tps / (sizes[0] * 1000.0 / base["wall"])
            cells = [
                f"{r.get(g, 0.0):.2f} ({r.get(g, 0.0) / max(base.get(g, 0.0), 1e-9):.1f}x)"
                for g in ORDER
            ]
            lines.append(
                f"| {name} | {size} | {r['wall']:.2f} | {tps:.1f} | {speed:.2f}x | "
                + " | ".join(cells)
                + " |"
            )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
