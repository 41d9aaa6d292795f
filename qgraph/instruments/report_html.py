"""The HTML compile report, rendered from a manifest and its pipeline history alone.

``render(manifest)`` returns one self-contained page (inline CSS, inline SVG, a few lines of
inline script to sort tables): summary cards, then per compile run the pipeline table, charts
(op types per component after each pass, bytes per component and dtype, seconds per pass), a
collapsible section per changed pass with the rewritten neighbourhoods and the graph diff, the
accuracy check (any ``"accuracy"`` entry in the history or the manifest) and the input and
output manifests. History entries written without ``--report`` still fill the table (pass,
options, modified, seconds, statistics, peak RSS); graph facts need the ``report`` entries.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from qgraph import __version__
from qgraph.instruments import svg
from qgraph.instruments.diff import human_bytes
from qgraph.instruments.report_assets import CSS, SCRIPT

TOP_OPS = 9


def _split_runs(history: list[dict]) -> list[list[dict]]:
    runs: list[list[dict]] = []
    for entry in history:
        if not runs or "input" in entry.get("report", {}):
            runs.append([])
        runs[-1].append(entry)
    return runs


def _totals(state: dict[str, dict]) -> dict[str, int]:
    keys = ("nodes", "initializers", "bytes")
    return {k: sum(f[k] for f in state.values()) for k in keys}


def _arrow(a: int, b: int, fmt=str) -> tuple[str, str]:
    if a == b:
        text = fmt(a)
    elif fmt(a) == fmt(b):
        text = f"{fmt(b)} ({'+' if b > a else '-'}{fmt(abs(b - a))})"
    else:
        text = f"{fmt(a)} → {fmt(b)}"
    return text, str(b)


def _options(entry: dict) -> str:
    opts = entry.get("options", {})
    parts = [
        f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
        for k, v in opts.items()
        if not (k == "on" and not v)
    ]
    return ", ".join(parts)


def _stats_cell(entry: dict) -> str:
    """Each statistic, with where it happened (``component: node``, the first few)."""
    where = entry.get("where", {})
    items = []
    for key, n in sorted(entry.get("stats", {}).items()):
        cls = "miss" if key.startswith("skipped:") else ""
        at = where.get(key, [])
        more = f" and {n - len(at)} more" if at and n > len(at) else ""
        loc = f' <span class="where">(at {escape(", ".join(at))}{more})</span>' if at else ""
        items.append(f'<div class="{cls}">{escape(key)} = {n}{loc}</div>')
    return "".join(items)


def _verify_cell(entry: dict) -> str:
    verified = entry.get("report", {}).get("verified", {})
    out = []
    for c, v in verified.items():
        cls = "ok" if v == "ok" else "miss"
        out.append(f'<div class="{cls}">{escape(c)}: {escape(v)}</div>')
    return "".join(out)


class _Run:
    """One compile run: its entries with the component facts before and after each pass."""

    def __init__(self, entries: list[dict]) -> None:
        self.entries = entries
        first = entries[0].get("report", {}).get("input", {})
        self.input_manifest = first.get("manifest")
        self.has_facts = bool(first.get("components"))
        state = {c: dict(f) for c, f in first.get("components", {}).items()}
        self.states = [state]
        for e in entries:
            state = dict(state)
            state.update(e.get("report", {}).get("after", {}))
            self.states.append(state)

    @property
    def labels(self) -> list[str]:
        return ["input"] + [f"{i} {e['text']}" for i, e in enumerate(self.entries, 1)]

    def components(self) -> list[str]:
        names: list[str] = []
        for s in self.states:
            names += [c for c in s if c not in names]
        return names


def _table(run: _Run, index0: int) -> str:
    head = (
        "<tr><th>#</th><th>pass</th><th>components touched</th><th>modified</th>"
        "<th>seconds</th><th>peak RSS</th><th>nodes</th><th>initializers</th><th>bytes</th>"
        "<th>verify</th><th>statistics (near misses: skipped, where)</th></tr>"
    )
    rows = []
    for i, e in enumerate(run.entries):
        before, after = _totals(run.states[i]), _totals(run.states[i + 1])
        mem = e.get("memory")
        peak = (
            f'<td class="num peak" data-sort="{mem["peak_rss"]}">'
            f"{human_bytes(mem['peak_rss'])}</td>"
            if mem
            else '<td class="num peak" data-sort="0">—</td>'
        )
        cells = []
        for key, fmt in (("nodes", str), ("initializers", str), ("bytes", human_bytes)):
            if run.has_facts:
                text, value = _arrow(before[key], after[key], fmt)
                cells.append(
                    f'<td class="num {key}" data-before="{before[key]}" data-after="{after[key]}" '
                    f'data-sort="{value}">{text}</td>'
                )
            else:
                cells.append(f'<td class="num {key}" data-sort="0">—</td>')
        modified = e.get("modified", False)
        touched = ", ".join(e.get("modified_components", [])) or "—"
        rows.append(
            f'<tr class="{"changed" if modified else "nochange"}" data-pass="{escape(e["pass"])}">'
            f'<td class="num" data-sort="{index0 + i + 1}">{index0 + i + 1}</td>'
            f'<td class="pass">{escape(e["text"])}<div class="opts">{escape(_options(e))}</div>'
            f'</td><td class="touched">{escape(touched)}</td>'
            f'<td class="modified">{"yes" if modified else "no"}</td>'
            f'<td class="num seconds" data-sort="{e.get("seconds", 0)}">'
            f"{e.get('seconds', 0):.3f}</td>{peak}{''.join(cells)}"
            f'<td class="verify">{_verify_cell(e)}</td><td class="stats">{_stats_cell(e)}</td></tr>'
        )
    return (
        f'<table class="sortable pipeline"><thead>{head}</thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _charts(run: _Run) -> str:
    charts = []
    labels = run.labels
    if run.has_facts:
        for comp in run.components():
            counts = [s.get(comp, {}).get("ops", {}) for s in run.states]
            peak: dict[str, int] = {}
            for c in counts:
                for op, n in c.items():
                    peak[op] = max(peak.get(op, 0), n)
            last = counts[-1]
            top = sorted(peak, key=lambda op: -peak[op])[: TOP_OPS - 4]
            top += [op for op in sorted(last, key=lambda op: -last[op]) if op not in top][:4]
            series = {op: [c.get(op, 0) for c in counts] for op in top}
            rest = [sum(n for op, n in c.items() if op not in top) for c in counts]
            if any(rest):
                series["other"] = rest
            charts.append(svg.stacked_bars(f"{comp}: op types after each pass", labels, series))
        series = {}
        for comp in run.components():
            dtypes = sorted({d for s in run.states for d in s.get(comp, {}).get("dtypes", {})})
            for d in dtypes:
                series[f"{comp} {d}"] = [
                    s.get(comp, {}).get("dtypes", {}).get(d, 0) for s in run.states
                ]
        charts.append(
            svg.stacked_bars(
                "weight bytes per component and dtype", labels, series, value_format=human_bytes
            )
        )
    charts.append(
        svg.hbars(
            "seconds per pass",
            labels[1:],
            [e.get("seconds", 0) for e in run.entries],
            value_format=lambda v: f"{v:.3f}s",
        )
    )
    return f'<div class="charts">{"".join(charts)}</div>'


def _diff_html(text: str) -> str:
    out = []
    for line in text.splitlines():
        cls = ""
        if line.startswith(("+++", "---")):
            cls = "file"
        elif line.startswith("+"):
            cls = "add"
        elif line.startswith("-"):
            cls = "del"
        elif line.startswith("@@"):
            cls = "hunk"
        out.append(f'<span class="{cls}">{escape(line)}</span>' if cls else escape(line) + "\n")
    return "".join(out)


def _changes(run: _Run, index0: int) -> str:
    parts = []
    for i, e in enumerate(run.entries):
        rep = e.get("report", {})
        if not e.get("modified") or not rep:
            continue
        inner = []
        for comp in e.get("modified_components", []):
            summary = rep.get("summaries", {}).get(comp, "")
            inner.append(f"<h4>{escape(comp)}</h4><div class='sub'>{escape(summary)}</div>")
            sites = rep.get("sites", {}).get(comp)
            if sites and sites["sites"]:
                shown = len(sites["sites"])
                inner.append(
                    f"<div class='sub'>{sites['count']} rewritten site(s); "
                    f"{'the first ' + str(shown) if shown < sites['count'] else 'all'} drawn "
                    "(removed/changed nodes red, added green, grey: direct neighbours)</div>"
                )
                for site in sites["sites"]:
                    inner.append(
                        "<div class='sites'>"
                        f"<div class='side'><div class='lbl'>before ({site['removed']} removed)"
                        f"</div>{svg.layered_graph(site['before'], changed_class='removed')}</div>"
                        f"<div class='side'><div class='lbl'>after ({site['added']} added)</div>"
                        f"{svg.layered_graph(site['after'], changed_class='added')}</div></div>"
                    )
            d = rep.get("diff", {}).get(comp)
            if d:
                cut = (
                    f", first {len(d['text'].splitlines())} shown"
                    if d["lines"] > len(d["text"].splitlines())
                    else ""
                )
                inner.append(
                    f"<details class='diff'><summary>graph diff <span class='sub'>({d['lines']} "
                    f"lines{cut})</span></summary><pre class='diff'>{_diff_html(d['text'])}"
                    "</pre></details>"
                )
        parts.append(
            f"<details class='change' id='pass-{index0 + i + 1}'><summary>{index0 + i + 1}. "
            f"{escape(e['text'])} <span class='sub'>{escape(', '.join(e['modified_components']))}"
            f"</span></summary>{''.join(inner)}</details>"
        )
    return "".join(parts) or "<p class='sub'>no pass changed anything</p>"


def _kv_table(data: dict, cls: str = "") -> str:
    rows = "".join(
        f"<tr><th>{escape(str(k))}</th><td>"
        f"{escape(v if isinstance(v, str) else json.dumps(v))}</td></tr>"
        for k, v in data.items()
    )
    return f'<table class="{cls}">{rows}</table>'


def _manifest(title: str, m: dict | None, cls: str) -> str:
    if not m:
        return f"<h3>{title}</h3><p class='sub'>not recorded (compiled without --report)</p>"
    files = m.get("files", {})
    rows = "".join(
        f"<tr><td>{escape(name)}</td><td class='num' data-sort='{f.get('bytes', 0)}'>"
        f"{human_bytes(f.get('bytes', 0))}</td><td><code title='{escape(f.get('sha256', ''))}'>"
        f"{escape(f.get('sha256', '')[:16])}</code></td></tr>"
        for name, f in files.items()
    )
    files_html = (
        f'<table class="sortable files {cls}"><thead><tr><th>file</th><th>bytes</th>'
        f"<th>sha256</th></tr></thead><tbody>{rows}</tbody></table>"
        if files
        else "<p class='sub'>file hashes not known yet (the bundle was not saved)</p>"
    )
    head = {"family": m.get("family"), "format version": m.get("format_version")}
    return (
        f"<h3>{title}</h3>{_kv_table(head)}<h4>tool versions</h4>"
        f"{_kv_table(m.get('tools', {}), 'tools ' + cls)}<h4>files</h4>{files_html}"
    )


def _accuracy(manifest: dict, history: list[dict]) -> str:
    found = [("bundle", manifest["accuracy"])] if "accuracy" in manifest else []
    found += [(e["text"], e["accuracy"]) for e in history if "accuracy" in e]
    if not found:
        return "<p class='sub'>no accuracy check recorded in this bundle's history</p>"
    return "".join(
        f"<h3>{escape(where)}</h3>"
        + (_kv_table(acc, "accuracy") if isinstance(acc, dict) else f"<p>{escape(str(acc))}</p>")
        for where, acc in found
    )


def _cards(manifest: dict, history: list[dict]) -> str:
    size = sum(f.get("bytes", 0) for f in manifest.get("files", {}).values())
    peaks = [e["memory"]["peak_rss"] for e in history if "memory" in e]
    cards = [
        ("family", manifest.get("family", "?")),
        ("pass executions", str(len(history))),
        ("changed something", str(sum(1 for e in history if e.get("modified")))),
        ("seconds in passes", f"{sum(e.get('seconds', 0) for e in history):.2f}"),
        ("bundle size", human_bytes(size) if size else "not saved yet"),
    ]
    if peaks:
        cards.append(("highest peak RSS", human_bytes(max(peaks))))
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><b>{escape(v)}</b><span>{escape(k)}</span></div>' for k, v in cards
        )
        + "</div>"
    )


def render(manifest: dict[str, Any], title: str = "qgraph compile report") -> str:
    """The whole page for ``manifest`` (its ``pipeline`` history and file hashes)."""
    history = manifest.get("pipeline", [])
    body = [
        f"<h1>{escape(title)}</h1><div class='sub'>components: "
        f"{escape(', '.join(manifest.get('components', {})))} · qgraph {__version__}</div>",
        _cards(manifest, history),
    ]
    index0 = 0
    runs = _split_runs(history)
    for n, entries in enumerate(runs, 1):
        run = _Run(entries)
        heading = f"compile run {n}" if len(runs) > 1 else "pipeline"
        body += [
            f"<h2 id='run-{n}'>{heading}</h2>",
            _table(run, index0),
            "<h3>charts</h3>",
            _charts(run),
            "<h3>changed passes</h3>",
            _changes(run, index0),
            _manifest("input manifest", run.input_manifest, "input"),
        ]
        index0 += len(entries)
    if not runs:
        body.append("<p class='sub'>this bundle has no pipeline history</p>")
    body += [
        "<h2 id='accuracy'>accuracy check</h2>",
        _accuracy(manifest, history),
        "<h2 id='manifests'>output manifest</h2>",
        _manifest("output manifest", manifest, "output"),
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f"{svg.ARROW_DEFS}{''.join(body)}<script>{SCRIPT}</script></body></html>\n"
    )
