"""Hands each finished ``PassRecord`` to a function (the CLI prints one line per pass with it)."""

from __future__ import annotations

from collections.abc import Callable

from qgraph.instruments.base import Instrument, PassContext, PassRecord


class OnRecord(Instrument):
    """Calls ``fn(record)`` once the record is complete: put it first in the list, so that its
    ``after_pass`` runs last (after the summaries, diffs and verdicts were added)."""

    def __init__(self, fn: Callable[[PassRecord], None]) -> None:
        self.fn = fn

    def after_pass(self, ctx: PassContext, record: PassRecord) -> None:
        self.fn(record)
