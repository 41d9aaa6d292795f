"""Persisted pre-packed weights for the merged decoder session: load time and memory.

ONNX Runtime pre-packs MatMul / MatMulNBits weights into private heap buffers at every load.
With ``session.save_external_prepacked_constant_initializers=1`` and an
``optimized_model_filepath``, a session writes its optimized graph with the pre-packed blobs in
an external data file; loading that file maps them instead of packing again (file-backed,
clean pages the OS can drop, not private heap). This script builds that file once for the
merged decoder that qgraph's runtime creates in memory (``qgraph.runtime.merged``), then loads
(a) the runtime's merged decoder as it does today and (b) the persisted pre-packed one, each in
a fresh process, alternating, ``--rounds`` times, and reports load seconds, RSS and private
memory (USS) after load, peak RSS, and whether one step's logits are identical.

    python benchmarks/prepacked.py BUNDLE [--work DIR] [--rounds 3] [--threads N]

Writes ``benchmarks/results/<out>.{json,md}`` (default ``prepacked``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

CHILD = r"""
import json, resource, sys, time
import numpy as np, onnx, onnxruntime as ort, psutil
from pathlib import Path
from qgraph.runtime.merged import merge_decoders
from qgraph.runtime.ort import session_options
mode, bundle, work, threads = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
threads = int(threads) if threads != "none" else None
o = session_options(threads, "all")
start = time.perf_counter()
if mode in ("merged", "build"):
    init = onnx.load(str(bundle / "decoder_init.onnx"), load_external_data=False)
    step = onnx.load(str(bundle / "decoder_step.onnx"), load_external_data=False)
    model = merge_decoders(init, step).SerializeToString()
    o.add_session_config_entry("session.model_external_initializers_file_folder_path", str(bundle))
    if mode == "build":
        o.optimized_model_filepath = str(work / "decoder_prepacked.onnx")
        o.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", "decoder_prepacked.data")
        o.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        o.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
    s = ort.InferenceSession(model, o, ["CPUExecutionProvider"])
else:
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(str(work / "decoder_prepacked.onnx"), o, ["CPUExecutionProvider"])
load_s = time.perf_counter() - start
info = psutil.Process().memory_full_info()
rng = np.random.default_rng(0)
types = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}
feeds = {}
for v in s.get_inputs():
    shape = [d if isinstance(d, int) else 0 for d in v.shape]
    if v.name == "use_cache_branch":
        feeds[v.name] = np.array([True])
    elif v.name == "position_ids":
        feeds[v.name] = np.array([[100]], np.int64)
    elif v.name == "input_embeds":
        feeds[v.name] = rng.standard_normal([1, 1, shape[-1]]).astype(np.float32)
    elif v.name in ("past_keys", "past_values"):
        l, _, h, _, d = v.shape
        feeds[v.name] = (0.1 * rng.standard_normal([l, 1, h, 100, d])).astype(np.float32)
    elif v.name.startswith("past_key_values."):  # static-kv-cache: 128 positions, 100 used
        _, h, _, d = v.shape
        feeds[v.name] = (0.1 * rng.standard_normal([1, h, 128, d])).astype(np.float32)
    else:
        feeds[v.name] = np.zeros(shape, types[v.type])
logits = s.run(["logits"], feeds)[0]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"load_s": load_s, "rss": info.rss, "uss": info.uss, "peak": peak,
                  "logits": logits.reshape(-1)[:4096].tolist()}))
"""


def child(mode: str, bundle: Path, work: Path, threads: int | None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(bundle), str(work), str(threads or "none")],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--work", type=Path, default=Path("prepacked-work"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", default="prepacked")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    load_before = os.getloadavg()
    start = time.perf_counter()
    child("build", args.bundle, args.work, args.threads)
    build_s = time.perf_counter() - start
    files = {p.name: p.stat().st_size for p in args.work.iterdir()}
    runs: dict[str, list[dict]] = {"merged": [], "prepacked": []}
    for _ in range(args.rounds):
        for mode in runs:
            runs[mode].append(child(mode, args.bundle, args.work, args.threads))
    load_after = os.getloadavg()
    same = runs["merged"][0]["logits"] == runs["prepacked"][0]["logits"]
    rows = {
        mode: {k: statistics.median(r[k] for r in rs) for k in ("load_s", "rss", "uss", "peak")}
        for mode, rs in runs.items()
    }
    out = RESULTS / args.out
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "bundle": str(args.bundle),
                "build_s": build_s,
                "files": files,
                "identical_logits": same,
                "load_average_before": load_before,
                "load_average_after": load_after,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    mib = 2**20
    lines = [
        "# Persisted pre-packed weights (merged decoder session)",
        "",
        f"`python benchmarks/prepacked.py {args.bundle} --rounds {args.rounds}`",
        "",
        f"Built once in {build_s:.1f} s: "
        + ", ".join(f"`{n}` {s / mib:.0f} MiB" for n, s in sorted(files.items()))
        + f". Fresh process per load, alternating, medians of {args.rounds}; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after ({os.cpu_count()} CPUs, "
        f"shared). One step's logits identical: {same}.",
        "",
        "| decoder session | load s | RSS after load MiB | private (USS) MiB | peak RSS MiB |",
        "|---|---|---|---|---|",
    ]
    for mode, r in rows.items():
        lines.append(
            f"| {mode} | {r['load_s']:.2f} | {r['rss'] / mib:.0f} | {r['uss'] / mib:.0f} | "
            f"{r['peak'] / mib:.0f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
