"""Canonical graph text before and after each pass, and the unified diff of each change."""

from __future__ import annotations

from qgraph.bundle import Bundle
from qgraph.instruments import diff as diffs
from qgraph.instruments.base import Instrument, PassContext, PassRecord
from qgraph.instruments.textform import TensorHasher, model_text


class GraphText(Instrument):
    """Fills ``record.diffs`` for every changed component (``--print-changed=diff``).

    ``texts`` holds the latest text of every component it has seen, for the dump instrument;
    weights are hashed once per tensor object for the whole run.
    """

    def __init__(self, hasher: TensorHasher | None = None) -> None:
        self.hasher = hasher or TensorHasher()
        self.texts: dict[str, str] = {}
        self._before: dict[str, str] = {}

    def text(self, bundle: Bundle, component: str) -> str:
        """The canonical text of ``component`` now (and remember it in ``texts``)."""
        text = model_text(bundle.components[component], self.hasher)
        self.texts[component] = text
        return text

    def before_pass(self, ctx: PassContext) -> None:
        self._before = {c: self.text(ctx.bundle, c) for c in ctx.components}

    def after_pass(self, ctx: PassContext, record: PassRecord) -> None:
        name = ctx.qpass.name
        for c in record.modified_components:
            if c in self._before:
                record.diffs[c] = diffs.unified(
                    self._before[c],
                    self.text(ctx.bundle, c),
                    f"{c} before {name}",
                    f"{c} after {name}",
                )
        self._before = {}

    def after_failure(self, ctx: PassContext, error: BaseException) -> None:
        self._before = {}
