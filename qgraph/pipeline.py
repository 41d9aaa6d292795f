"""Pipeline text: ``a,b{k=v,list=[x,y]},repeat<N>(c,d),named-pipeline``.

Grammar::

    pipeline := item ("," item)*
    item     := "repeat" "<" INT ">" "(" pipeline ")" | NAME options?
    options  := "{" [NAME "=" value ("," NAME "=" value)*] "}"
    value    := "[" [atom ("," atom)*] "]" | atom          atom: no , { } [ ] ( ) < > =

``parse`` gives a small syntax tree; ``str()`` of it prints canonical text, so
``str(parse(s))`` round-trips. ``expand`` resolves names against the registry (a name is either
a pass or a named pipeline, which expands recursively) into pass instances, and checks the
declared ordering constraints. ``repeat<N>(...)`` runs its body up to N times and stops early
once a round changes nothing.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from qgraph.errors import PipelineError
from qgraph.pass_api import QPass

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
ATOM_RE = re.compile(r"[^,{}\[\]()<>=\s]+")


@dataclass
class PassRef:
    name: str
    options: dict[str, str | list[str]] = field(default_factory=dict)
    column: int = 0

    def __str__(self) -> str:
        if not self.options:
            return self.name
        parts = []
        for k, v in self.options.items():
            parts.append(f"{k}=[{','.join(v)}]" if isinstance(v, list) else f"{k}={v}")
        return f"{self.name}{{{','.join(parts)}}}"


@dataclass
class Repeat:
    count: int
    body: Pipeline
    column: int = 0

    def __str__(self) -> str:
        return f"repeat<{self.count}>({self.body})"


@dataclass
class Pipeline:
    items: list[PassRef | Repeat]

    def __str__(self) -> str:
        return ",".join(str(i) for i in self.items)


@dataclass
class RepeatGroup:
    """An expanded ``repeat<N>(...)``: its passes run up to ``count`` times."""

    count: int
    body: list[QPass | RepeatGroup]


Step = QPass | RepeatGroup


class _Parser:
    def __init__(self, text: str, what: str) -> None:
        self.text, self.pos, self.what = text, 0, what

    def error(self, msg: str, pos: int | None = None) -> PipelineError:
        col = (self.pos if pos is None else pos) + 1
        return PipelineError(f"{self.what} column {col}: {msg}")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_ws()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            found = repr(self.text[self.pos]) if self.pos < len(self.text) else "end of text"
            raise self.error(f"expected '{ch}' but found {found}")
        self.pos += 1

    def match(self, regex: re.Pattern, what: str) -> tuple[str, int]:
        self.skip_ws()
        m = regex.match(self.text, self.pos)
        if not m:
            found = repr(self.text[self.pos]) if self.pos < len(self.text) else "end of text"
            raise self.error(f"expected {what} but found {found}")
        self.pos = m.end()
        return m.group(0), m.start()

    def pipeline(self, closing: str = "") -> Pipeline:
        items = [self.item()]
        while self.peek() == ",":
            self.pos += 1
            items.append(self.item())
        ch = self.peek()
        if ch != closing:
            if not ch:
                raise self.error(f"unbalanced '(': expected '{closing}' but found end of text")
            if ch == ")":
                raise self.error("unexpected ')': no '(' to close it")
            raise self.error(f"unexpected {ch!r}; passes are separated by ','")
        return Pipeline(items)

    def item(self) -> PassRef | Repeat:
        name, start = self.match(NAME_RE, "a pass or pipeline name")
        if name == "repeat" and self.peek() == "<":
            self.pos += 1
            count_text, cpos = self.match(re.compile(r"\d+"), "a repeat count")
            if int(count_text) < 1:
                raise self.error("repeat count must be at least 1", cpos)
            self.expect(">")
            self.expect("(")
            body = self.pipeline(closing=")")
            self.expect(")")
            return Repeat(int(count_text), body, start)
        ref = PassRef(name, column=start)
        if self.peek() == "{":
            self.pos += 1
            if self.peek() != "}":
                while True:
                    key, kpos = self.match(NAME_RE, "an option name")
                    if key in ref.options:
                        raise self.error(f"option '{key}' given twice", kpos)
                    self.expect("=")
                    ref.options[key] = self.value()
                    if self.peek() != ",":
                        break
                    self.pos += 1
            self.expect("}")
        return ref

    def value(self) -> str | list[str]:
        if self.peek() == "[":
            self.pos += 1
            items: list[str] = []
            if self.peek() != "]":
                while True:
                    items.append(self.match(ATOM_RE, "a list item")[0])
                    if self.peek() != ",":
                        break
                    self.pos += 1
            self.expect("]")
            return items
        return self.match(ATOM_RE, "an option value")[0]


def parse(text: str, what: str = "pipeline") -> Pipeline:
    """Parse pipeline text; PipelineError names the column of the first problem."""
    if not text or not text.strip():
        raise PipelineError(f"{what}: empty pipeline; name at least one pass (see 'qgraph passes')")
    p = _Parser(text, what)
    pipeline = p.pipeline()
    if p.pos < len(text.rstrip()):
        raise p.error(f"unexpected {text[p.pos]!r}")
    return pipeline


def expand(
    pipeline: Pipeline | str,
    registry,
    *,
    what: str = "pipeline",
    family: str | None = None,
    _stack: tuple[str, ...] = (),
) -> list[Step]:
    """Resolve names to pass instances (named pipelines recursively) and check ordering.

    ``family`` (a ``qgraph.families`` name): a named pipeline the family overrides
    (``Family.pipelines``, e.g. Whisper's ``default``) expands to the family's text instead.
    """
    if isinstance(pipeline, str):
        pipeline = parse(pipeline, what)
    steps: list[Step] = []
    for item in pipeline.items:
        if isinstance(item, Repeat):
            body = expand(item.body, registry, what=what, family=family, _stack=_stack)
            steps.append(RepeatGroup(item.count, body))
            continue
        if item.name in registry.pipelines:
            if item.options:
                raise PipelineError(
                    f"{what} column {item.column + 1}: '{item.name}' is a named pipeline and "
                    "takes no options"
                )
            if item.name in _stack:
                raise PipelineError(f"named pipeline '{item.name}' includes itself")
            inner = family_pipeline(family, item.name) or registry.pipelines[item.name].text
            where = f"pipeline '{item.name}'" + (f" for {family}" if family else "")
            stack = (*_stack, item.name)
            steps.extend(expand(inner, registry, what=where, family=family, _stack=stack))
            continue
        cls = registry.passes.get(item.name)
        if cls is None:
            raise PipelineError(
                f"{what} column {item.column + 1}: unknown pass '{item.name}'"
                + suggest(item.name, [*registry.passes, *registry.pipelines])
            )
        steps.append(cls.from_options(item.options))
    if not _stack:
        check_order(steps)
    return steps


def family_pipeline(family: str | None, name: str) -> str | None:
    """The text ``family`` gives the named pipeline ``name`` (None: the registry's)."""
    if not family:
        return None
    from qgraph.families import get_family

    return get_family(family).pipelines.get(name)


def flatten(steps: list[Step]) -> list[QPass]:
    out: list[QPass] = []
    for s in steps:
        out.extend(flatten(s.body) if isinstance(s, RepeatGroup) else [s])
    return out


def check_order(steps: list[Step]) -> None:
    """Raise if a pass runs before one it must follow (its ``ordering()``: the category order
    and its ``must_follow``), quoting the reason of that constraint (a pass name wins over its
    category); then let each pass check the passes after it (``check_followers``)."""
    passes = flatten(steps)
    for i, p in enumerate(passes):
        ordering = p.ordering()
        for later in passes[i + 1 :]:
            key = later.name if later.name in ordering else later.category
            if key in ordering:
                why = f" ({ordering[key]})" if ordering[key] else ""
                raise PipelineError(
                    f"'{later.name}' must run before '{p.name}'{why}; move '{later.name}' earlier "
                    f"in the pipeline or drop it"
                )
    for i, p in enumerate(passes):
        p.check_followers(passes[i + 1 :])


def to_text(steps: list[Step]) -> str:
    """Canonical text of an expanded pipeline (every pass with its non-default options)."""
    parts = []
    for s in steps:
        parts.append(
            f"repeat<{s.count}>({to_text(s.body)})" if isinstance(s, RepeatGroup) else str(s)
        )
    return ",".join(parts)


def suggest(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else "; run 'qgraph passes' for the list"
