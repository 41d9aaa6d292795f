"""``qgraph passes``: list every registered pass with its summary and options."""

from __future__ import annotations

import typing
from pathlib import Path

from qgraph.commands import add_pass_module_option
from qgraph.pass_api import BundlePass, format_value
from qgraph.registry import Registry, registry_with

NAME = "passes"
README_BEGIN, README_END = "<!-- passes:begin", "<!-- passes:end -->"


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help="list the available passes and their options",
        description="List every registered pass (built-in, plugins, --pass-module files): its "
        "scope, category, one-line summary and options with type, default and help.",
    )
    add_pass_module_option(p)
    p.add_argument("--markdown", action="store_true", help="print a Markdown table (for docs)")
    p.add_argument(
        "--update-readme",
        type=Path,
        metavar="README.md",
        help="rewrite the table between the passes:begin/passes:end markers of this file",
    )
    p.set_defaults(run=run)


def type_name(t) -> str:
    origin = typing.get_origin(t)
    if origin is tuple:
        return f"list[{type_name(typing.get_args(t)[0])}]"
    if origin is typing.Literal:
        return "|".join(map(str, typing.get_args(t)))
    return getattr(t, "__name__", str(t)).replace("NoneType", "none")


def option_rows(cls) -> list[tuple[str, str, str, str]]:
    types = cls.option_types()
    return [
        (f.name, type_name(types[f.name]), format_value(f.default), f.metadata["help"])
        for f in cls.options()
    ]


def markdown_table(registry: Registry) -> str:
    lines = ["| pass | scope | category | what it does | options |", "|---|---|---|---|---|"]
    for name, cls in registry.passes.items():
        scope = "bundle" if issubclass(cls, BundlePass) else "graph"
        opts = "<br>".join(
            f"`{n}` ({t}, default `{d}`): {h}" for n, t, d, h in option_rows(cls) if n != "on"
        )
        lines.append(f"| `{name}` | {scope} | {cls.category} | {cls.summary()} | {opts or '—'} |")
    return "\n".join(lines)


def run(args) -> int:
    registry = registry_with(args.pass_module)
    if args.update_readme:
        text = args.update_readme.read_text()
        begin = text.index("\n", text.index(README_BEGIN)) + 1
        end = text.index(README_END)
        args.update_readme.write_text(text[:begin] + markdown_table(registry) + "\n" + text[end:])
        print(f"updated the pass table in {args.update_readme}")
        return 0
    if args.markdown:
        print(markdown_table(registry))
        return 0
    for name, cls in registry.passes.items():
        scope = "bundle pass" if issubclass(cls, BundlePass) else "graph pass"
        print(f"{name}  ({scope}, {cls.category})")
        print(f"    {cls.summary()}")
        for opt, typ, default, help_text in option_rows(cls):
            print(f"    {opt}: {typ} = {default}  -- {help_text}")
        if cls.ordering():
            print(f"    runs after: {', '.join(cls.ordering())}")
        print()
    print(
        "named pipelines: " + ", ".join(registry.pipelines) + " (see 'qgraph pipeline show NAME')"
    )
    return 0
