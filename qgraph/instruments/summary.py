"""One-line change summaries: node, initializer, byte and op-count deltas per changed component."""

from __future__ import annotations

from qgraph.instruments import diff as diffs
from qgraph.instruments.base import Instrument, PassContext, PassRecord
from qgraph.instruments.textform import Facts


class ChangeSummary(Instrument):
    """Fills ``record.summaries`` (``nodes 215 -> 157 (-58), ...``) for every changed component."""

    def __init__(self) -> None:
        self._before: dict[str, Facts] = {}

    def before_pass(self, ctx: PassContext) -> None:
        self._before = {c: Facts.of(ctx.bundle.components[c]) for c in ctx.components}

    def after_pass(self, ctx: PassContext, record: PassRecord) -> None:
        for c in record.modified_components:
            if c in self._before:
                record.summaries[c] = diffs.summarize(
                    self._before[c], Facts.of(ctx.bundle.components[c])
                )
        self._before = {}

    def after_failure(self, ctx: PassContext, error: BaseException) -> None:
        self._before = {}
