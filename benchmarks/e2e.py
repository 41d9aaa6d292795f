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
                             [--extra NAME=DIR ...]

``--public`` reuses an earlier build of the public approach (built there if missing).
"""

from __future__ import annotations

import argparse
import json
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
    ap.add_argument("--raw", type=Path, required=True, help="raw 0.6B-shape export")
    ap.add_argument("--ours", type=Path, required=True, help="our compiled bundle (default)")
    ap.add_argument("--public", type=Path, default=Path("benchmarks/work/public-int4"))
    ap.add_argument("--rounds", type=int, default=3, help="alternating A/B rounds")
    ap.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="another bundle to time in the same rounds (e.g. a variant of ours)",
    )
    args = ap.parse_args()
    extra = dict(spec.split("=", 1) for spec in args.extra)
    if not (args.public / "decoder_step.onnx").exists():
        build_public(args.raw, args.public)
    bundles = {"ours": args.ours, "public": args.public}
    bundles.update({name: Path(folder) for name, folder in extra.items()})
    # the public recipe runs as its runtime does: two decoder sessions
    options = {"public": ["--separate-decoders"]}
    result = alternate(bundles, args.rounds, RESULTS / "e2e-runs", options=options)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "e2e.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result, {"ours": "ours (default)", "public": "public approach"})
    (RESULTS / "e2e.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
