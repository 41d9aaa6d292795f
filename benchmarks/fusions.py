"""Fusion benchmark at Qwen3-ASR-0.6B shapes: raw vs our fusions vs ORT's transformers optimizer.

Three variants of the same random-weight ``random-0.6b`` export, each component timed in ONNX
Runtime (CPU, ``ORT_ENABLE_ALL`` as the reference runtime uses it, ``--threads`` intra-op):

- ``raw``: the export after ``hygiene`` (what every other variant starts from);
- ``ours``: ``hygiene`` then the ``fusions`` pipeline (the graph part of ``fp32``; the layout
  passes that change the I/O are left out so every variant runs on identical inputs);
- ``ort``: the public tool's approach on the same graph,
  ``onnxruntime.transformers.optimizer.optimize_model(path, model_type="gpt2", opt_level=1,
  num_heads, hidden_size)``, one component per subprocess (it peaks near 15 GB on a decoder).

Workloads: encoder on 11 s of audio (mel T=1100), decoder_init on the matching prompt (~158
tokens), decoder_step with 100 past tokens. Only one session is alive at a time: each round loads
raw, ours and ort in turn (rotating the order), warms up, times ``--runs`` calls and frees the
session; the medians over all rounds are compared. Outputs are checked against raw (max abs diff).

    python benchmarks/fusions.py                   # export, compile, optimize, time (~25 min)
    python benchmarks/fusions.py --raw RAW --work W --rounds 5

Writes ``benchmarks/results/fusions.json`` and ``fusions.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COMPONENTS = ("encoder", "decoder_init", "decoder_step")
VARIANTS = ("raw", "ours", "ort")
FUSED_OPS = (
    "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "SkipLayerNormalization",
    "LayerNormalization",
    "Gelu",
    "BiasGelu",
    "FastGelu",
    "RotaryEmbedding",
    "GroupQueryAttention",
    "MultiHeadAttention",
    "Attention",
)
PAST_TOKENS = 100
AUDIO_SECONDS = 11.0
log = logging.getLogger("fusions")


def run(*argv: str) -> None:
    log.info("$ %s", " ".join(argv))
    subprocess.run(argv, check=True)


def qgraph(*argv: str) -> None:
    run(sys.executable, "-m", "qgraph.cli", *argv)


# -- preparing the three variants -----------------------------------------------------------------
def prepare(raw: Path | None, work: Path) -> dict[str, Path]:
    work.mkdir(parents=True, exist_ok=True)
    if raw is None:
        raw = work / "export"
        if not (raw / "qgraph.json").exists():
            qgraph("export", "qwen3-asr", "--model", "random-0.6b", "-o", str(raw), "--force")
    dirs = {v: work / v for v in VARIANTS}
    if not (dirs["raw"] / "qgraph.json").exists():
        qgraph("compile", str(raw), "-o", str(dirs["raw"]), "--passes", "hygiene", "--force")
    if not (dirs["ours"] / "qgraph.json").exists():
        argv = ("compile", str(dirs["raw"]), "-o", str(dirs["ours"]), "--passes", "fusions")
        qgraph(*argv, "--stats", "--force")
    return dirs


def ort_child(component: str, src: Path, dst: Path) -> None:
    """Subprocess body: the public tool's optimize_model call on one component."""
    from onnxruntime.transformers.optimizer import optimize_model

    config = json.loads((src / "config.json").read_text())
    section = config["encoder"] if component == "encoder" else config["decoder"]
    heads = section.get("num_heads") or section["num_attention_heads"]
    start = time.perf_counter()
    model = optimize_model(
        str(src / f"{component}.onnx"),
        model_type="gpt2",
        opt_level=1,
        num_heads=heads,
        hidden_size=section["hidden_size"],
    )
    dst.mkdir(parents=True, exist_ok=True)
    out = dst / f"{component}.onnx"
    for stale in (out, dst / f"{component}.onnx.data"):
        stale.unlink(missing_ok=True)
    model.save_model_to_file(str(out), use_external_data_format=True, all_tensors_to_one_file=True)
    report = {
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "fused": {k: v for k, v in model.get_fused_operator_statistics().items() if v},
    }
    (dst / f"{component}.report.json").write_text(json.dumps(report))


def prepare_ort(dirs: dict[str, Path], min_free_gb: float) -> dict[str, Any]:
    import psutil

    reports = {}
    for c in COMPONENTS:
        report = dirs["ort"] / f"{c}.report.json"
        if not report.exists():
            while psutil.virtual_memory().available / 2**30 < min_free_gb:
                log.info("waiting for %.0f GB of free memory before optimizing %s", min_free_gb, c)
                time.sleep(30)
            argv = [sys.executable, __file__, "--ort-child", c, "--work", str(dirs["raw"].parent)]
            done = subprocess.run(argv, check=False)
            if done.returncode != 0:
                reports[c] = {"error": f"optimize_model exited with {done.returncode}"}
                continue
        reports[c] = json.loads(report.read_text())
    return reports


# -- inputs and timing ----------------------------------------------------------------------------
def workloads(bundle: Path) -> dict[str, dict[str, np.ndarray]]:
    from qgraph.runtime.bench import bench_audio
    from qgraph.runtime.files import load_tokenizer, read_config
    from qgraph.runtime.mel import log_mel
    from qgraph.runtime.prompt import SpecialTokens, build_prompt_ids, n_audio_tokens

    config = read_config(bundle)
    mel = log_mel(bench_audio(AUDIO_SECONDS))[None].astype(np.float32)
    n_audio = n_audio_tokens(mel.shape[-1])
    special = SpecialTokens.from_config(config)
    ids, offset = build_prompt_ids(load_tokenizer(bundle), n_audio, special=special)
    dec = config["decoder"]
    rng = np.random.default_rng(0)
    past = (dec["num_layers"], 1, dec["num_key_value_heads"], PAST_TOKENS, dec["head_dim"])
    return {
        "encoder": {"mel": mel},
        "decoder_init": {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "position_ids": np.arange(len(ids), dtype=np.int64)[None],
            "audio_features": rng.standard_normal((1, n_audio, dec["hidden_size"]), np.float32),
            "audio_offset": np.asarray([offset], dtype=np.int64),
        },
        "decoder_step": {
            "input_ids": np.asarray([[ids[-1]]], dtype=np.int64),
            "position_ids": np.asarray([[PAST_TOKENS]], dtype=np.int64),
            "past_keys": (0.1 * rng.standard_normal(past)).astype(np.float32),
            "past_values": (0.1 * rng.standard_normal(past)).astype(np.float32),
        },
    }


def session(path: Path, threads: int, spinning: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def cpu_ms(path: Path, feeds: dict, runs: int, threads: int) -> float:
    """Median CPU time (all threads, user + system) per call, with thread spinning off.

    On a shared machine this is steadier than wall time: losing the CPU to another process
    does not count, and without spinning a thread that waits for its peer costs nothing.
    """
    sess = session(path, threads, spinning=False)
    inputs = {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}}
    sess.run(None, inputs)
    samples = []
    for _ in range(runs):
        start = time.process_time()
        sess.run(None, inputs)
        samples.append(time.process_time() - start)
    del sess
    gc.collect()
    return 1000 * statistics.median(samples)


def time_component(
    component: str, paths: dict[str, Path], feeds: dict, rounds: int, runs: int, threads: int
) -> dict[str, Any]:
    times: dict[str, list[float]] = {v: [] for v in paths}
    diffs: dict[str, float] = {}
    reference: list[np.ndarray] | None = None
    order = list(paths)
    load = [round(os.getloadavg()[0], 2)]
    for r in range(rounds):
        for variant in order[r % len(order) :] + order[: r % len(order)]:
            sess = session(paths[variant], threads)
            wanted = {i.name for i in sess.get_inputs()}
            inputs = {k: v for k, v in feeds.items() if k in wanted}
            outputs = sess.run(None, inputs)
            if variant == "raw" and reference is None:
                reference = outputs
            elif reference is not None and variant != "raw" and variant not in diffs:
                diffs[variant] = max(
                    float(np.max(np.abs(a - b))) for a, b in zip(outputs, reference, strict=True)
                )
            for _ in range(runs):
                start = time.perf_counter()
                sess.run(None, inputs)
                times[variant].append(time.perf_counter() - start)
            del sess
            gc.collect()
        log.info("%s round %d/%d done", component, r + 1, rounds)
    cpu = {v: cpu_ms(p, feeds, 2 * runs, threads) for v, p in paths.items()}
    load.append(round(os.getloadavg()[0], 2))
    medians = {v: 1000 * statistics.median(t) for v, t in times.items() if t}
    quartiles = {v: 1000 * float(np.percentile(t, 25)) for v, t in times.items() if t}
    return {
        "median_ms": {v: round(m, 2) for v, m in medians.items()},
        "p25_ms": {v: round(m, 2) for v, m in quartiles.items()},
        "min_ms": {v: round(1000 * min(t), 2) for v, t in times.items() if t},
        "cpu_ms": {v: round(k, 2) for v, k in cpu.items()},
        "samples": {v: len(t) for v, t in times.items()},
        "speedup_vs_raw": {v: round(medians["raw"] / m, 3) for v, m in medians.items()},
        "cpu_speedup_vs_raw": {v: round(cpu["raw"] / k, 3) for v, k in cpu.items()},
        "max_abs_diff_vs_raw": diffs,
        "load_average_before_after": load,
    }


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node)
    return {op: ops[op] for op in FUSED_OPS if ops[op]} | {"nodes": len(model.graph.node)}


# -- report ---------------------------------------------------------------------------------------
def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Fusions at Qwen3-ASR-0.6B shapes (random weights, FP32, ORT CPU)",
        "",
        f"{result['machine']}; ORT {result['onnxruntime']}, {result['threads']} threads, "
        f"ORT_ENABLE_ALL; {result['rounds']} alternating rounds, one session alive at a time.",
        "Wall time: median, lower quartile (p25) and min over all calls; `cpu` = median CPU time "
        "per call (all threads) in one extra session per variant with thread spinning off, the "
        "steadiest figure on a shared machine. Load average before/after each component is in "
        "the JSON.",
        "Workloads: encoder 11 s of audio (mel T=1100); decoder_init the 11 s prompt "
        f"({result['prompt_tokens']} tokens); decoder_step at {PAST_TOKENS} past tokens.",
        "`raw` = hygiene only; `ours` = hygiene + `fusions`; `ort` = "
        '`optimize_model(model_type="gpt2", opt_level=1)` on raw (the public tool).',
        "",
        "| component | metric | raw ms | ours ms | ort ms | ours vs raw | ort vs raw "
        "| ours vs ort |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c, t in result["timing"].items():
        for metric in ("median_ms", "p25_ms", "min_ms", "cpu_ms"):
            m = t[metric]
            ort_ms = m.get("ort")
            ort_cells = (
                [f"{ort_ms:.1f}", f"{m['raw'] / ort_ms:.2f}x", f"{ort_ms / m['ours']:.2f}x"]
                if ort_ms
                else ["-", "-", "-"]
            )
            lines.append(
                f"| {c} | {metric[:-3]} | {m['raw']:.1f} | {m['ours']:.1f} | {ort_cells[0]} | "
                f"{m['raw'] / m['ours']:.2f}x | {ort_cells[1]} | {ort_cells[2]} |"
            )
    lines += ["", "Fused-op counts (nodes in the graph):", ""]
    lines += ["| component | variant | ops |", "|---|---|---|"]
    for c, by_variant in result["ops"].items():
        for v, ops in by_variant.items():
            text = ", ".join(f"{k} {n}" for k, n in ops.items())
            lines.append(f"| {c} | {v} | {text} |")
    lines += ["", "Our passes' statistics (all components):", ""]
    for name, stats in result["our_stats"].items():
        lines.append(f"- `{name}`: " + ", ".join(f"{k}={v}" for k, v in stats.items()))
    lines += ["", "ORT optimizer runs:", ""]
    for c, rep in result["ort_reports"].items():
        lines.append(f"- {c}: {json.dumps(rep)}")
    lines += ["", "Max abs output difference vs raw (first run); load average before/after:", ""]
    for c, t in result["timing"].items():
        load = t["load_average_before_after"]
        lines.append(f"- {c}: {json.dumps(t['max_abs_diff_vs_raw'])}; load {load[0]} / {load[1]}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, help="existing random-0.6b raw bundle")
    parser.add_argument("--work", type=Path, default=Path("/tmp/qgraph-fusions-bench"))
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--components", nargs="+", default=list(COMPONENTS))
    parser.add_argument("--min-free-gb", type=float, default=16.0)
    parser.add_argument("--ort-child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite fusions.md from fusions.json"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.ort_child:
        ort_child(args.ort_child, args.work / "raw", args.work / "ort")
        return 0
    if args.report_only:
        result = json.loads((RESULTS / "fusions.json").read_text())
        (RESULTS / "fusions.md").write_text(markdown(result))
        return 0
    import onnxruntime

    from qgraph.bundle import Bundle

    dirs = prepare(args.raw, args.work)
    ort_reports = prepare_ort(dirs, args.min_free_gb)
    feeds = workloads(dirs["raw"])
    runs = {"encoder": 3, "decoder_init": 2, "decoder_step": 10}
    result: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "onnxruntime": onnxruntime.__version__,
        "threads": args.threads,
        "rounds": args.rounds,
        "prompt_tokens": int(feeds["decoder_init"]["input_ids"].shape[1]),
        "mel_frames": int(feeds["encoder"]["mel"].shape[-1]),
        "our_stats": {
            h["pass"]: h["stats"]
            for h in Bundle.load(dirs["ours"]).history
            if h["pass"].startswith("fuse-")
        },
        "ort_reports": ort_reports,
        "ops": {},
        "timing": {},
    }
    for c in args.components:
        paths = {v: dirs[v] / f"{c}.onnx" for v in VARIANTS if (dirs[v] / f"{c}.onnx").exists()}
        result["ops"][c] = {v: op_counts(p) for v, p in paths.items()}
        timing = time_component(c, paths, feeds[c], args.rounds, runs[c], args.threads)
        result["timing"][c] = timing
        log.info("%s: %s", c, timing["median_ms"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fusions.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "fusions.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
