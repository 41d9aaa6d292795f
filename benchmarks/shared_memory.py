"""Do decoder_init and decoder_step share their weights in memory?

Loads a bundle in a fresh process per configuration and records resident memory (RSS) after
the three ONNX Runtime sessions are created, and the peak after one transcription of 11 s of
audio, plus the median decoder_step latency at 100 past tokens. Configurations: the raw bundle
(one data file per decoder); the compiled bundle (one shared ``decoder_weights.data``) with
ORT's default sessions; the compiled bundle with ``AsrSession(share_weights=True)``
(decoder_init and decoder_step as the two branches of one session, ``qgraph.runtime.merged``:
ORT pre-packs each weight once for both).

    python benchmarks/shared_memory.py --raw RAW --compiled COMPILED [COMPILED ...]
                                       [--out results/shared_memory]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np, psutil
from qgraph.runtime import AsrSession
bundle, share = sys.argv[1], sys.argv[2] == "1"
proc = psutil.Process()


def status_mb(key):
    # RssAnon: private memory (weight copies live here); RssFile: mapped file pages, counted
    # once per mapping (two sessions mapping one file count its pages twice in RSS, but the
    # kernel holds them once, in the page cache).
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


base = proc.memory_info().rss
t0 = time.perf_counter()
session = AsrSession(bundle, share_weights=share, threads=2)
load_s = time.perf_counter() - t0
loaded = proc.memory_info().rss
anon_loaded = status_mb("RssAnon")
audio = (0.1 * np.random.default_rng(0).standard_normal(11 * 16000)).astype(np.float32)
t0 = time.perf_counter()
out = session.transcribe(audio, max_tokens=30)
run_s = time.perf_counter() - t0
step = session.decoder_step
dec = session.config["decoder"]
layers, kv, hd = dec["num_layers"], dec["num_key_value_heads"], dec["head_dim"]
if session.step_takes_embeds:
    token = {"input_embeds": np.zeros((1, 1, dec["hidden_size"]), np.float32)}
else:
    token = {"input_ids": np.zeros((1, 1), np.int64)}
feeds = {
    **token,
    "position_ids": np.array([[100]], np.int64),
    "past_keys": np.zeros((layers, 1, kv, 100, hd), np.float32),
    "past_values": np.zeros((layers, 1, kv, 100, hd), np.float32),
}
times = []
for _ in range(12):
    t = time.perf_counter(); step.run(feeds); times.append(time.perf_counter() - t)
print(json.dumps({
    "rss_before_mb": base / 2**20,
    "rss_loaded_mb": loaded / 2**20,
    "rss_after_run_mb": proc.memory_info().rss / 2**20,
    "anon_loaded_mb": anon_loaded,
    "anon_after_run_mb": status_mb("RssAnon"),
    "file_after_run_mb": status_mb("RssFile"),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "load_s": load_s,
    "transcribe_s": run_s,
    "tokens": len(out.token_ids),
    "step_ms_median": 1000 * float(np.median(times[2:])),
}))
"""


def measure(bundle: Path, share: bool) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(bundle), "1" if share else "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--raw", type=Path, required=True)
    ap.add_argument("--compiled", type=Path, nargs="+", required=True, help="compiled bundles")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "shared_memory")
    args = ap.parse_args()
    configs = [("raw, two data files, two sessions", args.raw, False)]
    for bundle in args.compiled:
        configs += [
            (f"{bundle.name}: shared file, two decoder sessions", bundle, False),
            (f"{bundle.name}: shared file, one merged session (runtime default)", bundle, True),
        ]
    rows = []
    for label, bundle, share in configs:  # each in a fresh process: RSS is per process
        row = {"config": label, "bundle": str(bundle), **measure(bundle, share)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "| configuration | RSS after load (MB) | private (anon) memory after run (MB) | "
        "mapped file pages after run (MB) | peak RSS (MB) | load (s) | "
        "transcribe 11 s, 30 tokens (s) | decoder_step @100 past, median (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['rss_loaded_mb']:.0f} | {r['anon_after_run_mb']:.0f} | "
            f"{r['file_after_run_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
            f"{r['load_s']:.1f} | {r['transcribe_s']:.2f} | {r['step_ms_median']:.1f} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
