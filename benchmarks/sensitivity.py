"""Sensitivity of each weight group to 4-bit quantization, measured on calibration audio.

Groups (from the exporter's module scopes of every MatMul the decoder quantizes, ``_roles``):
per decoder layer its self-attention (q/k/v/o), cross-attention q/o (Whisper), MLP (fc1/fc2 or
gate/up/down); the cross-attention k/v that ``fuse-sibling-matmuls`` packs across all layers
(Whisper: one MatMul) is a group of its own; the lm_head (and with it the tied embedding); and the
encoder (every encoder MatMul).

Each decoder group is measured against an 8-bit baseline: ``quantize-int4{bits=8,overrides=[G:4]}``
on the ``fp32`` compile, i.e. the group at 4 bits (block ``--block``) and every other decoder
MatMul at 8 bits; the encoder group is ``quantize-int4{roles=[encoder]}`` (the decoder FP32).
Each bundle is compared with the ``fp32`` compile by ``qgraph.accuracy.compare`` on calibration
audio: teacher-forced KL(fp32 || candidate) in nats/token (the ranking; minus the baseline's KL
gives the group's own share), top-1, greedy token agreement and, with transcripts, the WER delta.

    python benchmarks/sensitivity.py whisper [--block 64] [--max-files 8]
    python benchmarks/sensitivity.py qwen3-tiny

Whisper: tiny.en (real weights) on the 24 ``CALIBRATION`` espeak-ng sentences (never the eval
ones). qwen3-tiny: the random-weight tiny export on the built-in speech (its near-flat logits
make every group look sensitive; the ranking is what it shows). Writes
``benchmarks/results/sensitivity_<model>.{json,md,svg}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from whisper_speech import RESULTS, WORK, prepare, qgraph

log = logging.getLogger("sensitivity")


def groups(bundle_dir: Path) -> dict[str, list[str]]:
    from qgraph.bundle import Bundle
    from qgraph.passes._groups import decoder_groups

    return decoder_groups(Bundle.load(bundle_dir))


_CACHE: dict[str, Any] = {}
"""The fp32 reference's decodes, shared by every group's bundle."""


def measure(reference: Path, bundle: Path, audio: Path | None, args) -> dict[str, Any]:
    from qgraph.accuracy import compare

    report = compare(
        reference,
        bundle,
        audio,
        max_files=args.max_files,
        max_tokens=args.max_tokens,
        cache=_CACHE,
    )
    return {
        "kl": report.kl,
        "top1": report.top1,
        "agreement": report.agreement,
        "wer_delta_pp": 100 * (report.wer - report.reference_wer) if report.words else None,
        "loops": report.loops,
    }


def svg(rows: list[dict[str, Any]], title: str) -> str:
    """A horizontal bar chart of each group's KL (nats/token, log-free, baseline marked)."""
    width, bar_h, left = 760, 18, 230
    top = 40
    height = top + bar_h * len(rows) + 40
    peak = max(r["kl"] for r in rows) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<text x="10" y="20" font-size="14">{title}</text>',
    ]
    for i, r in enumerate(rows):
        y = top + i * bar_h
        w = (width - left - 90) * r["kl"] / peak
        color = "#999" if r["group"].startswith("baseline") else "#3b6ea8"
        parts += [
            f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{r["group"]}</text>',
            f'<rect x="{left}" y="{y + 2}" width="{w:.1f}" height="{bar_h - 4}" fill="{color}"/>',
            f'<text x="{left + w + 4:.1f}" y="{y + 13}">{r["kl"]:.3g}</text>',
        ]
    label = "teacher-forced KL(fp32 || candidate), nats/token"
    parts.append(f'<text x="{left}" y="{height - 12}">{label}</text>')
    return "\n".join([*parts, "</svg>"]) + "\n"


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"# Sensitivity to 4-bit quantization: {meta['model']}",
        "",
        meta["setup"],
        "",
        "| group | patterns | KL nats/token | KL - baseline | top-1 % | agreement % | ΔWER pp "
        "| loops |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = rows[0]["kl"]
    for r in rows:
        wer = "-" if r["wer_delta_pp"] is None else f"{r['wer_delta_pp']:+.2f}"
        lines.append(
            f"| {r['group']} | {r['nodes']} | {r['kl']:.3g} | {r['kl'] - base:+.3g} | "
            f"{100 * r['top1']:.1f} | {100 * r['agreement']:.1f} | {wer} | {len(r['loops'])} |"
        )
    ranked = sorted(rows[1:], key=lambda r: -r["kl"])
    lines += ["", "Most sensitive first: " + ", ".join(r["group"] for r in ranked), ""]
    lines.append(f"Plot: `sensitivity_{meta['slug']}.svg`.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=["whisper", "qwen3-tiny"])
    parser.add_argument("--block", type=int, default=64, help="block size of the 4-bit group")
    parser.add_argument("--max-files", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--work", type=Path, default=WORK)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    if args.model == "whisper":
        raw, _, audio = prepare(args.work)
        work = args.work / "sensitivity"
        setup = (
            f"Whisper tiny.en (real weights), {args.max_files} of the 24 calibration espeak-ng "
            "sentences (never the eval ones), greedy up to "
            f"{args.max_tokens} tokens; 4-bit block {args.block}, asymmetric, against the fp32 "
            "compile."
        )
    else:
        from qgraph.export.qwen3_asr.exporter import export_qwen3_asr

        work = args.work.parent / "qwen3-tiny"
        raw = work / "raw"
        if not (raw / "qgraph.json").exists():
            export_qwen3_asr("tiny", raw, overwrite=True)
        audio = None
        setup = (
            "The tiny random-weight Qwen3-ASR export on the built-in speech (2 clips), greedy up "
            f"to {args.max_tokens} tokens; 4-bit block {args.block}, asymmetric, against the "
            "fp32 compile. Random weights: near-flat logits, so absolute numbers are a stress "
            "test and only the ranking carries over."
        )
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "fp32"
    if not (fp32 / "qgraph.json").exists():
        qgraph("compile", str(raw), "-o", str(fp32), "--passes", "fp32", "--force", "-q")
    found = groups(fp32)
    log.info("groups: %s", {k: len(v) for k, v in found.items()})
    b = args.block
    plans = {"baseline: decoder int8": ("quantize-int4{bits=8}", 0)}
    for name, nodes in found.items():
        overrides = ",".join(f"{n}:4/{b}" for n in nodes)
        plans[name] = (f"quantize-int4{{bits=8,overrides=[{overrides}]}}", len(nodes))
    plans["encoder"] = (f"quantize-int4{{roles=[encoder],block_size={b}}}", 0)
    rows = []
    for name, (spec, count) in plans.items():
        out = work / re.sub(r"[^A-Za-z0-9]+", "_", name)
        start = time.perf_counter()
        qgraph("compile", str(fp32), "-o", str(out), "--passes", spec, "--force", "-q")
        row = {"group": name, "nodes": count, "pipeline": spec, **measure(fp32, out, audio, args)}
        rows.append(row)
        log.info("%s: KL %.4f (%.0f s)", name, row["kl"], time.perf_counter() - start)
    slug = args.model
    meta = {"model": args.model, "slug": slug, "setup": setup, "block": b}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"sensitivity_{slug}.json").write_text(
        json.dumps({**meta, "rows": rows}, indent=2) + "\n"
    )
    (RESULTS / f"sensitivity_{slug}.md").write_text(markdown(rows, meta))
    (RESULTS / f"sensitivity_{slug}.svg").write_text(
        svg(rows, f"{args.model}: one group at 4 bits (block {b}), the rest of the decoder int8")
    )
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
