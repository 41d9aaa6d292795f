"""The pass manager: runs an expanded pipeline on a bundle, with instruments around each pass.

For every pass execution the manager records a ``PassRecord`` (components, exact ``modified``,
seconds, statistics, a one-line diff summary per changed component, the unified diff when asked
for) and appends it to the bundle's history. Instruments never live inside passes:

- ``print_changed``/``dump_dir``: canonical text before/after each pass and its diff;
- ``verify_each``: ORT runs of each changed component before and after the pass, compared with
  the pass's declared tolerance (a failure names pass, component and output);
- ``bisect_limit``: stop after N pass executions, to find the pass that breaks something.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qgraph.bundle import Bundle
from qgraph.errors import PassFailure, QGraphError, VerificationError
from qgraph.instruments import diff as diffs
from qgraph.instruments import verify
from qgraph.instruments.textform import Facts, TensorHasher, model_text
from qgraph.pass_api import BundlePass, GraphPass, QPass
from qgraph.pipeline import RepeatGroup, Step

logger = logging.getLogger(__name__)


@dataclass
class Instruments:
    print_changed: str | None = None
    """None, "summary" or "diff"."""
    dump_dir: Path | None = None
    verify_each: bool = False
    verify_dims: dict[str, int] = field(default_factory=dict)
    bisect_limit: int | None = None
    on_record: Callable[[PassRecord], None] | None = None

    @property
    def wants_text(self) -> bool:
        return self.print_changed == "diff" or self.dump_dir is not None


@dataclass
class PassRecord:
    index: int
    text: str
    components: list[str]
    modified_components: list[str]
    seconds: float
    stats: dict[str, int]
    summaries: dict[str, str] = field(default_factory=dict)
    diffs: dict[str, str] = field(default_factory=dict)
    verified: dict[str, str] = field(default_factory=dict)

    @property
    def modified(self) -> bool:
        return bool(self.modified_components)

    def history_entry(self, p: QPass) -> dict[str, Any]:
        return {
            "pass": p.name,
            "text": self.text,
            "options": json.loads(json.dumps(p.option_values(), default=list)),
            "components": self.components,
            "modified": self.modified,
            "modified_components": self.modified_components,
            "seconds": round(self.seconds, 4),
            "stats": self.stats,
        }


@dataclass
class RunResult:
    records: list[PassRecord]
    stopped_before: str | None = None
    """Set when ``bisect_limit`` stopped the run: the pass that would have run next."""


class Manager:
    def __init__(self, bundle: Bundle, instruments: Instruments | None = None) -> None:
        self.bundle = bundle
        self.inst = instruments or Instruments()
        self.records: list[PassRecord] = []
        self.hasher = TensorHasher()
        self.stopped_before: str | None = None
        self._texts: dict[str, str] = {}

    # -- driving --------------------------------------------------------------------------------
    def run(self, steps: list[Step]) -> RunResult:
        if self.inst.dump_dir is not None:
            self._dump("00-input", {c: self._text(c) for c in self.bundle.components}, {})
        self._run_steps(steps)
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
        if self.inst.bisect_limit is not None and len(self.records) >= self.inst.bisect_limit:
            self.stopped_before = str(p)
            return False
        comps = (
            p.targets(self.bundle.roles())
            if isinstance(p, GraphPass)
            else list(self.bundle.components)
        )
        before = {c: Facts.of(self.bundle.components[c]) for c in comps}
        texts = {c: self._text(c) for c in comps} if self.inst.wants_text else {}
        with tempfile.TemporaryDirectory(prefix="qgraph-verify-") as scratch:
            snapshots = self._snapshot(p, comps, Path(scratch)) if self.inst.verify_each else {}
            p.reset_stats()
            start = time.perf_counter()
            changed = self._apply(p, comps)
            seconds = time.perf_counter() - start
            comps = [c for c in comps if c in self.bundle.components]
            record = PassRecord(
                len(self.records) + 1, str(p), comps, changed, seconds, dict(p.stats)
            )
            for c in changed:
                if c not in before:
                    continue
                record.summaries[c] = diffs.summarize(
                    before[c], Facts.of(self.bundle.components[c])
                )
                if self.inst.wants_text:
                    new = self._text(c)
                    record.diffs[c] = diffs.unified(
                        texts[c], new, f"{c} before {p.name}", f"{c} after {p.name}"
                    )
            if snapshots:
                self._verify(p, record, snapshots)
        if self.inst.dump_dir is not None:
            name = f"{record.index:02d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', p.name)}"
            self._dump(name, {c: self._texts.get(c, "") for c in comps}, record.diffs)
        self.records.append(record)
        self.bundle.history.append(record.history_entry(p))
        if self.inst.on_record is not None:
            self.inst.on_record(record)
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
                if p.run_on(self.bundle.components[c], roles[c]).modified:
                    changed.append(c)
            return changed
        except QGraphError:
            raise
        except Exception as err:
            where = f" on component '{c}'" if isinstance(p, GraphPass) else ""
            raise PassFailure(f"pass '{p}' failed{where}: {type(err).__name__}: {err}") from err

    # -- instruments ----------------------------------------------------------------------------
    def _text(self, component: str) -> str:
        text = model_text(self.bundle.components[component], self.hasher)
        self._texts[component] = text
        return text

    def _snapshot(self, p: QPass, comps: list[str], scratch: Path) -> dict[str, tuple]:
        """Run each component now and keep its outputs for the comparison after the pass."""
        out = {}
        for c in comps:
            model = self.bundle.components[c]
            feeds = verify.sample_inputs(model, self.inst.verify_dims)
            try:
                out[c] = (
                    verify.input_signature(model),
                    feeds,
                    verify.run_model(model, feeds, scratch),
                )
            except Exception as err:
                raise VerificationError(
                    f"--verify-each: component '{c}' does not run in ONNX Runtime before pass "
                    f"'{p}' ({str(err).splitlines()[0][:300]}); try --verify-dims"
                ) from None
        return out

    def _verify(self, p: QPass, record: PassRecord, snapshots: dict) -> None:
        for c in record.modified_components:
            if c not in snapshots:
                continue
            sig, feeds, before = snapshots[c]
            model = self.bundle.components[c]
            feeds = p.adapt_feeds(c, feeds, self.bundle)
            if {k for k, *_ in verify.input_signature(model)} != set(feeds):
                record.verified[c] = "skipped: the pass changed the component's inputs"
                continue
            before = p.adapt_reference(c, before)
            try:
                after = verify.run_model(model, feeds)
            except Exception as err:
                raise VerificationError(
                    f"--verify-each: pass '{p}' broke component '{c}': ONNX Runtime cannot run it "
                    f"({str(err).splitlines()[0][:300]})"
                ) from None
            problems = verify.compare(before, after, p.tolerance)
            if problems:
                raise VerificationError(
                    f"--verify-each: pass '{p}' on component '{c}': {problems[0]}"
                )
            record.verified[c] = "ok"

    def _dump(self, name: str, texts: dict[str, str], diff_texts: dict[str, str]) -> None:
        folder = self.inst.dump_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for c, text in texts.items():
            (folder / f"{c.replace('/', '_')}.txt").write_text(text)
        for c, d in diff_texts.items():
            (folder / f"{c.replace('/', '_')}.diff").write_text(d)


def run_pipeline(
    bundle: Bundle, steps: list[Step], instruments: Instruments | None = None
) -> RunResult:
    """Run ``steps`` on ``bundle`` in place and return what happened."""
    return Manager(bundle, instruments).run(steps)
