"""``qgraph diff A B``: compare two models or bundles component by component."""

from __future__ import annotations

from pathlib import Path

from qgraph.bundle import Bundle
from qgraph.instruments import diff as diffs
from qgraph.instruments.textform import Facts, TensorHasher, model_text

NAME = "diff"


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help="compare two models or bundles",
        description="Print a unified diff of the canonical graph text (weights summarised as "
        "dtype/shape/hash) of each component in A and B, plus one summary line per component. "
        "Exit status 0 if they are the same graph, 1 if they differ.",
    )
    p.add_argument("a", type=Path, metavar="A", help="bundle folder or .onnx file")
    p.add_argument("b", type=Path, metavar="B", help="bundle folder or .onnx file")
    p.add_argument("--summary", action="store_true", help="print only the summary lines")
    p.set_defaults(run=run)


def run(args) -> int:
    a, b = Bundle.load(args.a), Bundle.load(args.b)
    hasher = TensorHasher()
    single = len(a.components) == 1 and len(b.components) == 1
    pairs = (
        [(next(iter(a.components)), next(iter(b.components)))]
        if single
        else [(c, c) for c in a.components if c in b.components]
    )
    differ = False
    for ca, cb in pairs:
        ma, mb = a.components[ca], b.components[cb]
        ta, tb = model_text(ma, hasher), model_text(mb, hasher)
        name = ca if ca == cb else f"{ca} vs {cb}"
        if ta == tb:
            print(f"{name}: identical")
            continue
        differ = True
        print(f"{name}: {diffs.summarize(Facts.of(ma), Facts.of(mb))}")
        if not args.summary:
            print(diffs.unified(ta, tb, f"a/{ca}", f"b/{cb}"), end="")
    if not single:
        for c in a.components:
            if c not in b.components:
                differ = True
                print(f"{c}: only in {args.a}")
        for c in b.components:
            if c not in a.components:
                differ = True
                print(f"{c}: only in {args.b}")
    return 1 if differ else 0
