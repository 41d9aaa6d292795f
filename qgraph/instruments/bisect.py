"""``--bisect-limit N``: run only the first N pass executions."""

from __future__ import annotations

from qgraph.instruments.base import Instrument
from qgraph.pass_api import QPass


class BisectLimit(Instrument):
    """Stops the run before the ``limit + 1``-th pass execution (0: run nothing)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def should_run(self, p: QPass, index: int) -> bool:
        return index <= self.limit
