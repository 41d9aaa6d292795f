"""The pass manager: runs an expanded pipeline on a bundle, with instruments around each pass.

For every pass execution the manager records a ``PassRecord`` (components, exact ``modified``,
seconds, statistics) and appends it to the bundle's history. Everything else is an instrument
(``qgraph.instruments.base.Instrument``: ``before_pass`` / ``after_pass`` / ``after_failure``
hooks) in a list the manager loops over; ``Instruments`` builds that list from the CLI flags:

- ``ChangeSummary``: one-line summary of each change (always on);
- ``GraphText`` / ``DumpDir``: canonical text before/after each pass, its diff, dumps on disk
  (``print_changed="diff"``, ``dump_dir``);
- ``VerifyEach``: ORT runs of each changed component before and after the pass, compared with
  the pass's declared tolerance (``verify_each``);
- ``BisectLimit``: stop after N pass executions (``bisect_limit``);
- ``PeakMemory``: RSS high-water mark per pass (``memory``);
- ``HtmlReport``: records graph facts, rewritten sites and diffs into the history and writes
  the HTML compile report (``report``);
- ``OnRecord``: hands each finished record to a callback (the CLI's one line per pass).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qgraph.bundle import Bundle
from qgraph.errors import PassFailure, QGraphError
from qgraph.instruments.base import Instrument, PassContext, PassRecord
from qgraph.instruments.bisect import BisectLimit
from qgraph.instruments.callback import OnRecord
from qgraph.instruments.dump import DumpDir
from qgraph.instruments.memory import PeakMemory
from qgraph.instruments.report import HtmlReport
from qgraph.instruments.summary import ChangeSummary
from qgraph.instruments.text import GraphText
from qgraph.instruments.verify_each import VerifyEach
from qgraph.pass_api import BundlePass, GraphPass, QPass
from qgraph.pipeline import RepeatGroup, Step

__all__ = ["Instrument", "Instruments", "Manager", "PassRecord", "RunResult", "run_pipeline"]

logger = logging.getLogger(__name__)


@dataclass
class Instruments:
    """The instruments of ``qgraph compile``'s flags; ``build()`` makes the manager's list."""

    print_changed: str | None = None
    """None, "summary" or "diff"."""
    dump_dir: Path | None = None
    verify_each: bool = False
    verify_dims: dict[str, int] = field(default_factory=dict)
    bisect_limit: int | None = None
    on_record: Callable[[PassRecord], None] | None = None
    memory: bool = False
    report: Path | None = None
    """Write the HTML compile report here (``HtmlReport``)."""
    extra: list[Instrument] = field(default_factory=list)
    """More instruments (yours), placed between the built-in ones and ``PeakMemory``."""

    @property
    def wants_text(self) -> bool:
        return self.print_changed == "diff" or self.dump_dir is not None

    def build(self) -> list[Instrument]:
        """Outermost first: ``before_pass`` runs in this order, ``after_pass`` in reverse."""
        out: list[Instrument] = []
        if self.on_record is not None:
            out.append(OnRecord(self.on_record))  # sees the finished record
        if self.bisect_limit is not None:
            out.append(BisectLimit(self.bisect_limit))
        if self.report is not None:
            out.append(HtmlReport(self.report))  # reads diffs, verdicts, memory of inner ones
        text = GraphText() if self.wants_text else None
        if self.dump_dir is not None:
            out.append(DumpDir(self.dump_dir, text))  # writes what the inner ones computed
        if self.verify_each:
            out.append(VerifyEach(self.verify_dims))
        if text is not None:
            out.append(text)
        out.append(ChangeSummary())
        out.extend(self.extra)
        if self.memory:
            out.append(PeakMemory())  # nearest the pass: measures it alone
        return out


@dataclass
class RunResult:
    records: list[PassRecord]
    stopped_before: str | None = None
    """Set when an instrument (``bisect_limit``) stopped the run: the pass that would run next."""


class Manager:
    """Runs passes on ``bundle``, calling each instrument's hooks around every pass."""

    def __init__(
        self, bundle: Bundle, instruments: Instruments | Sequence[Instrument] | None = None
    ) -> None:
        self.bundle = bundle
        if instruments is None:
            instruments = Instruments()
        self.instruments: list[Instrument] = (
            instruments.build() if isinstance(instruments, Instruments) else list(instruments)
        )
        self.records: list[PassRecord] = []
        self.stopped_before: str | None = None

    # -- driving --------------------------------------------------------------------------------
    def run(self, steps: list[Step]) -> RunResult:
        for inst in self.instruments:
            inst.before_pipeline(self.bundle)
        self._run_steps(steps)
        for inst in self.instruments:
            inst.after_pipeline(self.records)
        return RunResult(self.records, self.stopped_before)

    def _run_steps(self, steps: list[Step]) -> bool:
        modified = False
        for step in steps:
            if self.stopped_before is not None:
                break
            if isinstance(step, RepeatGroup):
                for _ in range(step.count):
                    if not self._run_steps(step.body):
                        break
                    modified = True
            else:
                modified |= self._run_pass(step)
        return modified

    def _run_pass(self, p: QPass) -> bool:
        index = len(self.records) + 1
        if not all(inst.should_run(p, index) for inst in self.instruments):
            self.stopped_before = str(p)
            return False
        comps = (
            p.targets(self.bundle.roles())
            if isinstance(p, GraphPass)
            else list(self.bundle.components)
        )
        ctx = PassContext(self.bundle, p, index, comps)
        entered: list[Instrument] = []
        try:
            for inst in self.instruments:
                entered.append(inst)
                inst.before_pass(ctx)
            p.reset_stats()
            start = time.perf_counter()
            changed = self._apply(p, comps)
            seconds = time.perf_counter() - start
            kept = [c for c in comps if c in self.bundle.components]
            record = PassRecord(
                index, str(p), kept, changed, seconds, dict(p.stats), where=dict(p.sites)
            )
            for inst in reversed(self.instruments):
                inst.after_pass(ctx, record)
        except BaseException as err:
            for inst in reversed(entered):
                try:
                    inst.after_failure(ctx, err)
                except Exception:
                    logger.exception("instrument %s failed in after_failure", inst)
            raise
        self.records.append(record)
        self.bundle.history.append(record.history_entry(p))
        return record.modified

    def _apply(self, p: QPass, comps: list[str]) -> list[str]:
        """Run the pass; return the components it modified."""
        try:
            if isinstance(p, BundlePass):
                if not p(self.bundle).modified:
                    return []
                return [c for c in self.bundle.components if c in p.touched] or list(
                    self.bundle.components
                )
            roles = self.bundle.roles()
            changed = []
            for c in comps:
                if p.run_on(self.bundle.components[c], c, roles[c]).modified:
                    changed.append(c)
            return changed
        except QGraphError:
            raise
        except Exception as err:
            where = f" on component '{c}'" if isinstance(p, GraphPass) else ""
            raise PassFailure(f"pass '{p}' failed{where}: {type(err).__name__}: {err}") from err


def run_pipeline(
    bundle: Bundle,
    steps: list[Step],
    instruments: Instruments | Sequence[Instrument] | None = None,
) -> RunResult:
    """Run ``steps`` on ``bundle`` in place and return what happened."""
    return Manager(bundle, instruments).run(steps)
