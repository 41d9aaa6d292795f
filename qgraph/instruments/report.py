"""``--report FILE.html``: record what the HTML compile report needs into the history, then
render it.

The page is rendered from the bundle's manifest history alone (``qgraph.instruments.report_html``),
so ``qgraph report BUNDLE`` draws the same page later without re-running anything. What the
history does not already hold, this instrument adds under ``entry["report"]``, compactly:

- ``input`` (first pass of a run only): facts of every component before the run and the input
  manifest (family, tool versions, file hashes);
- ``after``: facts of each modified component after the pass (op-type counts, nodes,
  initializers, bytes, bytes per dtype); unmodified components carry over;
- ``sites``: the rewritten neighbourhoods of each modified component (a few sites, a few nodes
  each; ``qgraph.instruments.neighbourhood``);
- ``diff``: the unified graph diff of each modified component, cut at ``max_diff_lines`` (the text
  form without weight hashes unless ``--print-changed=diff``/``--dump-dir`` computed it anyway);
- ``verified``: the ``--verify-each`` verdicts.

Put it outside the instruments whose results it reads (``Instruments.build`` does).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import onnx_ir as ir

from qgraph.bundle import Bundle
from qgraph.instruments import diff as diffs
from qgraph.instruments import neighbourhood
from qgraph.instruments.base import Instrument, PassContext, PassRecord
from qgraph.instruments.textform import model_text

logger = logging.getLogger(__name__)


def component_facts(model: ir.Model) -> dict[str, Any]:
    """Op-type counts, node/initializer counts, weight bytes in total and per dtype."""
    ops: Counter = Counter()
    for node in model.graph.all_nodes():
        plain = node.domain in ("", "ai.onnx")
        ops[node.op_type if plain else f"{node.domain}::{node.op_type}"] += 1
    dtypes: Counter = Counter()
    inits = 0
    for g in model.graphs():
        for v in g.initializers.values():
            inits += 1
            if v.const_value is not None:
                dtypes[v.const_value.dtype.name] += v.const_value.nbytes
    return {
        "nodes": sum(ops.values()),
        "initializers": inits,
        "bytes": sum(dtypes.values()),
        "ops": dict(sorted(ops.items())),
        "dtypes": dict(sorted(dtypes.items())),
    }


def manifest_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the report shows of a manifest: family, format, tool versions, file hashes."""
    return {
        "family": manifest.get("family"),
        "format_version": manifest.get("format_version"),
        "tools": manifest.get("tools", {}),
        "files": manifest.get("files", {}),
    }


class _NoHash:
    """Weights as dtype/shape only: the report's diffs must not read every weight."""

    def __call__(self, t: ir.TensorProtocol) -> str:
        return "-"


class HtmlReport(Instrument):
    def __init__(self, path: Path | None = None, *, max_diff_lines: int = 150) -> None:
        self.path = None if path is None else Path(path)
        self.max_diff_lines = max_diff_lines
        self._bundle: Bundle | None = None
        self._input: dict[str, Any] | None = None
        self._snap: dict[str, list] = {}
        self._texts: dict[str, str] = {}

    # -- hooks ------------------------------------------------------------------------------
    def before_pipeline(self, bundle: Bundle) -> None:
        self._bundle = bundle
        self._input = {
            "components": {c: component_facts(m) for c, m in bundle.components.items()},
            "manifest": manifest_summary(bundle.manifest),
        }

    def before_pass(self, ctx: PassContext) -> None:
        comps = ctx.bundle.components
        self._snap = {c: neighbourhood.snapshot(comps[c]) for c in ctx.components}
        self._texts = {c: model_text(comps[c], _NoHash()) for c in ctx.components}

    def after_pass(self, ctx: PassContext, record: PassRecord) -> None:
        comps = ctx.bundle.components
        entry: dict[str, Any] = {}
        if self._input is not None:
            entry["input"], self._input = self._input, None
        changed = [c for c in record.modified_components if c in comps]
        entry["after"] = {c: component_facts(comps[c]) for c in changed}
        entry["sites"] = {
            c: neighbourhood.changed_sites(self._snap[c], neighbourhood.snapshot(comps[c]))
            for c in changed
            if c in self._snap
        }
        entry["diff"] = {}
        for c in changed:
            if c in record.diffs:
                text = record.diffs[c]
            elif c in self._texts:
                text = diffs.unified(
                    self._texts[c],
                    model_text(comps[c], _NoHash()),
                    f"{c} before {ctx.qpass.name}",
                    f"{c} after {ctx.qpass.name}",
                )
            else:
                continue
            lines = text.splitlines()
            entry["diff"][c] = {
                "text": "\n".join(lines[: self.max_diff_lines]),
                "lines": len(lines),
            }
        if record.verified:
            entry["verified"] = dict(record.verified)
        if record.summaries:
            entry["summaries"] = dict(record.summaries)
        record.extra["report"] = json.loads(json.dumps(entry))
        self._snap, self._texts = {}, {}

    def after_failure(self, ctx: PassContext, error: BaseException) -> None:
        self._snap, self._texts = {}, {}

    def after_pipeline(self, records: list[PassRecord]) -> None:
        """Write the page now (file hashes are unknown until the bundle is saved: the CLI
        renders it again from the saved manifest with ``write``)."""
        if self.path is not None and self._bundle is not None:
            b = self._bundle
            unsaved = {
                "family": b.family,
                "components": {c: {} for c in b.components},
                "pipeline": b.history,
            }
            self.write(self.path, unsaved)

    # -- output -----------------------------------------------------------------------------
    def write(self, path: Path, manifest: dict[str, Any]) -> Path:
        """Render the page for ``manifest`` (its ``pipeline`` history) into ``path``."""
        from qgraph.instruments.report_html import render

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(manifest), encoding="utf-8")
        logger.info("report written to %s (%d bytes)", path, path.stat().st_size)
        return path
