"""Fusion coverage on the fusion corpus (issue #14): qgraph vs ORT's optimizer vs onnxscript.

Builds the corpus of ``tests/corpus`` (tiny random Llama, Qwen3, BERT, Whisper exported by
TorchScript opset 17 and dynamo opset 18 with and without its optimizer; our exporter's tiny
Qwen3-ASR and Whisper; hand-written spellings), runs each tool on every case and scores it
(``tests/corpus/score.py``: which fused nodes count for which site kind):

- ``qgraph``: ``hygiene,fusions`` on the bare graph (the graph part of ``compile --passes
  fp32``; its layout passes change the I/O and are left out);
- ``ort-bert`` / ``ort-gpt2``: ``onnxruntime.transformers.optimizer.optimize_model(path,
  model_type="bert"|"gpt2", num_heads, hidden_size)`` at its default ``opt_level`` (1 for both);
- ``onnxscript``: ``onnxscript.rewriter.ort_fusions.optimize_for_ort(model)``.

Per tool: fused sites per kind (``min(fused nodes, sites)`` per case, summed; fused/expected and
%), and the ONNX Runtime numeric check of each optimized graph against the unfused one (same
feeds; max abs difference within the case's tolerance). A tool that crashes on a case is
recorded with its error and scores 0 there (its numeric check counts as failed). For qgraph the
passes' statistics per case (``fused``, ``skipped:<reason>``) are kept in the JSON.

    python benchmarks/fusion_coverage.py                    # build, optimize, score (~3 min)
    python benchmarks/fusion_coverage.py --work W --tools qgraph onnxscript
    python benchmarks/fusion_coverage.py --cases hand/ llama/    # name prefixes
    python benchmarks/fusion_coverage.py --report-only      # markdown from the JSON

Writes ``benchmarks/results/fusion_coverage.json`` and ``fusion_coverage.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TOOL_NAMES = ("qgraph", "ort-bert", "ort-gpt2", "onnxscript")
log = logging.getLogger("fusion_coverage")


def our_bundles(work: Path) -> tuple[Path, Path]:
    """Our exporter's tiny Qwen3-ASR and Whisper raw bundles (exported once into ``work``)."""
    from qgraph.export.qwen3_asr.exporter import export_qwen3_asr
    from qgraph.export.whisper import export_whisper

    qwen, whisper = work / "ours" / "qwen3-asr", work / "ours" / "whisper"
    if not (qwen / "qgraph.json").is_file():
        log.info("exporting the tiny Qwen3-ASR")
        export_qwen3_asr("tiny", qwen)
    if not (whisper / "qgraph.json").is_file():
        log.info("exporting the tiny Whisper")
        export_whisper("tiny", whisper)
    return qwen, whisper


def run_tool(tool: str, case, out: Path) -> dict[str, Any]:
    from tests.corpus import tools
    from tests.corpus.score import count_model, max_abs_diff, score

    start = time.perf_counter()
    entry: dict[str, Any] = {}
    try:
        if tool == "qgraph":
            model = tools.load(case)
            entry["stats"] = tools.qgraph_passes(model)
            tools.save(model, out)
        else:
            tools.TOOLS[tool](case, out)
    except Exception as err:  # a crashing anchor is a result, not a benchmark failure
        entry["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
        log.debug("%s on %s:\n%s", tool, case.name, traceback.format_exc())
        entry["sites"] = score({}, case.expected)
        entry["numeric"] = {"ok": False, "error": "no model"}
        entry["seconds"] = round(time.perf_counter() - start, 2)
        return entry
    entry["seconds"] = round(time.perf_counter() - start, 2)
    entry["sites"] = score(count_model(out, case.expected), case.expected)
    try:
        diff = max_abs_diff(case.path, out, case.feeds())
        entry["numeric"] = {"ok": diff <= case.tolerance, "max_abs_diff": diff}
    except Exception as err:
        message = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
        entry["numeric"] = {"ok": False, "error": message}
    return entry


def summarize(cases: list[dict], tools: list[str]) -> dict[str, Any]:
    from tests.corpus import SITE_KINDS

    kinds: dict[str, dict[str, dict[str, int]]] = {}
    for kind in SITE_KINDS:
        expected = sum(c["expected"].get(kind, 0) for c in cases)
        if not expected:
            continue
        kinds[kind] = {}
        for tool in tools:
            fused = sum(c["tools"][tool]["sites"].get(kind, {}).get("fused", 0) for c in cases)
            kinds[kind][tool] = {"fused": fused, "expected": expected}
    total = {
        tool: {
            "fused": sum(k[tool]["fused"] for k in kinds.values()),
            "expected": sum(k[tool]["expected"] for k in kinds.values()),
        }
        for tool in tools
    }
    numeric = {}
    for tool in tools:
        results = [c["tools"][tool] for c in cases]
        diffs = [r["numeric"].get("max_abs_diff", 0.0) for r in results]
        numeric[tool] = {
            "passed": sum(r["numeric"]["ok"] for r in results),
            "cases": len(results),
            "crashed": sum("error" in r for r in results),
            "worst_max_abs_diff": max(diffs) if diffs else 0.0,
        }
    families: dict[str, dict[str, dict[str, int]]] = {}
    for c in cases:
        fam = families.setdefault(c["family"], {t: {"fused": 0, "expected": 0} for t in tools})
        for tool in tools:
            for s in c["tools"][tool]["sites"].values():
                fam[tool]["fused"] += s["fused"]
                fam[tool]["expected"] += s["expected"]
    return {"kinds": kinds, "total": total, "families": families, "numeric": numeric}


def _cell(d: dict[str, int]) -> str:
    pct = 100.0 * d["fused"] / d["expected"] if d["expected"] else 0.0
    return f"{d['fused']}/{d['expected']} ({pct:.0f} %)"


def markdown(result: dict[str, Any]) -> str:
    tools = result["tools"]
    s = result["summary"]
    head = "| " + " | ".join(tools) + " |"
    rule = "|---|" + "---|" * len(tools)
    lines = [
        "# Fusion coverage on the fusion corpus (issue #14)",
        "",
        f"{result['machine']}; torch {result['versions']['torch']}, transformers "
        f"{result['versions']['transformers']}, onnxruntime {result['versions']['onnxruntime']}, "
        f"onnxscript {result['versions']['onnxscript']}; {len(result['cases'])} cases "
        "(`tests/corpus`).",
        "`qgraph` = `hygiene,fusions` (the graph part of `fp32`); `ort-bert`/`ort-gpt2` = "
        '`optimize_model(model_type="bert"|"gpt2", num_heads, hidden_size)` at the default '
        "opt_level (1); `onnxscript` = `optimize_for_ort`. A fused site = a fused node of that "
        "kind, at most the number of sites per case (`tests/corpus/score.py`).",
        "",
        "## Sites fused per op type",
        "",
        "| op type " + head,
        rule,
    ]
    for kind, by_tool in s["kinds"].items():
        lines.append(f"| {kind} | " + " | ".join(_cell(by_tool[t]) for t in tools) + " |")
    lines.append("| **all** | " + " | ".join(f"**{_cell(s['total'][t])}**" for t in tools) + " |")
    lines += ["", "## Sites fused per pattern family (all kinds in the family's cases)", ""]
    lines += ["| family " + head, rule]
    for fam, by_tool in s["families"].items():
        lines.append(f"| {fam} | " + " | ".join(_cell(by_tool[t]) for t in tools) + " |")
    lines += ["", "## Numeric equality (ONNX Runtime, optimized vs unfused, same feeds)", ""]
    lines += ["| | " + " | ".join(tools) + " |", rule]
    num = s["numeric"]
    lines.append(
        "| cases within tolerance | "
        + " | ".join(f"{num[t]['passed']}/{num[t]['cases']}" for t in tools)
        + " |"
    )
    lines.append("| crashed | " + " | ".join(str(num[t]["crashed"]) for t in tools) + " |")
    lines.append(
        "| worst max abs diff | "
        + " | ".join(f"{num[t]['worst_max_abs_diff']:.2g}" for t in tools)
        + " |"
    )
    lines += [
        "",
        "## Per case",
        "",
        "Each cell: sites fused / sites, then the numeric check (`ok` with the max abs diff, "
        "`FAIL`, or the error).",
        "",
        "| case | family | source | sites " + head,
        "|---|---|---|---|" + "---|" * len(tools),
    ]
    for c in result["cases"]:
        sites = ", ".join(f"{k} {n}" for k, n in c["expected"].items())
        cells = []
        for t in tools:
            r = c["tools"][t]
            fused = sum(v["fused"] for v in r["sites"].values())
            expected = sum(v["expected"] for v in r["sites"].values())
            if "error" in r:
                cells.append(f"0/{expected} crashed: {r['error'][:80]}")
                continue
            missed = [
                f"{k} {v['fused']}/{v['expected']}"
                for k, v in r["sites"].items()
                if v["fused"] != v["expected"]
            ]
            n = r["numeric"]
            check = (
                f"ok {n['max_abs_diff']:.1g}"
                if n["ok"]
                else ("FAIL " + (f"{n['max_abs_diff']:.2g}" if "max_abs_diff" in n else n["error"]))
            )
            cells.append(
                f"{fused}/{expected}" + (f" ({'; '.join(missed)})" if missed else "") + f", {check}"
            )
        lines.append(
            f"| {c['name']} | {c['family']} | {c['source']} | {sites} | " + " | ".join(cells) + " |"
        )
    lines += ["", "## qgraph near misses (pass statistics ``skipped:<reason>`` per case)", ""]
    for c in result["cases"]:
        stats = c["tools"].get("qgraph", {}).get("stats", {})
        missed = [
            f"{name} {key[len('skipped:') :]} x{n}"
            for name, counts in stats.items()
            for key, n in counts.items()
            if key.startswith("skipped:")
        ]
        if missed:
            lines.append(f"- {c['name']}: " + "; ".join(missed))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/qgraph-fusion-coverage"))
    parser.add_argument("--tools", nargs="+", default=list(TOOL_NAMES), choices=TOOL_NAMES)
    parser.add_argument("--cases", nargs="+", help="only cases whose name starts with these")
    parser.add_argument("--no-ours", action="store_true", help="leave our exporter's cases out")
    parser.add_argument("--output", default="fusion_coverage", help="results file stem")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the markdown from the JSON"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    json_path, md_path = RESULTS / f"{args.output}.json", RESULTS / f"{args.output}.md"
    if args.report_only:
        md_path.write_text(markdown(json.loads(json_path.read_text())))
        return 0
    sys.path.insert(0, str(ROOT))
    import onnxruntime
    import onnxscript
    import torch
    import transformers

    from tests.corpus import build_corpus

    start = time.perf_counter()
    qwen, whisper = (None, None) if args.no_ours else our_bundles(args.work)
    cases = build_corpus(args.work / "corpus", qwen3_asr=qwen, whisper=whisper)
    if args.cases:
        cases = [c for c in cases if c.name.startswith(tuple(args.cases))]
    log.info("corpus: %d cases in %.0f s", len(cases), time.perf_counter() - start)
    rows = []
    for case in cases:
        row: dict[str, Any] = {
            "name": case.name,
            "family": case.family,
            "source": case.source,
            "expected": case.expected,
            "tolerance": case.tolerance,
            "tools": {},
        }
        for tool in args.tools:
            out = args.work / "optimized" / tool / (case.name.replace("/", "__") + ".onnx")
            row["tools"][tool] = run_tool(tool, case, out)
        log.info(
            "%s: %s",
            case.name,
            ", ".join(
                f"{t} {sum(v['fused'] for v in r['sites'].values())}"
                f"/{sum(v['expected'] for v in r['sites'].values())}"
                for t, r in row["tools"].items()
            ),
        )
        rows.append(row)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__,
            "onnxscript": onnxscript.__version__,
        },
        "seconds": round(time.perf_counter() - start, 1),
        "tools": args.tools,
        "cases": rows,
        "summary": summarize(rows, args.tools),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path.write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
