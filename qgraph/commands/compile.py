"""``qgraph compile IN -o OUT --passes SPEC``: run a pipeline on a bundle and save the result."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qgraph.bundle import Bundle, check_output
from qgraph.commands import add_pass_module_option
from qgraph.commands._accuracy import add_accuracy_options, save_checked_from_args
from qgraph.errors import PipelineError
from qgraph.families import family_of
from qgraph.instruments.diff import human_bytes
from qgraph.instruments.report import HtmlReport
from qgraph.manager import Instruments, PassRecord, run_pipeline
from qgraph.pipeline import expand, flatten, to_text
from qgraph.registry import registry_with

NAME = "compile"


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help="run a pass pipeline on a model or bundle and write the result",
        description="Load IN (a bundle folder, a folder of .onnx files or one .onnx file), run "
        "the passes of --passes on it in order and write the result to OUT atomically. The input "
        "is never modified; a failure or Ctrl-C leaves no partial output. One line per pass is "
        "printed: what it changed and how long it took.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  qgraph compile raw/ -o out/ --passes default\n"
        "  qgraph compile raw/ -o out/ --passes 'fold-constants,cse{on=[encoder]}' "
        "--print-changed=diff\n"
        "  qgraph compile raw/ -o out/ --passes default,my-pass --pass-module my_passes.py",
    )
    p.add_argument("input", type=Path, metavar="IN", help="bundle folder or .onnx file to read")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="OUT",
        help="output bundle folder (must not exist, unless --force)",
    )
    p.add_argument(
        "--passes",
        default="default",
        metavar="SPEC",
        help="pipeline text, e.g. 'default' or 'hygiene,cse{on=[encoder]}' "
        "(see 'qgraph passes' and 'qgraph pipeline show NAME'; default: default)",
    )
    add_pass_module_option(p)
    p.add_argument(
        "--print-changed",
        nargs="?",
        const="diff",
        choices=["diff", "summary"],
        help="after each pass that changed something, print its graph diff "
        "(default) or only the one-line summary",
    )
    p.add_argument(
        "--dump-dir",
        type=Path,
        metavar="DIR",
        help="write the graph text (no weight bytes) after each pass and its diff here",
    )
    p.add_argument("--timing", action="store_true", help="print a table of seconds per pass")
    p.add_argument(
        "--memory",
        action="store_true",
        help="print a table of the peak RSS (high-water mark) while each pass ran; the values "
        "also go into the manifest history",
    )
    p.add_argument(
        "--stats",
        action="store_true",
        help="print each pass's statistics (sites rewritten, near-misses with reasons)",
    )
    p.add_argument(
        "--verify-each",
        action="store_true",
        help="run each changed component in ONNX Runtime before and after every pass "
        "on generated inputs and check the pass's declared tolerance",
    )
    p.add_argument(
        "--verify-dims",
        default="",
        metavar="DIM=N,...",
        help="sizes for symbolic dims in --verify-each inputs (default: batch 1, others 8)",
    )
    p.add_argument(
        "--bisect-limit",
        type=int,
        metavar="N",
        help="run only the first N pass executions (to find the pass that breaks a model)",
    )
    p.add_argument(
        "--report",
        type=Path,
        metavar="FILE.html",
        help="write a self-contained HTML compile report (pipeline table, charts, rewritten "
        "neighbourhoods, diffs, manifests); 'qgraph report OUT' redraws it later",
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    add_accuracy_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors and the result")
    p.set_defaults(run=run)


def parse_dims(text: str) -> dict[str, int]:
    dims = {}
    for part in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit():
            raise PipelineError(f"--verify-dims: expected DIM=N, got {part!r}")
        dims[key.strip()] = int(value)
    return dims


def run(args) -> int:
    registry = registry_with(args.pass_module)
    family = family_of(args.input).name  # a family may give 'default' its own recipe
    steps = expand(args.passes, registry, what="--passes", family=family)
    if args.bisect_limit is not None and args.bisect_limit < 0:
        raise PipelineError("--bisect-limit must be 0 or more")
    check_output(args.output, args.input, overwrite=args.force)  # before any work
    bundle = Bundle.load(args.input)
    total = len(flatten(steps))
    out = sys.stdout

    def on_record(r: PassRecord) -> None:
        if not args.quiet:
            print_record(r, args.print_changed, out)

    if not args.quiet:
        print(
            f"compiling {args.input} ({len(bundle.components)} components: "
            f"{', '.join(bundle.components)}) with {total} passes: {to_text(steps)}",
            file=out,
        )
    inst = Instruments(
        print_changed=args.print_changed,
        dump_dir=args.dump_dir,
        verify_each=args.verify_each,
        verify_dims=parse_dims(args.verify_dims),
        bisect_limit=args.bisect_limit,
        on_record=on_record,
        memory=args.memory,
        report=args.report,
    )
    result = run_pipeline(bundle, steps, inst)
    if result.stopped_before is not None:
        print(
            f"bisect: stopped after {len(result.records)} passes; next would be "
            f"'{result.stopped_before}'",
            file=out,
        )
    if args.timing:
        print_timing(result.records)
    if args.stats:
        print_stats(result.records)
    if args.memory:
        print_memory(result.records)
    if args.check_accuracy is None:
        path = bundle.save(args.output, overwrite=args.force)
    else:
        path = save_checked_from_args(bundle, args)
    size = sum(f["bytes"] for f in bundle.manifest["files"].values())
    print(f"wrote {path} ({len(bundle.components)} components, {human_bytes(size)})", file=out)
    if args.report is not None:
        report = HtmlReport().write(args.report, bundle.manifest)
        print(f"wrote {report} ({human_bytes(report.stat().st_size)})", file=out)
    return 0


def print_record(r: PassRecord, print_changed: str | None, out) -> None:
    """One line per pass (what changed, seconds), then summaries, diffs and verdicts."""
    state = "changed" if r.modified else "no change"
    where = ",".join(r.modified_components) if r.modified else ",".join(r.components)
    print(f"[{r.index:>2}] {r.text:<32} {state:<9} {r.seconds:7.2f}s  {where}", file=out)
    for comp, summary in r.summaries.items():
        print(f"       {comp}: {summary}", file=out)
        if print_changed == "diff" and comp in r.diffs:
            d = r.diffs[comp]
            print(d, file=out, end="" if d.endswith("\n") else "\n")
    for comp, verdict in r.verified.items():
        print(f"       verify {comp}: {verdict}", file=out)


def print_timing(records: list[PassRecord]) -> None:
    total = sum(r.seconds for r in records) or 1e-9
    print("\ntiming (seconds per pass):")
    for r in records:
        print(f"  {r.seconds:8.3f}s {100 * r.seconds / total:5.1f}%  {r.text}")
    print(f"  {total:8.3f}s 100.0%  total")


def print_stats(records: list[PassRecord]) -> None:
    print("\nstatistics:")
    for r in records:
        if not r.stats:
            continue
        items = ", ".join(f"{k}={v}" for k, v in sorted(r.stats.items()))
        print(f"  {r.text}: {items}")
        for key, sites in sorted(r.where.items()):
            more = r.stats[key] - len(sites)
            at = ", ".join(sites) + (f" and {more} more" if more > 0 else "")
            print(f"    {key} at {at}")


def print_memory(records: list[PassRecord]) -> None:
    """Peak RSS per pass, its growth over the RSS when the pass began, and the highest peak."""
    rows = [(r, r.extra["memory"]) for r in records if "memory" in r.extra]
    if not rows:
        return
    print(f"\nmemory (peak RSS per pass, {rows[0][1]['method']}):")
    for r, m in rows:
        grew = m["peak_rss"] - m["start_rss"]
        print(f"  {human_bytes(m['peak_rss']):>9} {'+' + human_bytes(grew):>10}  {r.text}")
    peak = max(m["peak_rss"] for _, m in rows)
    print(f"  {human_bytes(peak):>9} {'':>10}  highest")
