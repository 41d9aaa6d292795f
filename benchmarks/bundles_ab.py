"""Side-by-side ``qgraph bench`` of several bundles: alternating fresh processes, medians.

Every round runs ``qgraph bench`` once per bundle, in the order given, each in its own process
(11 s of the built-in speech, prefill, exactly ``--steps`` decode steps; ``--repeat`` measured
rounds per process after a warm-up), so all bundles see the same machine conditions. Each
metric is the median over rounds of the per-process medians; peak RSS is the process's
``ru_maxrss``. Any layout ``qgraph bench`` reads works (qwen3-asr, its sherpa-onnx layout).

    python benchmarks/bundles_ab.py NAME=DIR NAME=DIR ... [--rounds 3] [--out results/x]

writes ``OUT.json`` (every run) and ``OUT.md`` (a table; ratios against the first bundle).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

KEYS = (
    ("end_to_end_ms", "end to end, 11 s audio + 30 steps (ms)"),
    ("encoder_ms", "encoder (ms)"),
    ("decoder_init_ms", "prefill (ms)"),
    ("decode_step_e2e_ms", "decode step during the run (ms)"),
    ("decoder_step_ms", "decode step at 100 past tokens (ms)"),
    ("floor_ms", "its memory-bandwidth floor, measured in the same process (ms)"),
    ("peak_rss_mb", "peak RSS (MiB)"),
    ("rss_after_load_mb", "RSS after load (MiB)"),
    ("load_s", "load (s)"),
)


def bench_once(
    bundle: Path, out: Path, steps: int, repeat: int, threads: int, extra: list[str]
) -> dict:
    """One ``qgraph bench`` process (``extra``: more of its options); its JSON result."""
    cmd = [
        sys.executable,
        "-m",
        "qgraph",
        "bench",
        str(bundle),
        "--audio-seconds",
        "11",
        "--steps",
        str(steps),
        "--repeat",
        str(repeat),
        "--threads",
        str(threads),
        "--json",
        str(out),
        *extra,
    ]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    result = json.loads(out.read_text())
    if result.get("floor_ms") is None:  # no step graph whose floor bench could measure
        result["floor_ms"] = float("nan")
    return result


def alternate(
    bundles: dict[str, Path],
    rounds: int,
    scratch: Path,
    steps: int = 30,
    repeat: int = 3,
    threads: int = 2,
    options: dict[str, list[str]] | None = None,
) -> dict:
    """``{"summary": {name: {metric: median}}, "bytes": {name: size}, "runs": ...}``;
    ``options[name]``: extra ``qgraph bench`` options for that bundle."""
    options = options or {}
    loadavg_before = os.getloadavg()
    scratch.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {name: [] for name in bundles}
    for i in range(rounds):
        for name, folder in bundles.items():
            out = scratch / f"{name}-{i}.json"
            extra = options.get(name, [])
            runs[name].append(bench_once(folder, out, steps, repeat, threads, extra))
    summary = {
        name: {k: statistics.median(r[k] for r in rs) for k, _ in KEYS} for name, rs in runs.items()
    }
    sizes = {
        name: sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        for name, folder in bundles.items()
    }
    return {
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "load_average": {"before": loadavg_before, "after": os.getloadavg()},
        "rounds": rounds,
        "steps": steps,
        "repeat": repeat,
        "threads": threads,
        "options": options,
        "summary": summary,
        "bytes": sizes,
        "runs": runs,
    }


def markdown(result: dict, labels: dict[str, str] | None = None) -> str:
    """A table of the medians, each bundle's ratio to the first."""
    names = list(result["summary"])
    labels = labels or {}
    base = names[0]
    head = " | ".join(labels.get(n, n) for n in names)
    ratio_head = " | ".join(f"{labels.get(n, n)} / {labels.get(base, base)}" for n in names[1:])
    lines = [
        f"| median of {result['rounds']} alternating runs | {head} | {ratio_head} |",
        "|---|" + "---|" * (2 * len(names) - 1),
    ]
    rows = [(k, label, result["summary"]) for k, label in KEYS]
    for key, label, summary in rows:
        values = [summary[n][key] for n in names]
        ratios = [v / values[0] if values[0] else float("nan") for v in values[1:]]
        lines.append(
            f"| {label} | "
            + " | ".join(f"{v:.1f}" for v in values)
            + " | "
            + " | ".join(f"{r:.2f}" for r in ratios)
            + " |"
        )
    sizes = [result["bytes"][n] / 1e9 for n in names]
    lines.append(
        "| bundle size (GB) | "
        + " | ".join(f"{s:.2f}" for s in sizes)
        + " | "
        + " | ".join(f"{s / sizes[0]:.2f}" for s in sizes[1:])
        + " |"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("bundles", nargs="+", metavar="NAME=DIR", help="bundles to compare")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: 3)")
    ap.add_argument("--steps", type=int, default=30, help="decode steps per run (default: 30)")
    ap.add_argument("--repeat", type=int, default=3, help="measured rounds per process")
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads (default: 2)")
    ap.add_argument("--out", type=Path, default=RESULTS / "bundles_ab", help="OUT.{json,md}")
    args = ap.parse_args(argv)
    bundles = {}
    for spec in args.bundles:
        name, sep, folder = spec.partition("=")
        if not sep or not Path(folder).is_dir():
            ap.error(f"expected NAME=DIR with an existing DIR, got {spec!r}")
        bundles[name] = Path(folder)
    result = alternate(
        bundles,
        args.rounds,
        args.out.parent / f"{args.out.name}-runs",
        args.steps,
        args.repeat,
        args.threads,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
