"""End to end at the 0.6B shapes: our compiled bundle vs the public tool's approach.

The public approach (seed-spec §0, §4) is rebuilt from the same raw export, step by step in
subprocesses (one model in memory at a time):

1. the step's embedding lookup moves to the host with an FP16 ``embed_tokens.bin``
   (``qgraph compile --passes extract-embed-fp16``: the public step contract; init logits stay
   for every position, each decoder keeps its own data file);
2. ORT ``optimize_model(model_type="gpt2", opt_level=1)`` on every component;
3. ``MatMulNBitsQuantizer`` RTN int4, block 64, asymmetric, accuracy_level 4 on both decoders
   (the encoder stays FP32).

Both bundles then run through the same reference runtime (``qgraph bench``: 11 s of audio,
prefill, exactly 30 decode steps), alternating A/B in fresh processes, and medians are
compared (``bundles_ab.py``). The public bundle runs as its own runtime runs it, with
decoder_init and decoder_step in two ONNX Runtime sessions (``--separate-decoders``); ours
with qgraph's runtime default, one merged session. Results go to
``benchmarks/results/e2e.{json,md}``.

    python benchmarks/e2e.py --raw RAW --ours OURS [--public PUBLIC] [--rounds 3]
                             [--extra NAME=DIR ...] [--options NAME=ARGS ...]
    python benchmarks/e2e.py --report-only          # e2e.md again from e2e.json

``--public`` reuses an earlier build of the public approach (built there if missing). The
table's ratios are against the public approach (the issue's targets are "x the public
recipe"); each bundle's decode step is also shown beside its memory-bandwidth floor, measured by
``qgraph bench`` in the same process.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from bundles_ab import alternate, markdown

RESULTS = Path(__file__).parent / "results"

OPTIMIZE = r"""
import sys, onnx
from onnxruntime.transformers.optimizer import optimize_model
src, dst, heads, hidden = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
m = optimize_model(src, model_type="gpt2", num_heads=heads, hidden_size=hidden, opt_level=1)
m.save_model_to_file(dst, use_external_data_format=True)
"""

QUANTIZE = r"""
import sys, onnx
from onnxruntime.quantization.matmul_nbits_quantizer import (
    DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer)
src, dst = sys.argv[1], sys.argv[2]
model = onnx.load(src)
cfg = DefaultWeightOnlyQuantConfig(block_size=64, is_symmetric=False, accuracy_level=4)
q = MatMulNBitsQuantizer(model, algo_config=cfg)
q.process()
q.model.save_model_to_file(dst, use_external_data_format=True)
"""


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def build_public(raw: Path, out: Path) -> None:
    """The public tool's int4 release layout, rebuilt from our raw export."""
    stage = out.parent / f"{out.name}.stage"
    run(
        [
            "qgraph",
            "compile",
            str(raw),
            "-o",
            str(stage),
            "--force",
            "-q",
            "--passes",
            "hygiene,extract-embed-fp16",
        ]
    )
    config = json.loads((stage / "config.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    for side in stage.iterdir():
        if side.suffix in (".json", ".bin") and side.name != "qgraph.json":
            (out / side.name).write_bytes(side.read_bytes())
    for comp in ("encoder", "decoder_init", "decoder_step"):
        section = config["encoder" if comp == "encoder" else "decoder"]
        heads = section.get("num_heads") or section["num_attention_heads"]
        hidden = section["hidden_size"]
        optimized = out / f"{comp}.opt.onnx"
        run(
            [
                sys.executable,
                "-c",
                OPTIMIZE,
                str(stage / f"{comp}.onnx"),
                str(optimized),
                str(heads),
                str(hidden),
            ]
        )
        final = out / f"{comp}.onnx"
        if comp == "encoder":
            optimized.rename(final)
            (out / f"{comp}.opt.onnx.data").rename(out / f"{comp}.onnx.data")
            _relocate(final, f"{comp}.opt.onnx.data", f"{comp}.onnx.data")
        else:
            run([sys.executable, "-c", QUANTIZE, str(optimized), str(final)])
            optimized.unlink()
            (out / f"{comp}.opt.onnx.data").unlink()


def _relocate(path: Path, old: str, new: str) -> None:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    from onnx.external_data_helper import _get_all_tensors

    for t in _get_all_tensors(proto):
        for e in t.external_data:
            if e.key == "location" and e.value == old:
                e.value = new
    path.write_bytes(proto.SerializeToString())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--raw", type=Path, help="raw 0.6B-shape export")
    ap.add_argument("--ours", type=Path, help="our compiled bundle (default)")
    ap.add_argument("--public", type=Path, default=Path("benchmarks/work/public-int4"))
    ap.add_argument("--rounds", type=int, default=3, help="alternating A/B rounds")
    ap.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="another bundle to time in the same rounds (e.g. a variant of ours)",
    )
    ap.add_argument(
        "--options",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="extra qgraph bench options for one bundle (e.g. 'static-pp=--prepack-dir DIR')",
    )
    ap.add_argument("--report-only", action="store_true", help="e2e.md from e2e.json")
    args = ap.parse_args()
    if args.report_only:
        report(json.loads((RESULTS / "e2e.json").read_text()))
        return
    if args.raw is None or args.ours is None:
        ap.error("--raw and --ours are required (or --report-only)")
    extra = dict(spec.split("=", 1) for spec in args.extra)
    if not (args.public / "decoder_step.onnx").exists():
        build_public(args.raw, args.public)
    bundles = {"public": args.public, "ours": args.ours}
    bundles.update({name: Path(folder) for name, folder in extra.items()})
    # the public recipe runs as its runtime does: two decoder sessions
    options = {"public": ["--separate-decoders"]}
    for spec in args.options:
        name, extra_args = spec.split("=", 1)
        options[name] = options.get(name, []) + shlex.split(extra_args)
    result = alternate(bundles, args.rounds, RESULTS / "e2e-runs", options=options)
    result["command"] = shlex.join(["python", *sys.argv])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "e2e.json").write_text(json.dumps(result, indent=2) + "\n")
    report(result)


def _loads(values: list[float] | None) -> str:
    return "/".join(f"{v:.1f}" for v in values) if values else "not recorded"


def report(result: dict) -> None:
    """``e2e.md``: how it was run, then the table (ratios against the public approach)."""
    load = result.get("load_average", {})
    runs = result["runs"]
    floors = {
        name: statistics.median(r["decoder_step_ms"] / r["floor_ms"] for r in rs)
        for name, rs in runs.items()
    }
    head = [
        "# End to end at the 0.6B shapes: qgraph vs the public approach",
        "",
        f"{result['machine']}; `{result.get('command', 'python benchmarks/e2e.py ...')}`; "
        f"load average before {_loads(load.get('before'))}, after {_loads(load.get('after'))}.",
        "Random 0.6B weights; 11 s of the built-in speech, prefill, 30 decode steps, ORT 2 "
        f"threads; {result['rounds']} alternating rounds of fresh `qgraph bench` processes "
        "(medians). Ratios are against the public approach. Decode step over its floor "
        "(median of per-run ratios): "
        + ", ".join(f"{name} {x:.2f}x" for name, x in floors.items())
        + ".",
        "",
    ]
    labels = {"ours": "ours (default)", "public": "public approach"}
    table = markdown(result, labels)
    (RESULTS / "e2e.md").write_text("\n".join(head) + "\n" + table)
    print(table)


if __name__ == "__main__":
    main()
