"""``qgraph export FAMILY --model ID_OR_DIR -o OUT``: PyTorch checkpoint -> raw FP32 bundle."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qgraph.errors import ExportError
from qgraph.families import Family, families

NAME = "export"


def exportable() -> dict[tuple[str, str], Family]:
    """``(name on the command line, layout) -> family`` for every family with an exporter."""
    return {f.export_as: f for f in families().values() if f.export_as and f.exporter}


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help="export a PyTorch checkpoint to a raw FP32 ONNX bundle",
        description="Trace a transformers checkpoint with torch.onnx (dynamo, no optimizer)\n"
        "into a raw FP32 bundle: encoder, decoder_init and decoder_step graphs plus\n"
        "config.json, preprocessor_config.json and the tokenizer. Passes ('qgraph compile')\n"
        "turn it into what ships. Needs torch and transformers: pip install 'qgraph[export]'.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  qgraph export qwen3-asr --model tiny -o raw-tiny/\n"
        "  qgraph export qwen3-asr --model ./Qwen3-ASR-0.6B-hf -o raw/\n"
        "  qgraph export qwen3-asr --model Qwen/Qwen3-ASR-0.6B-hf -o raw/   (needs the hub)",
    )
    names = sorted({name for name, _ in exportable()})
    p.add_argument("family", choices=names, help="model family to export")
    p.add_argument(
        "--model",
        required=True,
        metavar="ID_OR_DIR",
        help="checkpoint folder (config.json + weights, read offline), a Hugging Face hub id, "
        "or a built-in random model. qwen3-asr: tiny (20 M params, for tests), random-0.6b, "
        "random-1.7b (real shapes, for benchmarks). whisper: tiny, a CTranslate2 folder "
        "(faster-whisper model.bin) or a transformers folder",
    )
    p.add_argument(
        "-o", "--output", type=Path, required=True, metavar="OUT", help="bundle folder to write"
    )
    p.add_argument(
        "--opset", type=int, default=18, metavar="N", help="ONNX opset, 18 to 23 (default: 18)"
    )
    p.add_argument(
        "--layout",
        choices=sorted({layout for _, layout in exportable()}),
        default="default",
        help="qwen3-asr only. default: encoder/decoder_init/decoder_step (the public layout); "
        "sherpa: conv_frontend/encoder/decoder with static KV caches for sherpa-onnx's "
        "OfflineRecognizer.from_qwen3_asr",
    )
    p.add_argument(
        "--max-total-len",
        type=int,
        default=None,
        metavar="N",
        help="sherpa layout: KV cache length = prompt + audio tokens + new tokens (default 512)",
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines, only the result")
    p.set_defaults(run=run)


def run(args) -> int:
    family = exportable().get((args.family, args.layout))
    if family is None:
        layouts = sorted(layout for name, layout in exportable() if name == args.family)
        raise ExportError(f"--layout {args.layout} applies to {args.family} only as: {layouts}")
    if args.max_total_len is not None and args.layout != "sherpa":
        raise ExportError("--max-total-len applies to --layout sherpa only")
    export = import_exporter(family, "exporter")
    options = {"max_total_len": args.max_total_len} if args.max_total_len is not None else {}
    start = time.perf_counter()
    with _progress(enabled=not args.quiet):
        path = export(args.model, args.output, opset=args.opset, overwrite=args.force, **options)
    seconds = time.perf_counter() - start
    manifest = json.loads((path / "qgraph.json").read_text())
    files = manifest.get("files", {})
    total = sum(f["bytes"] for f in files.values())
    print(f"wrote {path} ({args.family}, opset {args.opset}, {_mb(total)}) in {seconds:.1f} s")
    for name, comp in manifest["components"].items():
        size = sum(files.get(k, {}).get("bytes", 0) for k in (comp["file"], comp.get("data_file")))
        ins = ", ".join(_sig(v) for v in comp["inputs"])
        outs = ", ".join(_sig(v) for v in comp["outputs"])
        print(f"  {name:<13} {comp['nodes']:>6} nodes {_mb(size):>10}  {ins} -> {outs}")
    return 0


def import_exporter(family: Family, which: str = "exporter") -> Any:
    """The family's exporter or validate entry point; ExportError if torch or transformers is
    missing."""
    try:
        return family.entry(which)
    except ModuleNotFoundError as err:
        if err.name in ("torch", "transformers") or str(err.name).startswith("torch."):
            raise ExportError(
                f"this command needs {err.name}: pip install 'qgraph[export]' "
                "(install torch==2.13.0 first for the CPU wheel)"
            ) from None
        raise


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[None]:
    """Show the exporter's INFO lines on stderr (unless logging already shows them)."""
    log = logging.getLogger("qgraph.export")
    if not enabled or log.isEnabledFor(logging.INFO):
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("export: %(message)s"))
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


def _sig(value: dict) -> str:
    dims = ",".join(str(d) for d in value.get("shape") or [])
    return f"{value['name']}[{dims}]"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
