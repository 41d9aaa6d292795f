"""Export time and peak memory of the Qwen3-ASR exporter at real model sizes.

Each model is exported in a fresh subprocess (``--child``) that reports its own peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``, exact) and the exporter's phase times (taken from its
log lines: build, trace of each component, write). The parent also samples the child's RSS with
psutil to record the steady level and checks the bundle on disk (files, sizes, ONNX Runtime not
involved). Results go to ``benchmarks/results/export_scale.json`` and ``.md``.

    python benchmarks/export_scale.py                       # random-0.6b
    python benchmarks/export_scale.py random-0.6b random-1.7b tiny
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

RESULTS = Path(__file__).resolve().parent / "results"
GB = 1024**3


def child(model: str, out: Path, opset: int) -> None:
    """Export ``model`` in this process; print one JSON line with timings and peak RSS."""
    from qgraph.export.qwen3_asr import export_qwen3_asr  # noqa: TID251 - benchmark of it

    events: list[tuple[float, str]] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            events.append((time.perf_counter(), record.getMessage()))

    log = logging.getLogger("qgraph.export")
    log.addHandler(Recorder())
    log.setLevel(logging.INFO)
    start = time.perf_counter()
    export_qwen3_asr(model, out, opset=opset, overwrite=True)
    total = time.perf_counter() - start
    marks = [(t - start, msg) for t, msg in events]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"total_s": total, "peak_rss_bytes": peak, "events": marks}))


def phases(events: list[list[Any]]) -> dict[str, float]:
    """Seconds per phase from the exporter's log lines (build, trace:NAME, write)."""
    out: dict[str, float] = {}
    for i, (t, msg) in enumerate(events):
        if msg.startswith("exporting "):
            out["build_s"] = t
        elif msg.startswith("[") and " traced in " in msg:
            name = msg.split("] ", 1)[1].split(" traced in ")[0]
            out[f"trace_{name}_s"] = float(msg.rsplit(" in ", 1)[1].split()[0])
        elif msg.startswith("wrote "):
            previous = next(tt for tt, m in reversed(events[:i]) if m.startswith("writing "))
            out["write_s"] = t - previous
    return out


def measure(model: str, work: Path, opset: int) -> dict[str, Any]:
    out = work / f"bundle-{model}"
    cmd = [sys.executable, __file__, "--child", model, "--out", str(out), "--opset", str(opset)]
    load_before = os.getloadavg()[0]
    log_path = work / f"{model}.log"
    with open(log_path, "w") as log, tempfile.TemporaryFile("w+") as stdout:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=log, text=True)
        ps = psutil.Process(proc.pid)
        sampled = 0
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                sampled = max(sampled, ps.memory_info().rss)
            time.sleep(0.2)
        stdout.seek(0)
        lines = stdout.read().strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"export of {model} failed:\n{log_path.read_text()[-3000:]}")
    report = json.loads(lines[-1])
    manifest = json.loads((out / "qgraph.json").read_text())
    sizes = {name: info["bytes"] for name, info in manifest["files"].items()}
    result = {
        "model": model,
        "opset": opset,
        "total_s": round(report["total_s"], 1),
        **{k: round(v, 1) for k, v in phases(report["events"]).items()},
        "peak_rss_gb": round(report["peak_rss_bytes"] / GB, 2),
        "sampled_peak_rss_gb": round(sampled / GB, 2),
        "bundle_gb": round(sum(sizes.values()) / GB, 2),
        "weights_gb": {k: round(v / GB, 3) for k, v in sizes.items() if k.endswith(".data")},
        "nodes": {name: c["nodes"] for name, c in manifest["components"].items()},
        "load_avg_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }
    shutil.rmtree(out, ignore_errors=True)
    return result


def write_results(results: list[dict[str, Any]]) -> None:
    import torch
    import transformers

    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / GB, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "export_scale.json"
    if path.exists():  # keep earlier rows for other models / opsets
        fresh = {(r["model"], r["opset"]) for r in results}
        old = json.loads(path.read_text()).get("results", [])
        results = [r for r in old if (r["model"], r["opset"]) not in fresh] + results
    data = {"machine": meta, "results": results}
    path.write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        "# Export scale: `qgraph export qwen3-asr` (raw FP32, dynamo, optimize=False)",
        "",
        f"{meta['date']}, {meta['cpus']} CPUs, {meta['ram_gb']} GB RAM, torch {meta['torch']}, "
        f"transformers {meta['transformers']}. Each export runs in a fresh process; peak RSS is "
        "that process's `ru_maxrss`. Weights are random with the real shapes. The VM is shared "
        "with other jobs: `load` is the 1-minute load average before/after the run (2 = both "
        "cores busy), so times above it are upper bounds.",
        "",
        "| model | opset | total s | build s | encoder s | decoder_init s | decoder_step s "
        "| write s | peak RSS GB | bundle GB | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['opset']} | {r['total_s']} | {r.get('build_s', '')} "
            f"| {r.get('trace_encoder_s', '')} | {r.get('trace_decoder_init_s', '')} "
            f"| {r.get('trace_decoder_step_s', '')} | {r.get('write_s', '')} "
            f"| {r['peak_rss_gb']} | {r['bundle_gb']} "
            f"| {'/'.join(str(x) for x in r.get('load_avg_1m', []))} |"
        )
    (RESULTS / "export_scale.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["random-0.6b"], help="built-in model names")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--work-dir", type=Path, help="where bundles are written (then deleted)")
    parser.add_argument("--child", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.out, args.opset)
        return
    work = Path(tempfile.mkdtemp(prefix="qgraph-export-scale-", dir=args.work_dir))
    try:
        results = []
        for model in args.models:
            print(f"exporting {model} ...", flush=True)
            results.append(measure(model, work, args.opset))
            print(json.dumps(results[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_results(results)
    print(f"wrote {RESULTS / 'export_scale.json'} and .md")


if __name__ == "__main__":
    main()
