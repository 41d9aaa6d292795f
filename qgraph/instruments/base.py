"""The instrument protocol: hooks the pass manager calls around every pass execution.

An instrument observes passes from outside (the MLIR ``PassInstrumentation`` / LLVM
``PassInstrumentationCallbacks`` shape). The manager holds a list of them and, for each pass:

1. ``should_run(p, index)`` on every instrument; any ``False`` stops the run before ``p``
   (``--bisect-limit``);
2. ``before_pass(ctx)`` in list order;
3. runs the pass (timed) and builds the ``PassRecord``;
4. ``after_pass(ctx, record)`` in *reverse* list order, so the instrument nearest the pass
   (last in the list) sees it first and outer instruments see what inner ones added to the
   record (a dump writes the diffs that the text instrument computed);
5. on an exception from the pass or from any hook: ``after_failure(ctx, error)`` in reverse
   order on every instrument whose ``before_pass`` ran (it may follow a partial
   ``after_pass`` when another instrument rejected the pass, e.g. ``--verify-each``), then the
   error propagates.

``before_pipeline(bundle)`` and ``after_pipeline(records)`` frame the whole run. Every hook has
a no-op default, so an instrument overrides only what it needs. Anything an instrument wants in
the bundle's history goes into ``record.extra`` under its own key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qgraph.bundle import Bundle
    from qgraph.pass_api import QPass


@dataclass
class PassRecord:
    """What one pass execution did; ``history_entry`` is what the manifest keeps of it."""

    index: int
    text: str
    components: list[str]
    modified_components: list[str]
    seconds: float
    stats: dict[str, int]
    summaries: dict[str, str] = field(default_factory=dict)
    diffs: dict[str, str] = field(default_factory=dict)
    verified: dict[str, str] = field(default_factory=dict)
    where: dict[str, list[str]] = field(default_factory=dict)
    """Where statistics happened: ``{key: ["component: node", ...]}`` (``QPass.count(where=)``,
    the first ``MAX_SITES`` of each)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Instrument-owned, JSON-serialisable entries copied into the history entry by key."""

    @property
    def modified(self) -> bool:
        return bool(self.modified_components)

    def history_entry(self, p: QPass) -> dict[str, Any]:
        entry = {
            "pass": p.name,
            "text": self.text,
            "options": json.loads(json.dumps(p.option_values(), default=list)),
            "components": self.components,
            "modified": self.modified,
            "modified_components": self.modified_components,
            "seconds": round(self.seconds, 4),
            "stats": self.stats,
        }
        if self.where:
            entry["where"] = self.where
        entry.update(self.extra)
        return entry


@dataclass
class PassContext:
    """The pass execution the hooks are called for."""

    bundle: Bundle
    qpass: QPass
    index: int
    """1-based number of this pass execution in the run."""
    components: list[str]
    """The components the pass targets (before it runs)."""


class Instrument:
    """Base class of instruments: every hook is a no-op; override the ones you need."""

    def before_pipeline(self, bundle: Bundle) -> None:
        """Called once before the first pass."""

    def should_run(self, p: QPass, index: int) -> bool:
        """Return False to stop the run before ``p`` (the ``index``-th execution)."""
        return True

    def before_pass(self, ctx: PassContext) -> None:
        """Called just before the pass runs."""

    def after_pass(self, ctx: PassContext, record: PassRecord) -> None:
        """Called after the pass ran; may add to ``record`` or raise to reject the pass."""

    def after_failure(self, ctx: PassContext, error: BaseException) -> None:
        """Called when the pass or a hook raised; release resources here. Must not raise."""

    def after_pipeline(self, records: list[PassRecord]) -> None:
        """Called once after the last pass (not when the run failed)."""
