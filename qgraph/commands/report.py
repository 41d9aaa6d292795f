"""``qgraph report BUNDLE [-o FILE.html]``: the HTML compile report from a manifest's history."""

from __future__ import annotations

import json
from pathlib import Path

from qgraph.bundle import MANIFEST
from qgraph.errors import BundleError
from qgraph.instruments.diff import human_bytes
from qgraph.instruments.report import HtmlReport

NAME = "report"


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help="draw the HTML compile report of a compiled bundle from its manifest history",
        description="Render the page 'qgraph compile --report' writes, from BUNDLE's qgraph.json "
        "alone (nothing is re-run). Graph facts, rewritten neighbourhoods and diffs are there "
        "only for passes compiled with --report; the rest (passes, options, seconds, "
        "statistics, peak RSS with --memory, hashes) is always there.",
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="a bundle folder with qgraph.json")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE.html",
        help="where to write the page (default: BUNDLE/../<bundle name>-report.html)",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    path = args.bundle / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{args.bundle}: no {MANIFEST}; is it a compiled bundle?") from None
    except (OSError, ValueError) as err:
        raise BundleError(f"{path}: unreadable manifest ({err})") from None
    out = args.output or args.bundle.resolve().parent / f"{args.bundle.resolve().name}-report.html"
    written = HtmlReport().write(out, manifest)
    print(f"wrote {written} ({human_bytes(written.stat().st_size)})")
    return 0
