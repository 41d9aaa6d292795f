"""``qgraph pipeline show NAME|TEXT`` and ``qgraph pipeline list``."""

from __future__ import annotations

from qgraph.commands import add_pass_module_option
from qgraph.families import families
from qgraph.pipeline import RepeatGroup, expand, parse, to_text
from qgraph.registry import registry_with

NAME = "pipeline"


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help="show named pipelines and what a pipeline text expands to",
        description="'qgraph pipeline list' lists the named pipelines; 'qgraph pipeline show "
        "SPEC' prints the passes SPEC expands to, one per line, with their options.",
    )
    p.add_argument(
        "action", choices=["show", "list"], help="show: expand SPEC; list: named pipelines"
    )
    p.add_argument(
        "spec",
        nargs="?",
        default="default",
        help="a named pipeline or pipeline text (default: default)",
    )
    p.add_argument(
        "--family",
        metavar="NAME",
        help="expand as for a bundle of this family (families may override named pipelines)",
    )
    add_pass_module_option(p)
    p.set_defaults(run=run)


def _print_steps(steps, indent: str = "  ") -> None:
    for s in steps:
        if isinstance(s, RepeatGroup):
            print(f"{indent}repeat<{s.count}>:")
            _print_steps(s.body, indent + "  ")
        else:
            print(f"{indent}{s}")


def run(args) -> int:
    registry = registry_with(args.pass_module)
    if args.action == "list":
        for name, named in registry.pipelines.items():
            print(f"{name}: {named.text}\n    {named.summary}")
            for family in families().values():
                if name in family.pipelines:
                    print(f"    for family {family.name}: {family.pipelines[name]}")
        return 0
    steps = expand(parse(args.spec, "pipeline"), registry, family=args.family)
    named = registry.pipelines.get(args.spec)
    print(
        f"{args.spec}"
        + (f" for {args.family}" if args.family else "")
        + (f": {named.summary}" if named else "")
    )
    _print_steps(steps)
    print(f"as text: {to_text(steps)}")
    if not args.family:
        for family in families().values():
            own = expand(parse(args.spec, "pipeline"), registry, family=family.name)
            if to_text(own) != to_text(steps):
                text = family.pipelines.get(args.spec) or to_text(own)
                print(f"for family {family.name} (its own recipe): {text}")
    return 0
